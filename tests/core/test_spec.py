"""The one vector-spec grammar ``FILE[#KEY][@SITE][:A[:B]]`` (core._spec) and its interventions."""
import pytest
import torch
from safetensors.torch import save_file

import mindscope as ms
from mindscope.core import BadInputError, parse_vector_spec, spec_interventions


def test_parse_forms():
    s = parse_vector_spec("a/b.safetensors#v@resid_post.1:-2.5")
    assert (str(s.file), s.key, s.site, s.values) == ("a/b.safetensors", "v", "resid_post.1", (-2.5,))
    s = parse_vector_spec("v.safetensors:4", "steer")  # site from the file
    assert (s.site, s.values) == (None, (4.0,))
    s = parse_vector_spec("v.safetensors@resid_post.2:-1:", "cap")
    assert s.values == (-1.0, None)
    s = parse_vector_spec("v.safetensors@module:model.layers.3.mlp:2", "steer")
    assert (s.site, s.values) == ("module:model.layers.3.mlp", (2.0,))
    assert parse_vector_spec("v.safetensors@resid_post.0", "ablate").values == ()


@pytest.mark.parametrize("spec,kind,msg", [
    ("vec.safetensors", "steer", "FILE"), ("v.safetensors@resid_post.1:abc", "steer", "not a number"),
    ("@resid_post.1:1", "steer", "no file"), ("v.safetensors@resid_post.1:1", "ablate", "FILE"),
    ("v.safetensors@resid_post.1::", "cap", "MIN, MAX or both"), ("v.safetensors@:1", "steer", "empty site")])
def test_parse_errors(spec, kind, msg):
    with pytest.raises(BadInputError, match=msg):
        parse_vector_spec(spec, kind)


def test_spec_interventions(tiny, tmp_path):
    lm = tiny("llama")
    v = torch.randn(lm.d_model)
    save_file({"v": v}, str(tmp_path / "v.safetensors"))
    save_file({"a": v.clone(), "b": v.clone()}, str(tmp_path / "two.safetensors"))
    f = str(tmp_path / "v.safetensors")
    ivs = spec_interventions(lm, steer=[f"{f}@resid_post.1:4"], cap=[f"{f}@resid_post.2:-1:"],
                             ablate=[f"{f}@resid_post.0"])
    assert isinstance(ivs[0], ms.Add) and ivs[0].scale == 4.0 and torch.equal(ivs[0].vector, v)
    assert isinstance(ivs[1], ms.Cap) and ivs[1].min == -1.0 and ivs[1].max is None
    assert isinstance(ivs[2], ms.Ablate)
    with pytest.raises(ValueError, match="unknown site"):
        spec_interventions(lm, steer=[f"{f}@resid_post.99:1"])
    with pytest.raises(ValueError, match="pick one"):
        spec_interventions(lm, steer=[f"{tmp_path / 'two.safetensors'}@resid_post.1:1"])
    ivs = spec_interventions(lm, steer=[f"{tmp_path / 'two.safetensors'}#b@resid_post.1:1"])
    assert torch.equal(ivs[0].vector, v)
    save_file({"v": torch.randn(7)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="another model"):
        spec_interventions(lm, steer=[f"{tmp_path / 'bad.safetensors'}@resid_post.1:1"])
    with pytest.raises(ValueError, match="records no site"):  # a bare tensor has no site
        spec_interventions(lm, steer=[f"{f}:1"])
    with pytest.raises(FileNotFoundError, match="no such vector file"):
        spec_interventions(lm, steer=[f"{tmp_path}/none.safetensors@resid_post.1:1"])


def test_site_from_the_vector_file(tiny, tmp_path):
    """Item 8: FILE:SCALE uses the site the file records; @SITE overrides it."""
    lm = tiny("llama")
    v = ms.Vector(torch.randn(lm.d_model), site="resid_post.2", model="tiny")
    path = v.save(tmp_path / "v.safetensors")
    (iv,) = spec_interventions(lm, steer=[f"{path}:3"])
    assert (iv.site, iv.scale) == ("resid_post.2", 3.0) and torch.equal(iv.vector, v.data.float())
    (iv,) = spec_interventions(lm, steer=[f"{path}@resid_post.0:3"])
    assert iv.site == "resid_post.0"
    vs = ms.VectorSet(torch.randn(2, lm.d_model), names=["x", "y"], sites=["resid_post.1", "resid_post.3"])
    p2 = vs.save(tmp_path / "set.safetensors")
    (iv,) = spec_interventions(lm, steer=[f"{p2}#y:1"])
    assert iv.site == "resid_post.3" and torch.equal(iv.vector, vs.data[1].float())
    with pytest.raises(ValueError, match="set of 2"):
        spec_interventions(lm, steer=[f"{p2}:1"])
