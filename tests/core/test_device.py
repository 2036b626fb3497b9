"""The device policy on CPU: clear errors for CUDA/NCCL requests without CUDA and for a
device_map that does not fit (nothing written), follow-the-module moves checked on the meta
device (a second device every CPU machine has), subspace Ablate in bf16 against an fp64
reference, generate's per-device generator, and device_map='auto' equal to a plain load."""
import pytest
import torch
import torch.distributed as dist

import mindscope as ms
from mindscope.core import (Ablate, Add, BadInputError, Splice, autocast_dtype,
                            follow, init_distributed, module_device, resolve_device, to_module)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)



def test_cuda_request_without_cuda_names_the_fix(no_cuda):
    for req in ("cuda", "cuda:0", "CUDA"):
        with pytest.raises(BadInputError, match="--device cpu"):
            resolve_device(req)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(BadInputError, match="unknown device"):
        resolve_device("tpu7")


def test_cuda_index_past_the_gpu_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(BadInputError, match="only 2 GPU"):
        resolve_device("cuda:2")


def test_load_on_cuda_without_cuda_fails_before_reading(no_cuda, tmp_path):
    # the folder does not even exist: the device check comes first, nothing is created
    with pytest.raises(BadInputError, match="no CUDA GPU"):
        ms.load(str(tmp_path / "missing"), device="cuda")
    assert not (tmp_path / "missing").exists()


def test_nccl_without_gpus_is_refused_before_any_process_group(no_cuda, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(BadInputError, match="backend='gloo'"):
        init_distributed(backend="nccl")
    with pytest.raises(BadInputError, match="no CUDA GPU"):
        init_distributed(device="cuda")
    assert not dist.is_initialized()


def test_more_ranks_than_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(BadInputError, match="--nproc-per-node 1"):
        init_distributed(device="cuda")
    assert not dist.is_initialized()


def test_outside_torchrun_init_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed("cpu") == (0, 1, torch.device("cpu"))
    assert not dist.is_initialized()


def test_autocast_policy():
    assert autocast_dtype("cuda") is torch.bfloat16
    assert autocast_dtype("cpu") is None
    assert autocast_dtype("cpu", bf16=True) is torch.bfloat16
    assert autocast_dtype("cuda", bf16=False) is None


def test_helpers_move_to_the_module_device():
    lin = torch.nn.Linear(4, 4, device="meta")
    assert module_device(lin) == torch.device("meta")
    assert module_device(torch.nn.ReLU()) == torch.device("cpu")
    v = torch.ones(4)
    assert to_module(v, lin).device.type == "meta"
    assert follow(v, torch.empty(1, device="meta")).device.type == "meta"
    assert to_module(v, torch.nn.Linear(4, 4)) is v        # already there: no copy


def test_interventions_follow_the_site_device():
    """A CPU vector applied to a site whose value lives on another device (meta here) must be
    moved there: mixing devices would raise."""
    h = torch.empty(3, 8, device="meta")
    rows = torch.arange(3)
    d = torch.randn(8)
    # (Clamp/Cap/one-direction Ablate check the norm with .item(), which meta cannot do)
    for iv in (Add("resid_post.0", d, 2.0), Add("resid_post.0", torch.randn(3, 8), torch.ones(3)),
               Ablate("resid_post.0", torch.randn(2, 8), subspace=True)):
        out = iv.apply_rows(h, rows)
        assert out.device.type == "meta" and out.shape == (3, 8), type(iv).__name__


def test_splice_moves_the_sae_to_the_site_device():
    from mindscope.sae import SAE, SAEConfig

    sae = SAE(SAEConfig("relu", 8, 16))
    out = Splice("resid_post.0", sae).apply_rows(torch.empty(3, 8, device="meta"),
                                                 torch.arange(3))
    assert out.device.type == "meta" and sae.W_enc.device.type == "meta"


def test_subspace_ablate_in_bf16_matches_fp64():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(5, 32, generator=g)
    basis = torch.randn(3, 32, generator=g)
    q, _ = torch.linalg.qr(basis.double().T)
    ref = h.double() - (h.double() @ q) @ q.T                               # (5, 32)
    out = Ablate("resid_post.0", basis, subspace=True).apply_rows(h.bfloat16(), torch.arange(5))
    assert out.dtype == torch.bfloat16
    # removed: no component left in the subspace (bf16 rounding of h is ~0.4% of |h|)
    assert float((out.double() @ q).abs().max()) < 0.05 * float(h.abs().max())
    torch.testing.assert_close(out.double(), ref, atol=0.05, rtol=0.02)


def test_sampled_generate_is_seeded_per_device(tiny):
    lm = tiny("llama")
    a = lm.generate(["Hi"], max_new_tokens=6, temperature=1.0, seed=3, chat=False)
    b = lm.generate(["Hi"], max_new_tokens=6, temperature=1.0, seed=3, chat=False)
    c = lm.generate(["Hi"], max_new_tokens=6, temperature=1.0, seed=4, chat=False)
    assert a[0].token_ids == b[0].token_ids
    assert len(a[0].token_ids) and (a[0].token_ids != c[0].token_ids
                                    or a[0].logprobs != c[0].logprobs)


def test_device_map_auto_equals_a_plain_load(tiny_dir):
    plain = ms.load(str(tiny_dir))
    mapped = ms.load(str(tiny_dir), device_map="auto")      # CPU only here: one device
    assert mapped.device == plain.device
    x = ["The quick brown fox", "Alice met Bob"]
    torch.testing.assert_close(mapped.forward(x), plain.forward(x))
    a = plain.capture(x, sites=["resid_post.1"])["resid_post.1"]
    b = mapped.capture(x, sites=["resid_post.1"])["resid_post.1"]
    torch.testing.assert_close(a, b)


def test_device_map_that_does_not_fit_is_refused(tiny_dir):
    with pytest.raises(BadInputError, match="does not fit") as e:
        ms.load(str(tiny_dir), device_map="auto", max_memory={"cpu": "20KB"})
    assert "max_memory" in str(e.value)
    with pytest.raises(BadInputError, match="give one"):
        ms.load(str(tiny_dir), device="cpu", device_map="auto")
    with pytest.raises(BadInputError, match="disk"):
        ms.load(str(tiny_dir), device_map={"": "disk"})
