"""Every shipped YAML recipe loads and validates (run configs and comparison grids)."""

from pathlib import Path

import pytest

from nuq.commands.compare import cell_configs, float_config, load_grid
from nuq.runs.config import load_config

ROOT = Path(__file__).parent.parent / "configs"
RUNS = sorted(ROOT.glob("*.yaml"))
GRIDS = [p for d in ("compare", "recipes", "study") for p in sorted((ROOT / d).glob("*.yaml"))]


@pytest.mark.parametrize("path", RUNS, ids=lambda p: p.name)
def test_run_config_loads(path):
    cfg = load_config(path)
    assert cfg.name and cfg.epochs >= 1


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.name)
def test_grid_config_validates_every_cell(path):
    grid = load_grid(path)
    assert float_config(grid).qat is None
    assert len(cell_configs(grid)) == len(grid.methods) * len(grid.bits) * len(grid.seeds)
