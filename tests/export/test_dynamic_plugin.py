"""Adding a quantizer with a dynamic range is one file: this test file defines one (step =
2 mean|x| / sqrt(Qp) of the current tensor, re-measured on every call) and it then
prepares, trains, packs, exports to ONNX and runs on integers with no other change."""

import pytest
import torch
from torch import Tensor, nn

import nuq
from nuq.export import load_packed, save_packed, to_onnx
from nuq.quantizers import Quantizer, register_quantizer
from nuq.quantizers.base import _REGISTRY, STEP_FLOOR


def _step(x: Tensor, qp: int) -> Tensor:
    return (2 * x.abs().mean() / qp ** 0.5).clamp_min(STEP_FLOOR)


class MeanCodes(nn.Module):
    def __init__(self, qn: int, qp: int) -> None:
        super().__init__()
        self.qn, self.qp = qn, qp

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        step = _step(x, self.qp)
        return torch.round(torch.clamp(x / step, -self.qn, self.qp)), step


class _STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k, step):
        return k * step

    @staticmethod
    def backward(ctx, g):
        return g, None, None


@pytest.fixture(scope="module")
def dynmean():
    @register_quantizer("dynmean_test")
    class DynMean(Quantizer):
        uniform_output = True

        def __init__(self, bits=4, signed=False, **kwargs):
            super().__init__(bits=bits, signed=signed, **kwargs)
            self.register_buffer("last_step", torch.ones(()))
            self.mark_initialized()

        @property
        def dynamic(self):
            return True

        def dynamic_form(self):
            return MeanCodes(self.qn, self.qp)

        def quantize(self, x):
            k, step = self.dynamic_form()(x.detach())
            self.last_step.copy_(step)
            return _STE.apply(x, k, step)

        def levels(self):
            return self.last_step * torch.arange(-self.qn, self.qp + 1, dtype=self.last_step.dtype)

        def _initialize(self, x, method):
            pass

    yield "dynmean_test"
    _REGISTRY.pop("dynmean_test")


def test_dynamic_quantizer_from_one_file_trains_packs_and_exports(dynmean, tmp_path):
    torch.manual_seed(0)
    model = nuq.create_model("resnet20", num_classes=10, in_channels=1, width=4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 16, 16, generator=g)
    # the first layer (signed input) takes the new dynamic quantizer; the rest are LSQ
    cfg = nuq.QATConfig(weight="lsq", act="lsq", w_bits=4, a_bits=4, first_last="8bit",
                        first_last_method=dynmean)
    q = nuq.prepare(model, cfg, calib=[x])
    opt = torch.optim.SGD(q.parameters(), lr=0.01)
    for _ in range(2):
        loss = nn.functional.cross_entropy(q(x), torch.arange(8) % 10)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    q.eval()
    first = q.get_submodule("conv1")
    assert first.act_quantizer.method == dynmean and first.act_quantizer.dynamic
    with torch.no_grad():
        ref = q(x)
        step = first.act_quantizer.last_step.clone()
        q(x * 3)  # a fresh batch gets its own step: the quantizer really is dynamic
        torch.testing.assert_close(first.act_quantizer.last_step, step * 3)
        q(x)
        save_packed(q, tmp_path / "m.nuq.safetensors", meta={"model": {"name": "resnet20", "kwargs": {"width": 4}},
                                                       "num_classes": 10, "in_channels": 1})
        assert torch.equal(load_packed(tmp_path / "m.nuq.safetensors")(x), ref)
    info = to_onnx(q, x, tmp_path / "m.onnx")
    assert info["layers"]["conv1"]["act"] in ("dynamic", "integer-dynamic")
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (x, torch.randn(5, 1, 16, 16, generator=g) * 4):
        got = torch.from_numpy(sess.run(None, {"input": batch.numpy()})[0])
        with torch.no_grad():
            torch.testing.assert_close(got, q(batch), atol=1e-5, rtol=1e-5)
