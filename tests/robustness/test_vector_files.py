"""Vector files + JSON sidecars and llama.cpp control-vector GGUFs fed bad bytes."""
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from _attack import clean_error, hostile_texts, sparse_file
from mindscope.core import Vector, VectorSet, load_vector
from mindscope.steering import export_control_vector, read_control_vector


@pytest.fixture
def vec(tmp_path):
    v = Vector(torch.randn(16), site="resid_post.1", model="tiny", method="test")
    return v, v.save(tmp_path / "v")


@pytest.fixture
def vset(tmp_path):
    s = VectorSet(torch.randn(3, 16), names=["a", "b", "c"], site="resid_post.1")
    return s, s.save(tmp_path / "s")


def test_good_files(vec, vset):
    assert torch.equal(load_vector(vec[1]).data, vec[0].data)
    assert load_vector(vset[1]).names == ["a", "b", "c"]


@pytest.mark.parametrize("label,data", hostile_texts())
def test_hostile_sidecar(vec, vset, label, data):
    for obj, st_path in (vec, vset):
        side = st_path.with_suffix(".json")
        side.write_bytes(data)
        clean_error(lambda: type(obj).load(st_path), side.name)
        clean_error(lambda: load_vector(st_path), side.name, st_path.name)


def test_huge_sidecar_and_tensor_file(vec):
    _, p = vec
    sparse_file(p.with_suffix(".json"), 1 << 31)
    clean_error(lambda: Vector.load(p), "v.json")
    sparse_file(p, 1 << 31)
    clean_error(lambda: Vector.load(p), "v.safetensors")


sidecar_values = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(),
                           st.text(max_size=6), st.lists(st.text(max_size=3), max_size=4),
                           st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(which=st.sampled_from(["vec", "set"]),
       key=st.sampled_from(["kind", "tensor", "shape", "sha256", "names", "sites", "site", "model",
                            "method", "meta", "normalisation", "format", "dtype"]),
       value=sidecar_values, drop=st.booleans())
def test_fuzz_sidecar_fields(tmp_path_factory, which, key, value, drop):
    d = tmp_path_factory.mktemp("v")
    obj = Vector(torch.randn(8), site="resid_post.1") if which == "vec" else \
        VectorSet(torch.randn(2, 8), names=["x", "y"])
    p = obj.save(d / "f")
    side = p.with_suffix(".json")
    m = json.loads(side.read_text())
    if drop:
        m.pop(key, None)
    else:
        m[key] = value
    side.write_text(json.dumps(m))
    try:
        got = load_vector(p)
    except (ValueError, FileNotFoundError):
        clean_error(lambda: load_vector(p), "f.json", "f.safetensors")
        return
    assert torch.equal(got.data, obj.data)


@pytest.mark.parametrize("attack", ["nan", "inf", "2d-for-vector", "empty", "int", "extra",
                                    "scalar"])
def test_bad_tensor_file_without_sidecar(tmp_path, attack):
    p = tmp_path / "bare.safetensors"
    t = {"vector": torch.randn(8)}
    if attack == "nan":
        t["vector"][2] = float("nan")
    elif attack == "inf":
        t["vector"][0] = -float("inf")
    elif attack == "2d-for-vector":
        t["vector"] = torch.randn(2, 8)
    elif attack == "empty":
        t["vector"] = torch.zeros(0)
    elif attack == "int":
        t["vector"] = torch.arange(8, dtype=torch.int64)
    elif attack == "extra":
        t = {"a": torch.randn(8), "b": torch.randn(8)}
    elif attack == "scalar":
        t["vector"] = torch.tensor(3.0)
    save_file(t, str(p))
    if attack == "int":  # integers are a valid (if odd) direction: loaded as float
        assert Vector.load(p, require_sidecar=False).data.dtype == torch.float32
        return
    clean_error(lambda: Vector.load(p, require_sidecar=False), p.name)


def test_nan_vector_with_matching_sidecar_is_refused(tmp_path):
    v = Vector(torch.randn(8))
    v.data[1] = float("nan")
    p = v.save(tmp_path / "nan")  # checksum and shape agree: only the values are bad
    clean_error(lambda: Vector.load(p), "nan.safetensors")


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(cut=st.floats(0, 1, exclude_max=True), flip=st.one_of(st.none(), st.integers(0, 10 ** 6)))
def test_fuzz_tensor_bytes(tmp_path_factory, cut, flip):
    d = tmp_path_factory.mktemp("t")
    v = Vector(torch.randn(8))
    p = v.save(d / "v")
    data = bytearray(p.read_bytes())
    if flip is None:
        data = data[:int(cut * len(data))]
    else:
        data[flip % len(data)] ^= 0x5A
    p.write_bytes(bytes(data))
    try:
        got = Vector.load(p)
    except (ValueError, FileNotFoundError):
        clean_error(lambda: Vector.load(p), "v.safetensors", "v.json")
        return
    assert flip is not None and torch.equal(got.data, v.data)  # a flip in header padding


# ---- llama.cpp control vectors --------------------------------------------------------------------

@pytest.fixture
def cvec(tmp_path):
    return export_control_vector({"resid_post.1": torch.randn(16), "resid_post.2": torch.randn(16)},
                                 tmp_path / "c.gguf")


def test_cvec_round_trip(cvec):
    out, info = read_control_vector(cvec)
    assert sorted(out) == ["resid_post.1", "resid_post.2"] and info["layer_count"] == 2


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(cut=st.floats(0, 1, exclude_max=True), flip=st.one_of(st.none(), st.integers(0, 10 ** 6)),
       val=st.integers(0, 255))
def test_fuzz_cvec_bytes(tmp_path_factory, cut, flip, val):
    d = tmp_path_factory.mktemp("g")
    p = export_control_vector({"resid_post.1": torch.randn(16)}, d / "c.gguf")
    data = bytearray(p.read_bytes())
    if flip is None:
        data = data[:int(cut * len(data))]
    else:
        data[flip % len(data)] = val
    p.write_bytes(bytes(data))
    try:
        out, _ = read_control_vector(p)
    except (ValueError, FileNotFoundError):
        clean_error(lambda: read_control_vector(p), "c.gguf")
        return
    for v in out.values():
        assert v.shape == (16,) and torch.isfinite(v).all()


def test_cvec_nan_and_empty(tmp_path):
    p = export_control_vector({"resid_post.1": torch.full((4,), float("nan"))}, tmp_path / "n.gguf")
    clean_error(lambda: read_control_vector(p), "n.gguf")
    e = tmp_path / "e.gguf"
    e.write_bytes(b"")
    clean_error(lambda: read_control_vector(e), "e.gguf")
    sparse_file(e, 1 << 20)
    clean_error(lambda: read_control_vector(e), "e.gguf")
