"""``nuq compare``: a grid of methods x bit widths x seeds from one float checkpoint.

The grid config (YAML)::

    out_dir: runs/compare_fmnist
    base: {...}            # a RunConfig dict shared by every run (model, data, optim, epochs)
    float: {epochs: 15}    # overrides for the float run (trained once, first)
    # or, instead of a float run: start every cell from trained weights
    # init_from: pretrained:fashion_mnist   (shipped weights; or a run directory)
    bits: [2, 3, 4]        # W/A bit widths (wN aN)
    seeds: [0, 1, 2]
    methods:               # name -> overrides of the QAT runs (qat.*, optim.*, ...)
      lsq:      {qat: {weight: lsq, act: lsq}}
      nulsq-a:  {qat: {weight: lsq, act: nulsq}}
      lsq-kd:   {qat: {weight: lsq, act: lsq}, distill: {teacher: float}}

``distill: {teacher: float}`` distils from the grid's own float run (or from ``init_from``).
Cells run bit width first, then seed, then method, so that an interrupted grid has every
method at the lowest bit width and first seed before any second seed. Every cell is
validated before any training starts (unknown method, impossible bit width). Finished
cells (a ``metrics.json`` in their run directory) are skipped and an interrupted cell
resumes from its checkpoint, so re-running the command continues the grid. Results go
to ``results.csv`` and ``results.md`` (mean +- std over seeds).
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config_utils import apply_overrides, from_dict, read_yaml
from ..runs.config import RunConfig, config_diff, config_from_dict, same_config

NAME = "compare"
HELP = "grid of methods x bits x seeds from one float run; results table"


@dataclass(frozen=True)
class GridConfig:
    out_dir: str = "runs/compare"
    base: dict[str, Any] = field(default_factory=dict)
    float: dict[str, Any] = field(default_factory=dict)
    bits: tuple[int, ...] = (2, 3, 4)
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    init_from: str | None = None

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods: the grid names no method")
        if not self.seeds:
            raise ValueError("seeds: the grid names no seed")
        if self.init_from is not None and self.float:
            raise ValueError("float: a grid with init_from trains no float run; drop one of the two")

    @property
    def start(self) -> str:
        """What every cell starts from (and distils from with ``teacher: float``)."""
        return self.init_from or str(Path(self.out_dir) / "float")


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge, b wins."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def float_config(grid: GridConfig) -> RunConfig:
    raw = merge(grid.base, {"name": "float", "out_dir": str(Path(grid.out_dir) / "float"), "qat": None})
    return config_from_dict(merge(raw, grid.float))


def cell_configs(grid: GridConfig) -> list[tuple[str, int, int, RunConfig]]:
    """(method, bits, seed, config) of every QAT cell, validated, in the order they run."""
    cells = []
    for bits in grid.bits:
        for seed in grid.seeds:
            for name, over in grid.methods.items():
                run = f"{name}_w{bits}a{bits}_s{seed}"
                raw = merge(grid.base, {"name": run, "out_dir": str(Path(grid.out_dir) / run), "seed": seed,
                                        "init_from": grid.start, "qat": {"w_bits": bits, "a_bits": bits}})
                raw = merge(raw, over)
                if (raw.get("distill") or {}).get("teacher") == "float":
                    raw["distill"] = {**raw["distill"], "teacher": grid.start}
                try:
                    cfg = config_from_dict(raw)
                except ValueError as e:
                    raise ValueError(f"grid cell {run}: {e}") from e
                cells.append((name, bits, seed, cfg))
    return cells


def _done(cfg: RunConfig) -> dict[str, Any] | None:
    """The final metrics of a finished cell, or None. A cell counts as finished only if the
    config its metrics.json records is this cell's config (execution settings aside)."""
    p = Path(cfg.out_dir) / "metrics.json"
    if not p.is_file():
        return None
    saved = json.loads(p.read_text())
    return saved["final"] if same_config(saved.get("config") or {}, cfg) else None


def _check_stale(cfgs: list[RunConfig]) -> None:
    """Stop before training if a cell's directory holds a finished run of another config
    (the grid changed since): reusing it would report the old numbers as the new cell's."""
    stale = []
    for cfg in cfgs:
        p = Path(cfg.out_dir) / "metrics.json"
        if p.is_file() and _done(cfg) is None:
            diff = config_diff(json.loads(p.read_text()).get("config") or {}, cfg)
            stale.append(f"{Path(cfg.out_dir).name} ({', '.join(diff[:3])})")
    if stale:
        raise ValueError(f"{len(stale)} grid cell(s) hold results of a different config: {'; '.join(stale[:5])}"
                         f"{' ...' if len(stale) > 5 else ''}; delete those run directories to retrain them, "
                         "or give the grid another out_dir")


def run_grid(grid: GridConfig) -> list[dict[str, Any]]:
    from ..train import train

    cells = cell_configs(grid)  # fail on a bad cell before training anything
    if grid.init_from is None:
        fcfg = float_config(grid)
        _check_stale([fcfg] + [c for *_, c in cells])
        ffinal, fseed = _done(fcfg) or train(fcfg), fcfg.seed
    else:
        _check_stale([c for *_, c in cells])
        ffinal, fseed = start_metrics(grid.init_from, cells[0][3]), None
    rows = [{"method": "float", "bits": 32, "seed": fseed, "top1": ffinal["test_top1"], "top5": ffinal["test_top5"]}]
    for name, bits, seed, cfg in cells:
        final = _done(cfg) or train(cfg)
        rows.append({"method": name, "bits": bits, "seed": seed, "top1": final["test_top1"],
                     "top5": final["test_top5"]})
        write_results(grid, rows)
    write_results(grid, rows)
    make_plots(grid, cells, rows)
    return rows


def start_metrics(init_from: str, cfg: RunConfig) -> dict[str, float]:
    """Test accuracy of the float model the cells start from: the recorded accuracy of
    shipped weights (measured on the full test set, checked by the test suite), or the final
    metrics of a run directory."""
    from ..models.pretrained import PREFIX, record

    if init_from.startswith(PREFIX):
        if cfg.data.test_subset is not None:
            raise ValueError(f"base.data.test_subset={cfg.data.test_subset}: the shipped weights' accuracy is "
                             "recorded on the full test set; drop test_subset to compare against it")
        rec = record(cfg.model.name, init_from[len(PREFIX):])
        return {"test_top1": rec["test_top1"], "test_top5": rec["test_top5"]}
    p = Path(init_from) / "metrics.json"
    if not p.is_file():
        raise ValueError(f"init_from={init_from}: no metrics.json there (a finished run directory is needed "
                         "for the float row)")
    return json.loads(p.read_text())["final"]


def make_plots(grid: GridConfig, cells: list[tuple[str, int, int, RunConfig]], rows: list[dict[str, Any]]) -> None:
    """accuracy_vs_bits.png, training_curves.png, entropy_{act,weight}.png and one
    quantizers_<method>.png (transfer functions, histograms, levels) in ``out_dir``."""
    from ..analysis import plots
    from ..analysis.entropy import layer_entropies
    from ..data import load_dataset, make_loader
    from ..runs import load_run

    out = Path(grid.out_dir)
    plots.accuracy_vs_bits(rows, out / "accuracy_vs_bits.png")
    low, seed = min(grid.bits), grid.seeds[0]
    shown = [(m, c) for m, b, s, c in cells if b == low and s == seed]
    curves = {} if grid.init_from else {"float": str(out / "float")}
    plots.training_curves({**curves, **{f"{m} W{low}A{low}": c.out_dir for m, c in shown}},
                          out / "training_curves.png")
    # cells kept as metrics alone (committed without their checkpoints) have no model to draw
    shown = [(m, c) for m, c in shown if (Path(c.out_dir) / "checkpoint.pt").is_file()]
    if not shown:
        return
    d = shown[0][1].data
    test = load_dataset(d.name, d.data_dir, train=False, image_size=d.image_size).subset(512, seed=0)
    batches = list(make_loader(test, 128, train=False))
    ent = {}
    for m, c in shown:
        model = load_run(c.out_dir).model
        plots.quantizer_panels(model, batches, out / f"quantizers_{m}.png")
        ent[m] = layer_entropies(model, batches)
    plots.entropy_by_layer(ent, out / "entropy_act.png", key="a_entropy")
    plots.entropy_by_layer(ent, out / "entropy_weight.png", key="w_entropy")
    (out / "entropy.json").write_text(json.dumps(ent, indent=1))


def summarize(rows: list[dict[str, Any]]) -> dict[tuple[str, int], tuple[float, float, int]]:
    groups: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["bits"]), []).append(r["top1"])
    return {k: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)) for k, v in groups.items()}


def markdown_table(rows: list[dict[str, Any]]) -> str:
    stats = summarize(rows)
    bits = sorted({b for (m, b) in stats if m != "float"})
    methods = list(dict.fromkeys(m for (m, _) in stats if m != "float"))
    best = {b: max((stats[(m, b)][0] for m in methods if (m, b) in stats), default=None) for b in bits}
    head = "| method | " + " | ".join(f"W{b}A{b}" for b in bits) + " |"
    lines = [head, "|---|" + "---:|" * len(bits)]
    if ("float", 32) in stats:
        mean, std, n = stats[("float", 32)]
        lines.append("| float (32/32) | " + " | ".join(f"{mean:.2f}" for _ in bits) + " |")
    for m in methods:
        cells = []
        for b in bits:
            if (m, b) not in stats:
                cells.append("–")
                continue
            mean, std, n = stats[(m, b)]
            s = f"{mean:.2f} ± {std:.2f}"
            cells.append(f"**{s}**" if mean == best[b] else s)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    n_seeds = max((n for (_, _, n) in stats.values()), default=0)
    lines.append(f"\nTest top-1 (%), mean ± std over {n_seeds} seed(s); best per column in bold.")
    return "\n".join(lines)


def write_results(grid: GridConfig, rows: list[dict[str, Any]]) -> None:
    out = Path(grid.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "bits", "seed", "top1", "top5"])
        w.writeheader()
        w.writerows(rows)
    (out / "results.md").write_text(markdown_table(rows) + "\n")


def load_grid(path: str | Path, overrides: list[str] | None = None, methods: list[str] | None = None) -> GridConfig:
    """The grid of a YAML file, with ``--set`` overrides, restricted to ``methods`` if given."""
    data = read_yaml(path, "grid config")
    grid = from_dict(GridConfig, apply_overrides(data, list(overrides or [])), "grid")
    if methods:
        unknown = [m for m in methods if m not in grid.methods]
        if unknown:
            raise ValueError(f"--methods {' '.join(unknown)}: not a method of the grid; "
                             f"allowed: {', '.join(grid.methods)}")
        grid = dataclasses.replace(grid, methods={m: grid.methods[m] for m in methods})
    return grid


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, help="grid YAML (see configs/compare/)")
    p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="override a grid key (repeatable)")
    p.add_argument("--methods", nargs="+", metavar="NAME", help="run only these methods of the grid")


def run(args: argparse.Namespace) -> int:
    rows = run_grid(load_grid(args.config, args.set, args.methods))
    print()
    print(markdown_table(rows))
    return 0
