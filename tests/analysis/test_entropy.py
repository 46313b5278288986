"""Code entropy: exact values on known histograms, and per-layer entropies of a model."""

import math

import torch

import nuq
from nuq.analysis.entropy import code_entropy, layer_entropies


def test_code_entropy_known_values():
    assert code_entropy(torch.tensor([0, 1, 2, 3] * 5), 4) == 2.0
    assert code_entropy(torch.zeros(10, dtype=torch.long), 4) == 0.0
    p = torch.tensor([0.5, 0.25, 0.25])
    codes = torch.tensor([0, 0, 1, 2])
    assert math.isclose(code_entropy(codes, 3), float(-(p * p.log2()).sum()))


def test_layer_entropies_bounded_by_bits():
    model = nuq.create_model("mlp", in_channels=1, hidden=32)
    calib = [torch.randn(16, 1, 28, 28) for _ in range(2)]
    q = nuq.prepare(model, nuq.QATConfig(w_bits=2, a_bits=3, first_last="same"), calib=calib)
    rows = layer_entropies(q, calib)
    assert len(rows) == 3
    for r in rows:
        assert 0 < r["w_entropy"] <= r["w_bits"] + 1e-9
        assert 0 < r["a_entropy"] <= r["a_bits"] + 1e-9
