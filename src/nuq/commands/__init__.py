"""One module per ``nuq`` subcommand. Each defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> exit code``; :mod:`nuq.cli` only parses.

Adding a subcommand is one module here plus its name in ``COMMANDS``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: module names, in the order ``nuq --help`` lists them
COMMANDS = ("train", "evaluate", "analyze", "demo", "compare", "export", "listing")


def command_modules() -> list[ModuleType]:
    return [importlib.import_module(f"{__name__}.{m}") for m in COMMANDS]
