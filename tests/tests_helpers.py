"""Shared test markers."""

import os
from pathlib import Path

import pytest

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_data = pytest.mark.skipif(not FMNIST.is_dir() and not os.environ.get("NUQ_DATA_DIR"),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
