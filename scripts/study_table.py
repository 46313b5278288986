"""Print README's study table from the committed cells in results/study/ (each cell's
metrics.json): test top-1 per grid folder (a model, or a model's variant such as
``resnet20_long``, the longer schedule), method and bit width, mean +- std over the seeds
done, and the difference to the float model the cells start from (named in each cell's
config.yaml).

    python scripts/study_table.py [results/study]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from nuq.commands.compare import summarize
from nuq.models.pretrained import record

ORDER = ["lsq", "nulsq-a", "nulsq-wa", "n2uq", "apot", "nulsq-w", "lcq", "pact", "dorefa", "uniform", "pot", "lloyd",
         "lsq-kd", "nulsq-a-kd", "n2uq-kd"]


def cells(root: Path) -> dict[str, list[dict]]:
    """{model: [{method, bits, seed, top1, dir}]} of every finished cell under ``root``."""
    out: dict[str, list[dict]] = {}
    for m in sorted(root.glob("*/*/metrics.json")):
        saved = json.loads(m.read_text())
        method, wa, seed = m.parent.name.rsplit("_", 2)
        out.setdefault(m.parent.parent.name, []).append(
            {"method": method, "bits": int(wa[1:wa.index("a")]), "seed": int(seed[1:]),
             "top1": saved["final"]["test_top1"], "dir": m.parent})
    return out


def base_model(root: Path, grid: str) -> str:
    """The model name of a grid folder's cells (``resnet20_long`` -> ``resnet20``)."""
    config = next((root / grid).glob("*/config.yaml"))
    return yaml.safe_load(config.read_text())["model"]["name"]


def float_top1(root: Path, grid: str) -> float:
    """Test top-1 of the shipped float model a grid folder's cells start from."""
    return record(base_model(root, grid), "fashion_mnist")["test_top1"]


def table(root: Path) -> str:
    found = cells(root)
    models = sorted(found)
    stats = {m: summarize(found[m]) for m in models}
    bits = sorted({b for m in models for (_, b) in stats[m]})
    cols = [(m, b) for m in models for b in bits if any(bb == b for (_, bb) in stats[m])]
    floats = {m: float_top1(root, m) for m in models}
    head = "| method | " + " | ".join(f"{m} W{b}A{b}" for m, b in cols) + " |"
    lines = [head, "|---|" + "---:|" * len(cols),
             "| float (shipped) | " + " | ".join(f"{floats[m]:.2f}" for m, _ in cols) + " |"]
    methods = sorted({k for m in models for (k, _) in stats[m]}, key=lambda k: (ORDER + [k]).index(k))
    for k in methods:
        row = []
        for m, b in cols:
            if (k, b) not in stats[m]:
                row.append("–")
                continue
            mean, std, n = stats[m][(k, b)]
            spread = f" ± {std:.2f}" if n > 1 else ""
            row.append(f"{mean:.2f}{spread} ({mean - floats[m]:+.2f}, {n} seed{'s' if n > 1 else ''})")
        lines.append(f"| {k} | " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1] if len(sys.argv) > 1 else "results/study")))
