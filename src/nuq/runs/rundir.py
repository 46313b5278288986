"""The run directory of one training run: refused when it is a file, locked while a run
writes to it (two trainers on one directory would interleave their logs and checkpoints),
and removed again when a run fails before writing anything into it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

LOCK = ".lock"


@contextlib.contextmanager
def run_directory(path: str | os.PathLike, lock: bool = True) -> Iterator[Path]:
    """Create (if needed) and lock ``path`` for the duration of the block.

    ValueError if ``path`` is an existing file or another process holds the lock. A
    directory this call created is removed if the block fails while it is still empty."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={str(out)!r} is an existing file; give a directory for the run")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(e.errno, f"cannot create the run directory {out}: {e.strerror}") from e
    fd = None
    try:
        if lock:
            fd = os.open(out / LOCK, os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ValueError(f"another process is training in {out} (it holds {out / LOCK}); wait for it to "
                                 "finish or use another out_dir") from None
        yield out
    except BaseException:
        if created and all(p.name == LOCK for p in out.iterdir()):
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock; the file stays (removing it would race a waiting run)
