"""Properties every registered quantizer must have, checked over the whole registry."""

import pytest
import torch

import nuq

METHODS = nuq.available_quantizers()
SAMPLE = torch.randn(4, 8, 6, 6) * 1.5


def make(name, bits, signed, **kw):
    q = nuq.make_quantizer(name, bits=bits, signed=signed, **kw)
    q.initialize(SAMPLE if signed else SAMPLE.relu(), method=q.init_methods[0])
    return q


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [False, True])
def test_levels_encode_decode_idempotent(name, bits, signed):
    cls = nuq.quantizers.quantizer_class(name)
    if not cls.min_bits <= bits <= cls.max_bits:
        pytest.skip("bit width outside the method's range")
    q = make(name, bits, signed).eval()
    x = SAMPLE * 2 if signed else (SAMPLE * 2).relu()
    with torch.no_grad():
        y = q(x)
        lv = q.levels()
        assert lv.dim() == 1 and torch.all(lv[1:] >= lv[:-1])
        # every output value is one of the levels
        assert torch.isin(y, lv).all()
        assert y.shape == x.shape and y.dtype == x.dtype
        # idempotent
        torch.testing.assert_close(q(y), y, atol=0, rtol=0)
        codes = q.encode(x)
        assert not codes.dtype.is_floating_point and codes.element_size() == 1
        torch.testing.assert_close(q.decode(codes), y, atol=0, rtol=0)


@pytest.mark.parametrize("name", METHODS)
def test_backward_gives_finite_gradients(name):
    q = make(name, 2, False).train()
    x = (SAMPLE.relu() * 2).requires_grad_()
    q(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    for n, p in q.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("bits", [0, 1, 17, 2.5, True, "4"])
def test_bad_bits_is_value_error(name, bits):
    with pytest.raises(ValueError, match="bits"):
        nuq.make_quantizer(name, bits=bits)


def test_unknown_method_lists_registered_names():
    with pytest.raises(ValueError, match="lsq"):
        nuq.make_quantizer("nope", bits=2)


@pytest.mark.parametrize("name", METHODS)
def test_nan_calibration_sample_is_rejected(name):
    q = nuq.make_quantizer(name, bits=2)
    x = torch.rand(100)
    x[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        q.initialize(x, method=q.init_methods[0])


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trip_is_strict(name):
    q = make(name, 3, False)
    q2 = nuq.make_quantizer(name, bits=3)
    q2.load_state_dict(q.state_dict())
    x = SAMPLE.relu()
    torch.testing.assert_close(q2.eval()(x), q.eval()(x), atol=0, rtol=0)
    bad = dict(q.state_dict())
    bad["unexpected"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="unexpected"):
        q2.load_state_dict(bad)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_nan_in_gives_nan_out(name, signed, training):
    from tests_helpers import role_for

    q = nuq.make_quantizer(name, bits=3, signed=signed, role=role_for(name, signed))
    q.initialize(SAMPLE if signed else SAMPLE.relu(), method=q.init_methods[0])
    q.train(training)
    x = SAMPLE.clone().requires_grad_()
    bad = SAMPLE.clone()
    bad[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    y = q(bad)
    assert torch.isnan(y[0, 0, 0, 0])
    if not q.dynamic:  # a range measured on the tensor itself is Inf there: all NaN is honest
        assert torch.isfinite(y.flatten()[1:]).all()  # Inf is clipped, the rest is untouched
    q(x).sum().backward()  # and a finite tensor still trains
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", METHODS)
def test_eval_before_initialisation_is_refused(name):
    from tests_helpers import role_for

    q = nuq.make_quantizer(name, bits=4, role=role_for(name, False)).eval()
    if q.initialized or q.dynamic:
        q(SAMPLE)  # nothing to initialise (DoReFa, N2UQ's F_Q) or measured per call
        return
    with pytest.raises(ValueError, match="never initialised.*calib=.*nuq.calibrate"):
        q(SAMPLE)


def test_integer_tensor_is_refused():
    q = make("lsq", 4, False)
    with pytest.raises(ValueError, match="floating-point tensors, got torch.int64"):
        q(torch.arange(10))


def test_inf_does_not_enter_the_running_minmax_range():
    q = nuq.make_quantizer("minmax", bits=8, role="activation")
    q(SAMPLE.relu())
    before = q.range.clone()
    bad = SAMPLE.relu().clone()
    bad[0, 0, 0, 0] = float("inf")
    q(bad)
    assert torch.equal(q.range, before)
    q.eval()
    assert torch.isfinite(q(SAMPLE.relu())).all()


def test_per_channel_tensor_of_another_channel_count_is_refused():
    q = nuq.make_quantizer("lsq", bits=4, signed=True, role="weight", per_channel=True, channels=8)
    q.initialize(torch.randn(8, 3, 3, 3))
    with pytest.raises(ValueError, match=r"of 8 channels got a tensor of shape \(5, 3, 3, 3\)"):
        q(torch.randn(5, 3, 3, 3))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_minmax_follows_the_module_dtype(dtype):
    q = nuq.make_quantizer("minmax", bits=8, role="activation")
    q.initialize(SAMPLE.relu())
    q.to(dtype)
    assert q(SAMPLE.relu().to(dtype)).dtype == dtype and q.eval()(SAMPLE.relu().to(dtype)).dtype == dtype
