"""Write the study table (scripts/study_table.py) between README's study markers."""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from study_table import table  # noqa: E402

readme = Path(__file__).parents[1] / "README.md"
text = readme.read_text()
block = "<!-- study table -->\n" + table(readme.parent / "results" / "study") + "\n<!-- /study table -->"
readme.write_text(re.sub(r"<!-- study table -->.*?<!-- /study table -->", lambda _: block, text, flags=re.S))
