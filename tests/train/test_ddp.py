"""DDP through torchrun on 2 CPU processes (gloo): ranks stay identical, only rank 0
writes, and a killed DDP run resumes to the uninterrupted result."""

import os
import subprocess
import sys

import pytest
import torch
import yaml
from tests_helpers import needs_data, sigkill_after_first_checkpoint

from nuq.runs.checkpoint import load_checkpoint


def torchrun(cfg_file, wait=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "nuq", "train", "--config", str(cfg_file)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def write_cfg(path, out):
    # a checkpoint every 4 of the 24 steps: the kill below lands well before the run ends
    # (with only the end-of-epoch checkpoint, an idle machine finished epoch 2 before the kill)
    raw = {"name": "ddp", "out_dir": str(out), "epochs": 2, "progress": False, "ckpt_every_steps": 4,
           "model": {"name": "mlp", "kwargs": {"hidden": 32}},
           "data": {"train_subset": 1200, "test_subset": 300, "batch_size": 50},
           "optim": {"lr": 0.05}, "qat": {"w_bits": 2, "a_bits": 2}}
    path.write_text(yaml.safe_dump(raw))
    return path


@needs_data
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_ddp_ranks_identical_and_resume(tmp_path):
    a = write_cfg(tmp_path / "a.yaml", tmp_path / "a")
    r = torchrun(a)
    assert r.returncode == 0, r.stderr[-3000:]
    hist = yaml.safe_load((tmp_path / "a" / "metrics.json").read_text())["history"]
    for row in hist:
        assert row["world_size"] == 2
        assert row["rank_checksums"][0] == row["rank_checksums"][1]
    assert hist[-1]["test_top1"] > 30  # chance is 10%

    b = write_cfg(tmp_path / "b.yaml", tmp_path / "b")
    sigkill_after_first_checkpoint(torchrun(b, wait=False), tmp_path / "b" / "checkpoint.pt", group=True)
    assert load_checkpoint(tmp_path / "b")["step"] < load_checkpoint(tmp_path / "a")["step"]
    r = torchrun(b)
    assert r.returncode == 0, r.stderr[-3000:]
    ref, got = load_checkpoint(tmp_path / "a")["model"], load_checkpoint(tmp_path / "b")["model"]
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=0, rtol=0, msg=k)
