"""The command line: train/eval round trip, demo smoke run, clear errors."""

import pytest
from tests_helpers import needs_data

from nuq.cli import main


@needs_data
def test_train_then_eval(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: mlp, kwargs: {hidden: 32}}\nepochs: 1\nprogress: false\n"
                   "data: {train_subset: 1000, test_subset: 500}\n")
    assert main(["train", "-c", str(cfg), "--out-dir", str(tmp_path / "r"), "--set", "optim.lr=0.05"]) == 0
    out = capsys.readouterr().out
    assert "test top-1" in out
    assert main(["eval", str(tmp_path / "r")]) == 0
    top1_train = float(out.split("test top-1 ")[1].split("%")[0])
    top1_eval = float(capsys.readouterr().out.split("test top-1 ")[1].split("%")[0])
    assert top1_eval == pytest.approx(top1_train, abs=1e-6)


@needs_data
def test_demo_quick_prints_table(tmp_path, capsys):
    assert main(["demo", "--quick", "--out-dir", str(tmp_path), "--methods", "lsq", "--set", "train.log_every=3"]) == 0
    out = capsys.readouterr().out
    assert "| float | float |" in out and "W2A2 lsq/lsq" in out
    import yaml
    for run in ("float", "lsq_w2a2"):  # --set reaches every run of the demo
        assert yaml.safe_load((tmp_path / run / "config.yaml").read_text())["train"]["log_every"] == 3
    assert main(["analyze", str(tmp_path / "lsq_w2a2")]) == 0
    out = capsys.readouterr().out
    assert "smaller" in out and "layers.0.conv1" in out
    import json
    import re

    from nuq.export import save_packed
    from nuq.runs.checkpoint import load_checkpoint
    from nuq.runs.load import rebuild

    # the reported packed size is the size of the file nuq export writes
    m = re.search(r"packed file ([\d,]+) bytes vs float32 ([\d,]+) bytes", out)
    ck = load_checkpoint(tmp_path / "lsq_w2a2")
    model, _ = rebuild(ck, ck["num_classes"], ck["in_channels"])
    assert int(m[1].replace(",", "")) == save_packed(model.eval(), tmp_path / "x.nuqpack")["bytes"]
    saved = json.loads((tmp_path / "lsq_w2a2" / "analysis" / "analysis.json").read_text())
    assert saved["packed_bytes"] == int(m[1].replace(",", "")) < saved["float32_bytes"]
    assert (tmp_path / "lsq_w2a2" / "analysis" / "quantizers.png").is_file()


def test_unknown_key_is_reported(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim: {lr: 0.1, momentun: 0.9}\n")
    assert main(["train", "-c", str(cfg)]) == 2
    assert "momentun" in capsys.readouterr().err


def test_eval_missing_run_is_reported(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "none")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
