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
    assert "| float (shipped) | float |" in out and "W2A2 lsq/lsq" in out
    import yaml
    for run in ("lsq_w2a2",):  # --set reaches every run of the demo
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
    assert int(m[1].replace(",", "")) == save_packed(model.eval(), tmp_path / "x.nuq.safetensors")["bytes"]
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


@pytest.mark.parametrize("args,match", [
    (["train", "-c", "{cfg_bad}"], "is not valid YAML"),
    (["train", "-c", "{cfg}", "--set", "optim=3"], "optim=3 .*allowed: a mapping of the OptimConfig keys"),
    (["train", "-c", "{cfg}", "--set", "optim.momentum=abc"], r"optim.momentum='abc' \(str\); allowed: a number"),
    (["train", "-c", "{cfg}", "--set", "seed=abc"], r"seed='abc' \(str\); allowed: an int"),
    (["train", "-c", "{cfg}", "--set", "qat.skip=layers.0*"], r"qat.skip='layers.0\*' \(str\); allowed: a list"),
    (["train", "-c", "{cfg}", "--set", "optim.lr=["], "the value is not valid YAML"),
    (["train", "-c", "{cfg}", "--out-dir", "{file}"], "is an existing file"),
    (["compare", "-c", "{cfg_bad}"], "is not valid YAML"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, args, match):
    import re

    (tmp_path / "bad.yaml").write_text("optim: {lr: 0.1\n")
    (tmp_path / "ok.yaml").write_text("model: {name: mlp}\nepochs: 1\nqat: {}\n")
    (tmp_path / "file").write_text("")
    args = [a.format(cfg_bad=tmp_path / "bad.yaml", cfg=tmp_path / "ok.yaml", file=tmp_path / "file") for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(match, err), err


def test_yaml_float_without_a_dot_is_a_number(tmp_path):
    from nuq.runs.config import load_config

    (tmp_path / "c.yaml").write_text("optim: {weight_decay: 5e-4, lr: 1e-1}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.optim.weight_decay == 5e-4 and cfg.optim.lr == 0.1


@needs_data
def test_resume_of_another_config_names_the_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: mlp, kwargs: {hidden: 16}}\nepochs: 1\nprogress: false\n"
                   "data: {train_subset: 500, test_subset: 200}\n")
    assert main(["train", "-c", str(cfg), "--out-dir", str(tmp_path / "r")]) == 0
    assert main(["train", "-c", str(cfg), "--out-dir", str(tmp_path / "r"), "--set", "optim.lr=0.05"]) == 2
    assert "differs in: optim.lr=0.1 -> 0.05" in capsys.readouterr().err


def test_train_needs_a_config(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train"])
    assert e.value.code == 2 and "--config" in capsys.readouterr().err


@needs_data
def test_diverged_run_is_one_line_naming_the_last_good_checkpoint(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: mlp, kwargs: {hidden: 16}}\nepochs: 1\nprogress: false\n"
                   "data: {train_subset: 1000, test_subset: 200}\noptim: {lr: 1.0e+8}\n"
                   "train: {log_every: 2}\nckpt_every_steps: 2\n")
    assert main(["train", "-c", str(cfg), "--out-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NaN or Inf by epoch 1" in err and "the last good state is" in err
    from nuq.runs import load_checkpoint, load_run
    from nuq.train.loop import nonfinite_state
    assert load_checkpoint(tmp_path / "r")["step"] >= 2 and not nonfinite_state(load_run(tmp_path / "r").model)
