"""save_packed / load_packed: exact round trip for every registered method, real bit
packing, and clear errors for damaged files and unsupported models."""

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

import nuq
from nuq.export import FORMAT_VERSION, load_packed, read_header, save_packed
from nuq.export.container import MAGIC, pack_bits, read_container, unpack_bits, write_container
from nuq.export.weight_table import WeightTable
from nuq.nn import QuantConv2d
from nuq.quantizers import quantizer_class

META = {"model": {"name": "resnet20", "kwargs": {"width": 4}}, "num_classes": 10, "in_channels": 1}


def resnet():
    return nuq.create_model("resnet20", num_classes=10, in_channels=1, width=4)


def calib():
    return [torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))]


def config(weight, act, bits=2, **kw):
    """W/A methods at ``bits`` (or their minimum), with the cheap "lsq" initialisation
    where a method has it (the MSE search costs seconds per layer on a busy CPU)."""
    wc, ac = quantizer_class(weight), quantizer_class(act)
    init = {"w_init": "lsq" if "lsq" in wc.init_methods else wc.init_methods[0],
            "a_init": "lsq" if "lsq" in ac.init_methods else ac.init_methods[0]}
    return nuq.QATConfig(weight=weight, act=act, w_bits=max(bits, wc.min_bits), a_bits=max(bits, ac.min_bits),
                         **(init | kw))


def prepare_with(method, factory=resnet, bits=2):
    """The method as weight and activation quantizer, or in the one role it supports."""
    errors = []
    for w, a in ((method, method), (method, "lsq"), ("lsq", method)):
        try:
            return nuq.prepare(factory(), config(w, a, bits), calib=calib()).eval()
        except ValueError as e:
            errors.append(str(e))
    pytest.skip(f"{method}: no W/A role prepares: {errors}")


@torch.no_grad()
def perturb(model, seed=0):
    """Move every quantizer parameter off its initial value (non-uniform tables)."""
    g = torch.Generator().manual_seed(seed)
    for _, q in nuq.named_quantizers(model):
        for p in q.parameters():
            p.mul_(1 + 0.4 * (torch.rand(p.shape, generator=g) - 0.5))
            p.add_(0.1 * torch.randn(p.shape, generator=g) * (p == 0))


@pytest.mark.parametrize("method", nuq.available_quantizers())
def test_round_trip_is_exact_for_every_method(method, tmp_path):
    q = prepare_with(method)
    perturb(q)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        ref = q(x)
    info = save_packed(q, tmp_path / "m.nuqpack", meta=META)
    loaded = load_packed(tmp_path / "m.nuqpack")  # architecture from the header's meta
    with torch.no_grad():
        out = loaded(x)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    assert not loaded.training
    for _, layer in nuq.quant_layers(loaded):
        # the stored level table rides along as a fixed weight quantizer: a projection
        wq = layer.weight_quantizer
        assert isinstance(wq, WeightTable) and not layer.weight.requires_grad
        assert torch.equal(wq(layer.weight), layer.weight)
    assert info["bytes"] == os.path.getsize(tmp_path / "m.nuqpack")


def test_codes_take_their_bit_width(tmp_path):
    """W2 layers store 2 bits per weight, the 8-bit first/last layers 8 bits."""
    q = nuq.prepare(resnet(), config("lsq", "lsq"), calib=calib())
    save_packed(q, tmp_path / "m.nuqpack", meta=META)
    header, arrays = read_container(tmp_path / "m.nuqpack")
    layers = dict(nuq.quant_layers(q))
    for rec in header["layers"]:
        n = layers[rec["name"]].weight.numel()
        bits = rec["weight"]["code_bits"]
        assert bits == (8 if rec["name"] in ("conv1", "fc") else 2)
        assert arrays[f"{rec['name']}.weight_codes"].numel() == (n * bits + 7) // 8
        assert rec["weight"]["bits"] == bits and rec["act"]["bits"] == bits


def test_resnet20_w2a2_size_report(tmp_path):
    torch.manual_seed(0)
    model = nuq.create_model("resnet20", num_classes=10, in_channels=1)
    q = nuq.prepare(model, config("lsq", "lsq"), calib=calib())
    info = save_packed(q, tmp_path / "r20.nuqpack", meta={**META, "model": {"name": "resnet20", "kwargs": {}}})
    n_float = sum(v.numel() for v in model.state_dict().values())
    assert info["float32_bytes"] == 4 * n_float
    # 2-bit codes: ~16x on the weights; BatchNorm and the JSON header stay as they are
    assert info["ratio"] > 8
    loaded = load_packed(tmp_path / "r20.nuqpack")
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), q.eval()(x), atol=0, rtol=0)


def test_per_channel_weights_and_skeleton(tmp_path):
    q = nuq.prepare(resnet(), config("lsq", "lsq", 3, per_channel=True), calib=calib()).eval()
    save_packed(q, tmp_path / "m.nuqpack")  # no meta: the caller gives the skeleton
    header = read_header(tmp_path / "m.nuqpack")
    assert header["format_version"] == FORMAT_VERSION and header["nuq_version"] == nuq.__version__
    assert any(r["weight"]["per_channel"] for r in header["layers"])
    with pytest.raises(ValueError, match="pass model=<skeleton>"):
        load_packed(tmp_path / "m.nuqpack")
    skeleton = resnet()
    loaded = load_packed(tmp_path / "m.nuqpack", model=skeleton)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), q(x), atol=0, rtol=0)


def test_mlp_with_a_float_layer(tmp_path):
    """Layers left float (first/last) travel as float state."""
    mlp = nuq.create_model("mlp", in_channels=1, hidden=32)
    q = nuq.prepare(mlp, config("lsq", "lsq", first_last="float"), calib=calib()).eval()
    meta = {"model": {"name": "mlp", "kwargs": {"hidden": 32}}, "num_classes": 10, "in_channels": 1}
    save_packed(q, tmp_path / "m.nuqpack", meta=meta)
    assert [r["name"] for r in read_header(tmp_path / "m.nuqpack")["layers"]] == ["3"]
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(load_packed(tmp_path / "m.nuqpack")(x), q(x), atol=0, rtol=0)


def test_file_is_json_header_plus_raw_arrays(tmp_path):
    q = nuq.prepare(resnet(), config("lsq", "lsq"), calib=calib())
    save_packed(q, tmp_path / "m.nuqpack", meta=META)
    raw = (tmp_path / "m.nuqpack").read_bytes()
    assert raw[:8] == MAGIC
    n = int.from_bytes(raw[8:16], "little")
    header = json.loads(raw[16:16 + n])
    assert header["format"] == "nuq-packed" and header["meta"] == META
    assert b"pickle" not in raw and not any(f.name.endswith(".tmp") for f in tmp_path.iterdir())


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 7, 8, 12, 16])
def test_bit_packing_round_trip(width):
    rng = np.random.default_rng(width)
    for count in (0, 1, 7, 8, 1001):
        codes = rng.integers(0, 2**width, count)
        packed = pack_bits(codes, width)
        assert packed.dtype == np.uint8 and packed.size == (count * width + 7) // 8
        np.testing.assert_array_equal(unpack_bits(packed, width, count), codes)


def test_two_bit_layout_is_lsb_first():
    assert pack_bits(np.array([1, 2, 3, 0]), 2).tolist() == [1 | 2 << 2 | 3 << 4]
    with pytest.raises(ValueError, match="does not fit"):
        pack_bits(np.array([4]), 2)


# --- errors ------------------------------------------------------------------------


@pytest.fixture
def packed_file(tmp_path):
    q = nuq.prepare(nuq.create_model("mlp", in_channels=1, hidden=16), config("lsq", "lsq"),
                    calib=calib())
    path = tmp_path / "m.nuqpack"
    save_packed(q, path, meta={"model": {"name": "mlp", "kwargs": {"hidden": 16}}, "num_classes": 10,
                               "in_channels": 1})
    return path


def test_truncated_file(packed_file):
    raw = packed_file.read_bytes()
    for cut in (4, 20, len(raw) - 1):
        packed_file.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="truncated|magic"):
            load_packed(packed_file)


def test_corrupted_data(packed_file):
    raw = bytearray(packed_file.read_bytes())
    raw[-3] ^= 0xFF
    packed_file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupted"):
        load_packed(packed_file)


def rewrite_header(path, edit):
    """Re-write a packed file with ``edit(header)`` applied (valid CRCs: a deliberate change)."""
    header, arrays = read_container(path)
    for k in ("arrays", "data_bytes", "crc32", "header_crc32"):
        header.pop(k)
    edit(header)
    write_container(path, header, arrays)


def test_newer_format_version(packed_file):
    rewrite_header(packed_file, lambda h: h.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match="upgrade nuq"):
        load_packed(packed_file)


def test_not_a_packed_file(tmp_path):
    p = tmp_path / "x.nuqpack"
    p.write_bytes(b"PK\x03\x04 something else entirely")
    with pytest.raises(ValueError, match="not a nuq packed file"):
        load_packed(p)
    with pytest.raises(FileNotFoundError):
        load_packed(tmp_path / "missing.nuqpack")


def test_never_prepared_model_writes_nothing(tmp_path):
    path = tmp_path / "m.nuqpack"
    path.write_bytes(b"previous")
    with pytest.raises(ValueError, match="no quantized layers"):
        save_packed(resnet(), path, meta=META)
    assert path.read_bytes() == b"previous" and len(list(tmp_path.iterdir())) == 1


def test_unsupported_layer_type(tmp_path):
    class MyConv(QuantConv2d):
        pass

    q = nuq.prepare(resnet(), config("lsq", "lsq"), calib=calib())
    old = q.layers[0].conv1
    q.layers[0].conv1 = MyConv.from_float(old, old.weight_quantizer, old.act_quantizer)
    with pytest.raises(ValueError, match="unsupported layer type MyConv"):
        save_packed(q, tmp_path / "m.nuqpack", meta=META)
    assert not list(tmp_path.iterdir())


def test_stray_quantizer_and_uninitialised_quantizer(tmp_path):
    q = nuq.prepare(resnet(), config("lsq", "lsq"), calib=calib())
    q.extra = nuq.make_quantizer("lsq", bits=2)
    with pytest.raises(ValueError, match="outside a QuantConv2d"):
        save_packed(q, tmp_path / "m.nuqpack")
    q2 = nuq.prepare(resnet(), config("lsq", "lsq"))  # no calib: activations not initialised
    with pytest.raises(ValueError, match="never initialised"):
        save_packed(q2, tmp_path / "m.nuqpack")


def test_skeleton_of_another_architecture(packed_file):
    with pytest.raises(ValueError, match="layer"):
        load_packed(packed_file, model=nuq.create_model("mlp", in_channels=1, hidden=8))
    with pytest.raises(ValueError, match="no layer"):
        load_packed(packed_file, model=nn.Sequential(nn.Linear(3, 3)))


def test_meta_must_be_json(tmp_path):
    q = nuq.prepare(resnet(), config("lsq", "lsq"), calib=calib())
    with pytest.raises(ValueError, match="JSON"):
        save_packed(q, tmp_path / "m.nuqpack", meta={"x": object()})


def test_flipped_header_bit_is_an_error(packed_file):
    raw = bytearray(packed_file.read_bytes())
    i = raw.index(b'"bits":2')  # one bit of a bit width: 2 -> 3
    raw[i + 7] ^= 0x01
    packed_file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="CRC32 of the header does not match"):
        load_packed(packed_file)


def test_huge_claimed_shape_is_a_clear_error(packed_file):
    rewrite_header(packed_file, lambda h: h["layers"][1].update(weight_shape=[2**40, 2**40, 3, 3]))
    with pytest.raises(ValueError, match="weight_shape"):
        load_packed(packed_file)
