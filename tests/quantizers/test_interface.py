"""What callers ask a quantizer instead of comparing method names: its role, its config,
its dynamic form, the integer structure of its levels."""

import ast
import inspect
from pathlib import Path

import pytest
import torch
from tests_helpers import role_for

import nuq
from nuq.quantizers import Quantizer, quantizer_class

METHODS = nuq.available_quantizers()
SRC = Path(nuq.__file__).parent
#: constructor arguments every quantizer takes through the base class
BASE_ARGS = {"self", "bits", "signed", "grad_scale", "per_channel", "channels", "role"}
#: non-default constructor arguments of the methods that have some
NON_DEFAULT = {"minmax": {"observer": "dynamic", "momentum": 0.25}, "apot": {"k": 1, "clip": "max"},
               "pot": {"clip": "max"}, "uniform": {"clip": "max"}, "lloyd": {"clip": "max"},
               "lcq": {"intervals": 7}, "nulsq": {"init_value": 0.3}}


@pytest.mark.parametrize("name", METHODS)
def test_config_fields_name_every_constructor_argument(name):
    cls = quantizer_class(name)
    params = set()
    for klass in cls.__mro__:
        if klass is Quantizer or not issubclass(klass, Quantizer) or "__init__" not in vars(klass):
            continue
        params |= {p.name for p in inspect.signature(klass.__init__).parameters.values()
                   if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    assert params - BASE_ARGS == set(cls.config_fields)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("signed", [False, True])
def test_from_config_rebuilds_the_quantizer(name, signed):
    cls = quantizer_class(name)
    kw = dict(NON_DEFAULT.get(name, {}))
    if cls.supports_per_channel:
        kw["per_channel"] = True
    q = nuq.make_quantizer(name, bits=3, signed=signed, role=role_for(name, signed), grad_scale="lsq", **kw)
    x = torch.randn(6, 5, 4, 4) * 2
    q.initialize(x if signed else x.relu(), method=q.init_methods[0])
    cfg = q.config()
    assert cfg["role"] == role_for(name, signed) and cfg["kwargs"]["grad_scale"] == "lsq"
    for k, v in NON_DEFAULT.get(name, {}).items():
        assert cfg["kwargs"][k] == v
    import json
    q2 = Quantizer.from_config(json.loads(json.dumps(cfg)))
    q2.load_state_dict(q.state_dict())
    q.eval(), q2.eval()
    assert type(q2) is type(q) and q2.config() == cfg
    with torch.no_grad():
        assert torch.equal(q2(x), q(x)) and torch.equal(q2.levels(), q.levels())


def test_role_decides_the_minmax_observer_and_is_checked():
    assert nuq.make_quantizer("minmax", signed=True, role="weight").observer == "dynamic"
    assert nuq.make_quantizer("minmax", signed=True, role="activation").observer == "running"
    with pytest.raises(ValueError, match="role='bias'; allowed: weight, activation"):
        nuq.make_quantizer("lsq", role="bias")
    with pytest.warns(UserWarning, match="'n2uq' is meant for activation quantization, not weights"):
        nuq.make_quantizer("n2uq", signed=True, role="weight")
    with pytest.warns(UserWarning, match="'n2uq_w' is meant for weight quantization"):
        nuq.make_quantizer("n2uq_w", role="activation")


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_form_is_what_the_quantizer_computes(per_channel):
    q = nuq.make_quantizer("minmax", bits=4, signed=True, role="weight", per_channel=per_channel)
    assert nuq.make_quantizer("minmax", bits=4, role="activation").dynamic_form() is None
    form = q.dynamic_form()
    g = torch.Generator().manual_seed(0)
    for scale in (1e-4, 1.0, 3e3):
        x = torch.randn(5, 7, 3, 3, generator=g) * scale
        k, step = form(x)
        y = q(x)
        assert torch.equal(k * step, y)
        assert torch.equal(k, k.round()) and k.abs().max() <= 8
        assert torch.equal(q.encode(x).long() - q.qn, k.long())  # encode: the same codes
        assert torch.equal(q.decode(q.encode(x)), y)


def test_integer_levels_carry_the_level_structure():
    def q(name, **kw):
        out = nuq.make_quantizer(name, bits=3, signed=True, role="weight", **kw)
        out.initialize(torch.randn(64, 9), method=out.init_methods[0])
        return out

    for name in ("apot", "pot"):
        qa = q(name)
        ints, scale, kind = qa.integer_levels()
        assert kind == "dyadic" and ints.dtype == torch.int64
        torch.testing.assert_close((scale * ints.double()).float(), qa.levels(), rtol=1e-6, atol=0)
    ints, scale, kind = q("lsq").integer_levels()
    assert kind == "grid" and torch.equal(ints, torch.arange(-4, 4))
    assert q("lloyd").integer_levels() is None  # levels fitted to the sample: no integer form


def test_transforms_take_what_they_need_from_the_layer_context():
    from nuq.nn.transforms import make_transform

    assert make_transform("n2uq_entropy", context={"bits": 3, "other": 1}).bits == 3
    make_transform("apot_wn", context={"bits": 3})  # takes no context entry
    assert make_transform("n2uq_entropy", bits=4, context={"bits": 3}).bits == 4


def test_first_last_method_is_a_config_value():
    model = nuq.create_model("mlp", num_classes=10, in_channels=1, hidden=16)
    qm = nuq.prepare(model, nuq.QATConfig(first_last_method="lsq"))
    layers = dict(nuq.quant_layers(qm))
    first = layers[next(iter(layers))]
    assert first.weight_quantizer.method == "lsq" and first.weight_quantizer.bits == 8
    with pytest.raises(ValueError, match="first_last_method"):
        nuq.QATConfig(first_last_method="nope")


def _method_names_compared(path: Path) -> list[str]:
    """String constants that are method names, compared with == / != / in outside quantizers/."""
    names = set(METHODS)
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        sides = (node.left, *node.comparators)
        if any(isinstance(s, ast.Attribute) and s.attr.endswith("scheme") for s in sides):
            continue  # accounting's arithmetic schemes ("uniform", "shift-add"), not methods
        for side in sides:
            consts = [side] if isinstance(side, ast.Constant) else list(getattr(side, "elts", []))
            hits += [f"{path.name}:{node.lineno}: {c.value!r}" for c in consts
                     if isinstance(c, ast.Constant) and c.value in names]
    return hits


def test_no_method_name_is_compared_outside_quantizers():
    hits = [h for p in SRC.rglob("*.py") if "quantizers" not in p.relative_to(SRC).parts
            for h in _method_names_compared(p)]
    assert hits == []
