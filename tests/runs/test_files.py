"""Atomic writes and checkpoint reading: permissions, clean failure, clear errors."""

import os
import subprocess
import sys

import pytest
import torch

from nuq.runs import atomic_write_bytes, load_checkpoint, load_run, write_json


def test_written_file_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json({"a": 1}, tmp_path / "m.json")
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")

    def boom(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=r"cannot write .*f\.bin.*No space left.*unchanged"):
        atomic_write_bytes(p, boom)
    assert p.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_is_a_clear_error(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(OSError, match="cannot write"):
            write_json({}, d / "x.json")
    finally:
        d.chmod(0o700)


def test_checkpoint_of_wrong_structure_is_named(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"not a nuq run checkpoint .*lacks config, model, num_classes"):
        load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="not a nuq run checkpoint"):
        load_run(tmp_path / "checkpoint.pt")


def test_export_loads_no_training_code():
    code = ("import sys, nuq.export, nuq.export.formats, nuq.runs; "
            "print(sorted(m for m in sys.modules if m.startswith('nuq.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
