"""Draw README's study plots from the committed cells in results/study/ (each cell's
metrics.json), so that they show every seed done, not only the cells of the last
``nuq compare`` call (which draws its own plots in the grid folder):

* ``<grid>_accuracy_vs_bits.png``: test top-1 per method and bit width, mean over seeds with
  their std as error bars, the shipped float model as a dashed line (grids with more than one
  bit width);
* ``<grid>_training_curves[_wXaX].png``: test top-1 and train loss per epoch of seed 0 of each
  method at each bit width (without the suffix at the lowest one).

    python scripts/study_plots.py [results/study] [docs/results/study]
"""

from __future__ import annotations

import sys
from pathlib import Path

from study_table import ORDER, cells, float_top1

from nuq.analysis import plots


def draw(root: Path, out: Path) -> list[Path]:
    """Every plot of every grid folder under ``root``, written to ``out``; the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for grid, found in sorted(cells(root).items()):
        found.sort(key=lambda r: ((ORDER + [r["method"]]).index(r["method"]), r["bits"], r["seed"]))
        bits = sorted({r["bits"] for r in found})
        if len(bits) > 1:
            rows = [{"method": "float", "bits": 32, "top1": float_top1(root, grid)}, *found]
            written.append(plots.accuracy_vs_bits(rows, out / f"{grid}_accuracy_vs_bits.png"))
        for b in bits:
            runs = {f"{r['method']} W{b}A{b}": r["dir"] for r in found if r["bits"] == b and r["seed"] == 0}
            suffix = "" if b == bits[0] else f"_w{b}a{b}"
            written.append(plots.training_curves(runs, out / f"{grid}_training_curves{suffix}.png"))
    return written


if __name__ == "__main__":
    args = sys.argv[1:]
    for p in draw(Path(args[0] if args else "results/study"), Path(args[1] if len(args) > 1 else "docs/results/study")):
        print(p)
