"""Every shipped YAML recipe loads and validates."""

from pathlib import Path

import pytest

from nuq.train.config import load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path):
    cfg = load_config(path)
    assert cfg.name and cfg.epochs >= 1
