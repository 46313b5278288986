"""``nuq list``: the registered quantizers, models, datasets and export formats."""

from __future__ import annotations

import argparse

NAME = "list"
HELP = "registered quantizers, models, datasets and export formats"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(_args: argparse.Namespace) -> int:
    from .. import available_models, available_quantizers
    from ..data import available_datasets
    from ..export.formats import available_formats

    print("quantizers:", ", ".join(available_quantizers()))
    print("models:    ", ", ".join(available_models()))
    print("datasets:  ", ", ".join(available_datasets()))
    print("formats:   ", ", ".join(available_formats()))
    return 0
