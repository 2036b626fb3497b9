"""The control-vector export read back with the ``gguf`` reader and replayed through llama.cpp's
own loading rules (ggml-org/llama.cpp):
* common/common.cpp ``common_control_vector_load_one``: tensor ``direction.N`` (N >= 1, F32, 1-D)
  is added, times the strength, into a buffer at offset ``n_embd * (N - 1)``;
* src/llama-adapter.cpp ``llama_adapter_cvec::apply``: for il in 1..n_layer-1,
  ``tensors[il]`` = buffer[n_embd * (il - 1) : n_embd * il] (no tensor for layer 0);
* src/models/llama.cpp (every model graph): ``cur = build_cvec(cur, il)`` right after the FFN
  residual add of block il, i.e. on the block's output = mindscope ``resid_post.il``."""
import gguf
import numpy as np
import torch

import mindscope.steering as st


def _llama_cpp_layers(path, n_layer, strength=1.0):
    """{il: vector added to block il's output} as llama.cpp computes it from the file."""
    r = gguf.GGUFReader(str(path))
    assert r.get_field("general.architecture").contents() == "controlvector"
    n_embd, buf = None, np.zeros(0, np.float32)
    for t in r.tensors:
        prefix, _, idx = t.name.partition(".")
        assert prefix == "direction" and idx.isdigit() and int(idx) > 0
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and len(t.shape) == 1
        n_embd = n_embd or int(t.shape[0])
        N = int(idx)
        buf = np.concatenate([buf, np.zeros(max(0, n_embd * N - buf.size), np.float32)])
        buf[n_embd * (N - 1): n_embd * N] += np.asarray(t.data) * strength
    out = {}
    for il in range(1, n_layer):
        off = n_embd * (il - 1)
        if off + n_embd <= buf.size and np.any(buf[off:off + n_embd]):
            out[il] = buf[off:off + n_embd]
    return out


def test_each_site_lands_on_the_block_llama_cpp_adds_it_to(tmp_path):
    vs = {"resid_post.3": torch.randn(8), "resid_pre.7": torch.randn(8), "resid_post.1": torch.randn(8)}
    p = st.export_control_vector(vs, tmp_path / "cv.gguf", model_hint="llama", scale=2.0)
    got = _llama_cpp_layers(p, n_layer=12)
    # resid_pre.7 is block 6's output
    assert sorted(got) == [1, 3, 6]
    np.testing.assert_allclose(got[3], 2.0 * vs["resid_post.3"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(got[6], 2.0 * vs["resid_pre.7"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(got[1], 2.0 * vs["resid_post.1"].numpy(), rtol=1e-6)
    back, _ = st.read_control_vector(p)
    assert {st.site_to_cvec_layer(s) for s in back} == set(got)
