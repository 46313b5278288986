"""TensorBoard scalars next to ``log.csv``, when the ``tensorboard`` package is installed.

Every numeric column of an epoch row (losses, top-1/top-5, lr, epoch time) becomes a
scalar of the same name at x = epoch, under ``<out_dir>/tensorboard``. Without the
package this is a no-op: CSV/JSON logs are always written, TensorBoard is an extra
(``pip install nuq[tensorboard]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class TensorBoardLog:
    def __init__(self, out_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed
            self.writer = None
            return
        self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def epoch(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
