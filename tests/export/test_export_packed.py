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
from nuq.export.container import pack_bits, read_container, unpack_bits, write_container
from nuq.export.packed import FORMAT
from nuq.export.safetensors_io import read_safetensors, write_safetensors
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
    info = save_packed(q, tmp_path / "m.nuq.safetensors", meta=META)
    loaded = load_packed(tmp_path / "m.nuq.safetensors")  # architecture from the header's meta
    with torch.no_grad():
        out = loaded(x)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    assert not loaded.training
    for _, layer in nuq.quant_layers(loaded):
        # the stored level table rides along as a fixed weight quantizer: a projection
        wq = layer.weight_quantizer
        assert isinstance(wq, WeightTable) and not layer.weight.requires_grad
        assert torch.equal(wq(layer.weight), layer.weight)
    assert info["bytes"] == os.path.getsize(tmp_path / "m.nuq.safetensors")


def test_codes_take_their_bit_width(tmp_path):
    """W2 layers store 2 bits per weight, the 8-bit first/last layers 8 bits."""
    q = nuq.prepare(resnet(), config("lsq", "lsq"), calib=calib())
    save_packed(q, tmp_path / "m.nuq.safetensors", meta=META)
    header, arrays = read_safetensors(tmp_path / "m.nuq.safetensors", FORMAT)
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
    info = save_packed(q, tmp_path / "r20.nuq.safetensors", meta={**META, "model": {"name": "resnet20", "kwargs": {}}})
    n_float = sum(v.numel() for v in model.state_dict().values())
    assert info["float32_bytes"] == 4 * n_float
    # 2-bit codes: ~16x on the weights; BatchNorm and the JSON header stay as they are
    assert info["ratio"] > 8
    loaded = load_packed(tmp_path / "r20.nuq.safetensors")
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), q.eval()(x), atol=0, rtol=0)


def test_per_channel_weights_and_skeleton(tmp_path):
    q = nuq.prepare(resnet(), config("lsq", "lsq", 3, per_channel=True), calib=calib()).eval()
    save_packed(q, tmp_path / "m.nuq.safetensors")  # no meta: the caller gives the skeleton
    header = read_header(tmp_path / "m.nuq.safetensors")
    assert header["format_version"] == FORMAT_VERSION and header["nuq_version"] == nuq.__version__
    assert any(r["weight"]["per_channel"] for r in header["layers"])
    with pytest.raises(ValueError, match="pass model=<skeleton>"):
        load_packed(tmp_path / "m.nuq.safetensors")
    skeleton = resnet()
    loaded = load_packed(tmp_path / "m.nuq.safetensors", model=skeleton)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), q(x), atol=0, rtol=0)


def test_mlp_with_a_float_layer(tmp_path):
    """Layers left float (first/last) travel as float state."""
    mlp = nuq.create_model("mlp", in_channels=1, hidden=32)
    q = nuq.prepare(mlp, config("lsq", "lsq", first_last="float"), calib=calib()).eval()
    meta = {"model": {"name": "mlp", "kwargs": {"hidden": 32}}, "num_classes": 10, "in_channels": 1}
    save_packed(q, tmp_path / "m.nuq.safetensors", meta=meta)
    assert [r["name"] for r in read_header(tmp_path / "m.nuq.safetensors")["layers"]] == ["3"]
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(load_packed(tmp_path / "m.nuq.safetensors")(x), q(x), atol=0, rtol=0)


def test_file_is_a_safetensors_file(tmp_path):
    """Any safetensors reader gets the tensors: 2-bit codes as uint8, level tables, BatchNorm."""
    from safetensors import safe_open

    q = nuq.prepare(resnet(), config("lsq", "lsq"), calib=calib())
    path = tmp_path / "m.nuq.safetensors"
    save_packed(q, path, meta=META)
    header = read_header(path)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
        codes = f.get_tensor("layers.0.conv1.weight_codes")
        levels = f.get_tensor("layers.0.conv1.weight_levels")
        bn = f.get_tensor("layers.0.bn1.running_var")
    assert meta["format"] == "nuq-packed" and int(meta["format_version"]) == FORMAT_VERSION
    assert json.loads(meta["nuq"])["meta"] == META == header["meta"]
    assert codes.dtype == torch.uint8 and codes.numel() == q.layers[0].conv1.weight.numel() * 2 // 8
    assert levels.shape == (4,)
    assert torch.equal(bn, q.state_dict()["layers.0.bn1.running_var"])
    assert "layers.0.conv1.weight" not in keys and "fc.weight_codes" in keys
    raw = path.read_bytes()
    assert b"pickle" not in raw and not any(f.name.endswith(".tmp") for f in tmp_path.iterdir())


def test_previous_container_files_are_still_read(tmp_path):
    """A version-2 file of nuq's own container loads to the same model."""
    q = nuq.prepare(resnet(), config("nulsq", "nulsq"), calib=calib()).eval()
    perturb(q)
    new = tmp_path / "m.nuq.safetensors"
    save_packed(q, new, meta=META)
    header, arrays = read_safetensors(new, FORMAT)
    old = tmp_path / "m.nuqpack"
    write_container(old, {**header, "format_version": 2}, arrays)
    assert read_container(old)[0]["format_version"] == 2
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(load_packed(old)(x), q(x), atol=0, rtol=0)


def test_plain_safetensors_weights_are_not_a_nuq_export(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "weights.safetensors"
    save_file(resnet().state_dict(), str(p))
    with pytest.raises(ValueError, match="safetensors file but not a nuq export"):
        load_packed(p)


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
    path = tmp_path / "m.nuq.safetensors"
    save_packed(q, path, meta={"model": {"name": "mlp", "kwargs": {"hidden": 16}}, "num_classes": 10,
                               "in_channels": 1})
    return path


def test_truncated_file(packed_file):
    raw = packed_file.read_bytes()
    for cut in (4, 20, len(raw) // 2, len(raw) - 1):
        packed_file.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="truncated|does not match"):
            load_packed(packed_file)


def test_corrupted_data(packed_file):
    raw = bytearray(packed_file.read_bytes())
    raw[-3] ^= 0xFF
    packed_file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupted"):
        load_packed(packed_file)


def rewrite_header(path, edit):
    """Re-write a packed file with ``edit(header)`` applied (valid CRCs: a deliberate change)."""
    header, arrays = read_safetensors(path, FORMAT)
    header.pop("format")
    version = header.pop("format_version")
    edit(header)
    write_safetensors(path, FORMAT, header.pop("format_version", version), header, arrays)


def test_newer_format_version(packed_file):
    rewrite_header(packed_file, lambda h: h.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match="upgrade nuq"):
        load_packed(packed_file)


def test_not_a_packed_file(tmp_path):
    p = tmp_path / "x.nuq.safetensors"
    p.write_bytes(b"PK\x03\x04 something else entirely")
    with pytest.raises(ValueError, match="not a safetensors file|truncated"):
        load_packed(p)
    with pytest.raises(FileNotFoundError):
        load_packed(tmp_path / "missing.nuq.safetensors")


def test_never_prepared_model_writes_nothing(tmp_path):
    path = tmp_path / "m.nuq.safetensors"
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
        save_packed(q, tmp_path / "m.nuq.safetensors", meta=META)
    assert not list(tmp_path.iterdir())


def test_stray_quantizer_and_uninitialised_quantizer(tmp_path):
    q = nuq.prepare(resnet(), config("lsq", "lsq"), calib=calib())
    q.extra = nuq.make_quantizer("lsq", bits=2)
    with pytest.raises(ValueError, match="outside a QuantConv2d"):
        save_packed(q, tmp_path / "m.nuq.safetensors")
    q2 = nuq.prepare(resnet(), config("lsq", "lsq"))  # no calib: activations not initialised
    with pytest.raises(ValueError, match="never initialised"):
        save_packed(q2, tmp_path / "m.nuq.safetensors")


def test_skeleton_of_another_architecture(packed_file):
    with pytest.raises(ValueError, match="layer"):
        load_packed(packed_file, model=nuq.create_model("mlp", in_channels=1, hidden=8))
    with pytest.raises(ValueError, match="no layer"):
        load_packed(packed_file, model=nn.Sequential(nn.Linear(3, 3)))


def test_meta_must_be_json(tmp_path):
    q = nuq.prepare(resnet(), config("lsq", "lsq"), calib=calib())
    with pytest.raises(ValueError, match="JSON"):
        save_packed(q, tmp_path / "m.nuq.safetensors", meta={"x": object()})


def test_flipped_header_bit_is_an_error(packed_file):
    raw = bytearray(packed_file.read_bytes())
    i = raw.index(b'bits\\":2')  # one bit of a bit width (inside the metadata string): 2 -> 3
    raw[i + 7] ^= 0x01
    packed_file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="CRC32 of the header does not match"):
        load_packed(packed_file)


def test_huge_claimed_shape_is_a_clear_error(packed_file):
    rewrite_header(packed_file, lambda h: h["layers"][1].update(weight_shape=[2**40, 2**40, 3, 3]))
    with pytest.raises(ValueError, match="weight_shape"):
        load_packed(packed_file)


def test_changed_tensor_shape_in_the_safetensors_table_is_an_error(packed_file):
    """A consistent edit of the tensor table (shape and offsets still valid for safetensors)
    is caught by the header CRC, which covers the table too."""
    raw = bytearray(packed_file.read_bytes())
    i = raw.index(b'"5.bias":')  # the MLP's last layer
    j = raw.index(b'"shape":[10]', i)
    raw[j:j + 12] = b'"shape":[ 9]'  # a 4-byte-shorter bias would be another model
    packed_file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="CRC32 of the header"):
        load_packed(packed_file)
