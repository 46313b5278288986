"""Plots are written as non-empty PNG files."""

import json

import torch

import nuq
from nuq.analysis import plots
from nuq.analysis.entropy import layer_entropies

PNG = b"\x89PNG"


def test_all_plots_write_png(tmp_path):
    rows = [{"method": "float", "bits": 32, "top1": 90.0}] + [
        {"method": m, "bits": b, "top1": 80 + b + s} for m in ("a", "b") for b in (2, 3) for s in (0, 1)]
    assert plots.accuracy_vs_bits(rows, tmp_path / "acc.png").read_bytes()[:4] == PNG
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"history": [
        {"epoch": 1, "test_top1": 50.0, "train_loss": 1.0}, {"epoch": 2, "test_top1": 60.0, "train_loss": 0.8}]}))
    assert plots.training_curves({"r": run}, tmp_path / "curves.png").read_bytes()[:4] == PNG
    model = nuq.create_model("mlp", in_channels=1, hidden=16)
    calib = [torch.randn(8, 1, 28, 28)]
    q = nuq.prepare(model, nuq.QATConfig(w_bits=2, a_bits=2), calib=calib)
    assert plots.quantizer_panels(q, calib, tmp_path / "q.png").read_bytes()[:4] == PNG
    ent = {"lsq": layer_entropies(q, calib)}
    assert plots.entropy_by_layer(ent, tmp_path / "e.png").read_bytes()[:4] == PNG


def test_histogram_sample_covers_the_whole_tensor():
    from nuq.analysis.plots import uniform_sample

    x = torch.zeros(4, 64, 28, 28)
    x[:, 32:] = 1.0  # half the channels are non-zero; the first 20000 elements are all zero
    s = uniform_sample(x)
    assert s.numel() == 20000 and 0.45 < float(s.mean()) < 0.55
    assert torch.equal(uniform_sample(x), s)  # fixed generator
