"""README's study table and plots (scripts/study_table.py, scripts/study_plots.py) from a tree
of committed cells: means and stds over the seeds done, the float model each grid starts
from, and one plot per grid and bit width."""

import json
import statistics
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from study_plots import draw  # noqa: E402
from study_table import table  # noqa: E402

from nuq.models.pretrained import record  # noqa: E402

CELLS = {  # grid folder -> {cell: final test top-1}
    "resnet20": {"lsq_w2a2_s0": 93.0, "lsq_w2a2_s1": 93.2, "nulsq-a_w2a2_s0": 92.9, "lsq_w3a3_s0": 93.9},
    "resnet20_long": {"lsq_w2a2_s0": 93.5},
}


def _tree(root: Path) -> Path:
    for grid, cells in CELLS.items():
        for cell, top1 in cells.items():
            d = root / grid / cell
            d.mkdir(parents=True)
            hist = [{"epoch": e, "test_top1": top1 - 1.0 / e, "train_loss": 1.0 / e} for e in (1, 2)]
            (d / "metrics.json").write_text(json.dumps({"final": {"test_top1": top1}, "history": hist}))
            (d / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "resnet20"}}))
    return root


def test_table_averages_the_seeds_done_against_the_shipped_float_model(tmp_path):
    lines = table(_tree(tmp_path)).splitlines()
    assert lines[0] == "| method | resnet20 W2A2 | resnet20 W3A3 | resnet20_long W2A2 |"
    fl = record("resnet20", "fashion_mnist")["test_top1"]
    assert lines[2] == f"| float (shipped) | {fl:.2f} | {fl:.2f} | {fl:.2f} |"
    mean, std = statistics.mean([93.0, 93.2]), statistics.stdev([93.0, 93.2])
    row = next(line for line in lines if line.startswith("| lsq |")).split(" | ")
    assert row[1] == f"{mean:.2f} ± {std:.2f} ({mean - fl:+.2f}, 2 seeds)"
    assert row[2] == f"93.90 ({93.9 - fl:+.2f}, 1 seed)"
    nulsq = next(line for line in lines if line.startswith("| nulsq-a |")).split(" | ")
    assert nulsq[2] == "–" and nulsq[3] == "– |"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_plots_one_per_grid_and_bit_width(tmp_path):
    written = draw(_tree(tmp_path / "study"), tmp_path / "docs")
    assert sorted(p.name for p in written) == [
        "resnet20_accuracy_vs_bits.png",  # two bit widths: one accuracy-vs-bits plot
        "resnet20_long_training_curves.png",  # one bit width: curves only
        "resnet20_training_curves.png",
        "resnet20_training_curves_w3a3.png",
    ]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)
