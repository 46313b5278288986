"""End-to-end training on real Fashion-MNIST: accuracy above chance, resume after a
kill reproduces the uninterrupted run, NaN stops the run, bad configs fail early."""

import csv
import subprocess
import sys

import pytest
import torch
from tests_helpers import needs_data, sigkill_after_first_checkpoint

from nuq.runs.checkpoint import load_checkpoint
from nuq.runs.config import config_from_dict, load_config
from nuq.train import TrainingDiverged, train


def mlp_cfg(out, **kw):
    base = {"name": "t", "out_dir": str(out), "epochs": 2, "progress": False,
            "model": {"name": "mlp", "kwargs": {"hidden": 64}},
            "data": {"train_subset": 2000, "test_subset": 1000, "batch_size": 100},
            "optim": {"lr": 0.05, "warmup_epochs": 0.5}}
    for k, v in kw.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return base


@needs_data
def test_float_then_qat_above_chance(tmp_path):
    f = train(config_from_dict(mlp_cfg(tmp_path / "float")))
    assert f["test_top1"] > 60  # chance is 10%
    q = train(config_from_dict(mlp_cfg(tmp_path / "q", init_from=str(tmp_path / "float"),
                                       qat={"w_bits": 2, "a_bits": 2}, optim={"lr": 0.01})))
    assert q["test_top1"] > 50
    run = tmp_path / "q"
    assert (run / "metrics.json").is_file() and (run / "config.yaml").is_file() and (run / "log.csv").is_file()
    ck = load_checkpoint(run)
    assert ck["config"]["qat"]["w_bits"] == 2 and "rng_cpu" in ck
    check_tensorboard_matches_csv(run)


def check_tensorboard_matches_csv(run):
    """With tensorboard installed, every numeric log.csv column is a scalar at x = epoch."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        assert not (run / "tensorboard").exists()
        return
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    with (run / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    for key in ("train_loss", "test_top1", "lr"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [int(r["epoch"]) for r in rows]
        assert [e.value for e in events] == pytest.approx([float(r[key]) for r in rows], rel=1e-6)


@needs_data
def test_resume_after_kill_matches_uninterrupted(tmp_path):
    raw = mlp_cfg(tmp_path / "a", epochs=3, qat={"w_bits": 2, "a_bits": 2, "first_last": "same"},
                  data={"train_subset": 3000})
    full = train(config_from_dict(raw))
    ref = load_checkpoint(tmp_path / "a")["model"]

    # the same run in a subprocess, SIGKILLed once its first checkpoint is on disk
    cfg_file = tmp_path / "b.yaml"
    import yaml
    cfg_file.write_text(yaml.safe_dump({**raw, "out_dir": str(tmp_path / "b"), "data": {**raw["data"]}}))
    proc = subprocess.Popen([sys.executable, "-m", "nuq", "train", "--config", str(cfg_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sigkill_after_first_checkpoint(proc, tmp_path / "b" / "checkpoint.pt")
    killed_at = load_checkpoint(tmp_path / "b")["step"]
    resumed = train(load_config(cfg_file))
    assert killed_at < resumed["step"]  # it was killed mid-run, and resumed from there
    got = load_checkpoint(tmp_path / "b")["model"]
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=0, rtol=0, msg=k)
    assert resumed["test_top1"] == full["test_top1"]


@needs_data
def test_nan_loss_stops_and_says_no_checkpoint_exists(tmp_path):
    raw = mlp_cfg(tmp_path / "n", epochs=2, optim={"lr": 1e30, "weight_decay": 0.0, "warmup_epochs": 0.0})
    with pytest.raises(TrainingDiverged, match="no checkpoint was written before"):
        train(config_from_dict(raw))
    assert not (tmp_path / "n" / "checkpoint.pt").exists()


@needs_data
def test_init_from_another_architecture_is_clear_error(tmp_path):
    train(config_from_dict(mlp_cfg(tmp_path / "f", epochs=1)))
    raw = mlp_cfg(tmp_path / "g", epochs=1, init_from=str(tmp_path / "f"),
                  model={"name": "resnet20", "kwargs": {"width": 4}})
    with pytest.raises(ValueError, match="does not match the model"):
        train(config_from_dict(raw))


def test_unknown_config_keys_are_errors():
    with pytest.raises(ValueError, match="optim.*lrr|lrr"):
        config_from_dict({"optim": {"lrr": 0.1}})
    with pytest.raises(ValueError, match="allowed"):
        config_from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="unknown quantizer method"):
        config_from_dict({"qat": {"weight": "nope"}})
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["optim.lr"])


def test_set_overrides_parse_yaml_values():
    cfg = load_config(None, ["optim.lr=0.5", "qat.w_bits=3", "data.train_subset=null"])
    assert cfg.optim.lr == 0.5 and cfg.qat.w_bits == 3 and cfg.data.train_subset is None


@needs_data
def test_qat_starts_from_a_plain_state_dict(tmp_path):
    from nuq import create_model

    torch.manual_seed(1)
    float_model = create_model("mlp", num_classes=10, in_channels=1, hidden=32)
    torch.save(float_model.state_dict(), tmp_path / "plain.pt")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in float_model.state_dict().items()}},
               tmp_path / "script.pt")
    for src in ("plain.pt", "script.pt"):
        raw = mlp_cfg(tmp_path / f"q_{src}", epochs=1, init_from=str(tmp_path / src), qat={"w_bits": 4, "a_bits": 4})
        raw["model"]["kwargs"] = {"hidden": 32}
        raw["optim"] = {"lr": 1e-9, "q_lr_mult": 1e-9}  # keep the weights where they started
        train(config_from_dict(raw))
        got = load_checkpoint(tmp_path / f"q_{src}")["model"]
        torch.testing.assert_close(got["1.weight"], float_model.state_dict()["1.weight"], rtol=0, atol=1e-6)
    torch.save(float_model, tmp_path / "module.pt")
    raw = mlp_cfg(tmp_path / "q_mod", epochs=1, init_from=str(tmp_path / "module.pt"))
    with pytest.raises(ValueError, match=r"pickled Python objects .*model.state_dict\(\)"):
        train(config_from_dict(raw))
