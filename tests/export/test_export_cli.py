"""`nuq export RUN_DIR`: a trained QAT run to a packed file (exact) and to ONNX."""

import re

import pytest
import torch
from tests_helpers import needs_data

from nuq.cli import main
from nuq.data import load_dataset
from nuq.export import load_packed, read_header
from nuq.runs.checkpoint import load_checkpoint
from nuq.runs.load import rebuild


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = out / "c.yaml"
    cfg.write_text("model: {name: mlp, kwargs: {hidden: 32}}\nepochs: 1\nprogress: false\ncalib_batches: 1\n"
                   "data: {train_subset: 256, test_subset: 128, batch_size: 64}\n"
                   "qat: {weight: lsq, act: lsq, w_bits: 2, a_bits: 2, w_init: lsq, a_init: lsq}\n")
    assert main(["train", "-c", str(cfg), "--out-dir", str(out / "r")]) == 0
    return out / "r"


@needs_data
def test_export_packed_is_exact_and_reports_sizes(qat_run, capsys):
    capsys.readouterr()
    assert main(["export", str(qat_run), "--format", "packed"]) == 0
    out = capsys.readouterr().out
    assert "bytes vs float32" in out and "x smaller" in out
    path = qat_run / "model.nuq.safetensors"
    header = read_header(path)
    assert header["meta"]["config"]["qat"]["w_bits"] == 2 and header["meta"]["in_channels"] == 1
    ckpt = load_checkpoint(qat_run)
    model, _ = rebuild(ckpt, ckpt["num_classes"], ckpt["in_channels"])
    test = load_dataset("fashion_mnist", train=False)
    x = test.normalize(test.images[:64])
    with torch.no_grad():
        torch.testing.assert_close(load_packed(path)(x), model.eval()(x), atol=0, rtol=0)
    m = re.search(r": packed (\d+) bytes vs float32 (\d+) bytes \(([\d.]+)x smaller\)", out)
    packed, float32 = int(m[1]), int(m[2])
    assert packed == path.stat().st_size and float(m[3]) == pytest.approx(float32 / packed, abs=0.01)


@needs_data
def test_export_onnx(qat_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    capsys.readouterr()
    assert main(["export", str(qat_run), "-f", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "m.onnx").is_file() and "bytes vs float32" in out
    diff = float(out.split("max abs difference ")[1].split()[0])
    assert diff <= 1e-4


@needs_data
def test_export_onnx_fast_writes_a_verified_graph(qat_run, tmp_path, capsys):
    """-f onnx-fast (exact=False; folding itself: tests/export/test_onnx_fold.py) writes a
    graph ONNX Runtime loads and the CLI reports its measured difference to PyTorch (an
    MLP has no convolution to fold: within 1e-4 as the exact format)."""
    pytest.importorskip("onnxruntime")
    capsys.readouterr()
    assert main(["export", str(qat_run), "-f", "onnx-fast", "--out", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "m.onnx").is_file()
    assert float(out.split("max abs difference ")[1].split()[0]) <= 1e-4


@needs_data
def test_export_errors(qat_run, tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    float_cfg = tmp_path / "f.yaml"
    float_cfg.write_text("model: {name: mlp, kwargs: {hidden: 8}}\nepochs: 1\nprogress: false\n"
                         "data: {train_subset: 64, test_subset: 64, batch_size: 64}\n")
    assert main(["train", "-c", str(float_cfg), "--out-dir", str(tmp_path / "f")]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "f")]) == 2
    assert "float run" in capsys.readouterr().err
    assert not (tmp_path / "f" / "model.nuq.safetensors").exists()
