"""Run directories: a file is refused, a second trainer is refused, a failed start leaves
nothing behind."""

import multiprocessing as mp

import pytest

from nuq.runs.rundir import run_directory


def _hold(path, started, release):
    with run_directory(path):
        started.set()
        release.wait(30)


def test_second_process_on_the_same_directory_is_refused(tmp_path):
    ctx = mp.get_context("spawn")
    started, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(str(tmp_path / "r"), started, release))
    p.start()
    try:
        assert started.wait(60)
        with pytest.raises(ValueError, match="another process is training in .*r"):
            with run_directory(tmp_path / "r"):
                pass
    finally:
        release.set()
        p.join(30)
    with run_directory(tmp_path / "r"):  # free again once the first one ended
        pass


def test_existing_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is an existing file"):
        with run_directory(tmp_path / "f"):
            pass


def test_failed_start_removes_the_directory_it_created(tmp_path):
    with pytest.raises(RuntimeError):
        with run_directory(tmp_path / "new"):
            raise RuntimeError("model build failed")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "log.csv").write_text("epoch\n")
    with pytest.raises(RuntimeError):
        with run_directory(tmp_path / "kept"):
            raise RuntimeError("later failure")
    assert (tmp_path / "kept" / "log.csv").is_file()
