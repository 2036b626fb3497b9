"""Every public path on CUDA, each against the same computation on the CPU (or HF itself):
capture, sampled and steered generate, harvest, every SAE architecture trained a few steps
(bf16 autocast on by default), eval and model metrics, feature analysis, baking, patching,
lenses, a protocol's quick run, device_map sharding and DDP (NCCL) when there are 2+ GPUs."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mindscope as ms
from mindscope.core import Add, Splice

DEV = os.environ.get("MINDSCOPE_TEST_DEVICE", "cuda")   # cpu: a dry run of the tests

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Alice met Bob in the garden."]
N_GPU = torch.cuda.device_count()


def cpu_copy(lm):
    from mindscope.core import LM

    return LM(copy.deepcopy(lm.model).to("cpu"), lm.tokenizer, lm.name)


def test_capture_equals_hf_hidden_states(gpu_lm):
    cap = gpu_lm.capture(TEXTS, sites=["resid_post.1", "resid_post.3"])
    b = gpu_lm.tokenize(TEXTS)
    with torch.no_grad():
        hs = gpu_lm.model(input_ids=b.input_ids.to(DEV), attention_mask=b.attention_mask.to(DEV),
                          output_hidden_states=True).hidden_states
    m = b.attention_mask.bool()
    torch.testing.assert_close(cap["resid_post.1"].float(), hs[2][m.to(DEV)].float().cpu(),
                               atol=1e-5, rtol=1e-4)


def test_sampled_generate_on_cuda_is_seeded(gpu_lm_bf16):
    a = gpu_lm_bf16.generate(TEXTS, max_new_tokens=8, temperature=0.8, seed=1, chat=False)
    b = gpu_lm_bf16.generate(TEXTS, max_new_tokens=8, temperature=0.8, seed=1, chat=False)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


def test_steered_generate_matches_cpu(gpu_lm):
    v = torch.randn(gpu_lm.d_model)                       # a CPU vector: it follows the model
    iv = Add("resid_post.1", v, 4.0)
    g = gpu_lm.generate(TEXTS, max_new_tokens=6, interventions=[iv], chat=False)
    c = cpu_copy(gpu_lm).generate(TEXTS, max_new_tokens=6, interventions=[iv], chat=False)
    assert [x.token_ids for x in g] == [x.token_ids for x in c]


def test_subspace_ablate_bf16_on_cuda(gpu_lm_bf16):
    from mindscope.core import Ablate

    basis = torch.randn(3, gpu_lm_bf16.d_model)
    with gpu_lm_bf16.intervene(Ablate("resid_post.1", basis, subspace=True)):
        cap = gpu_lm_bf16.capture(TEXTS, sites=["resid_post.1"])["resid_post.1"].float()
    q, _ = torch.linalg.qr(basis.T)
    assert float((cap @ q).abs().max()) < 0.05 * float(cap.abs().max())


def test_harvest_on_cuda_equals_cpu(gpu_lm, corpus_dir, tmp_path):
    from mindscope.activations import harvest

    kw = dict(sites="resid_post.1", corpus=corpus_dir, n_tokens=8 * 32, window=32,
              shard_tokens=64, progress=False)
    g = harvest(gpu_lm, tmp_path / "g", **kw)
    c = harvest(cpu_copy(gpu_lm), tmp_path / "c", **kw)
    for k in range(len(g.shards)):
        torch.testing.assert_close(torch.as_tensor(g.load("resid_post.1", k)),
                                   torch.as_tensor(c.load("resid_post.1", k)), atol=1e-4, rtol=1e-4)


ARCHS = [("topk", dict(k=4), {}), ("batchtopk", dict(k=4), {}), ("relu", {}, dict(l1_coef=0.5)),
         ("jumprelu", dict(bandwidth=0.1, threshold_init=0.5), dict(l0_coef=0.05))]


@pytest.mark.parametrize("arch,kw,tkw", ARCHS)
def test_every_sae_arch_trains_on_cuda(arch, kw, tkw):
    from mindscope.sae import SAEConfig, TensorBatches, TrainConfig, Trainer, evaluate

    x = torch.randn(2048, 32)
    tr = Trainer([(SAEConfig(arch, 32, 64, **kw), TrainConfig(steps=30, **tkw))], progress=False)
    assert tr.device.type == DEV and tr.slots[0].bf16 == (DEV == "cuda")   # bf16 by default
    [sae] = tr.fit(TensorBatches(x, batch_size=256, seed=0))
    assert sae.W_enc.device.type == DEV and tr.slots[0].since_fired.device.type == DEV
    m = evaluate(sae, [x[:512]])                                    # CPU batches follow the SAE
    assert 0 < m["fvu"] < 1.5 and torch.isfinite(sae.W_dec).all()


def test_cuda_training_matches_cpu_in_fp32():
    from mindscope.sae import SAEConfig, TensorBatches, TrainConfig, Trainer

    x = torch.randn(1024, 16)
    spec = [(SAEConfig("topk", 16, 32, k=4), TrainConfig(steps=10, bf16=False, seed=1))]
    [g] = Trainer(spec, progress=False, device=DEV).fit(TensorBatches(x, 128, seed=0))
    [c] = Trainer(spec, progress=False, device="cpu").fit(TensorBatches(x, 128, seed=0))
    torch.testing.assert_close(g.W_dec.cpu(), c.W_dec, atol=1e-4, rtol=1e-3)


def test_model_metrics_and_splice_on_cuda(gpu_lm):
    from mindscope.sae import SAE, SAEConfig, model_metrics

    sae = SAE(SAEConfig("relu", gpu_lm.d_model, 128, site="resid_post.1"))   # on the CPU
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.1), sae.W_dec.normal_(0, 0.1)
    m = model_metrics(gpu_lm, sae, TEXTS * 2, progress=False)
    assert sae.W_enc.device.type == DEV                          # followed the model
    c = model_metrics(cpu_copy(gpu_lm), copy.deepcopy(sae).cpu(), TEXTS * 2, progress=False)
    assert abs(m["ce_increase"] - c["ce_increase"]) < 1e-3


def test_feature_analysis_with_the_sae_on_cuda(gpu_lm, corpus_dir, tmp_path):
    from mindscope.activations import harvest
    from mindscope.features import analyze
    from mindscope.sae import SAEConfig, StoreBatches, TrainConfig, Trainer

    st = harvest(gpu_lm, tmp_path / "st", sites="resid_post.1", corpus=corpus_dir,
                 n_tokens=8 * 32, window=32, shard_tokens=64, progress=False)
    [sae] = Trainer([(SAEConfig("topk", gpu_lm.d_model, 64, k=4, site="resid_post.1"),
                      TrainConfig(steps=5))], progress=False).fit(StoreBatches(st, 64, split="all"))
    fs = analyze(sae, st, lm=gpu_lm, out=tmp_path / "features", progress=False)
    assert fs is not None and (tmp_path / "features" / "analysis.json").exists()


def test_bake_ablation_on_cuda_equals_hooks(gpu_lm):
    from mindscope.steering import ablate_direction, bake_ablation

    u = torch.randn(gpu_lm.d_model)
    baked = bake_ablation(gpu_lm, u)
    with gpu_lm.intervene(*ablate_direction(gpu_lm, u)):
        hooked = gpu_lm.forward(TEXTS)
    m = gpu_lm.tokenize(TEXTS).attention_mask.bool().to(hooked.device)   # real tokens only
    torch.testing.assert_close(baked.forward(TEXTS)[m], hooked[m], atol=1e-4, rtol=1e-4)


def test_patching_and_lenses_on_cuda(gpu_lm):
    import mindscope.causal as mc

    clean, corrupt = ["A fox met Bob. Alice", "A fox met Bob. Bob"], ["A dog met Bob. Alice",
                                                                     "A dog met Bob. Bob"]
    res = mc.activation_patch(gpu_lm, clean, corrupt, (" met", " the"), sites="resid_pre.*")
    ref = mc.activation_patch(cpu_copy(gpu_lm), clean, corrupt, (" met", " the"),
                              sites="resid_pre.*")
    torch.testing.assert_close(res.scores.cpu(), ref.scores, atol=1e-3, rtol=1e-3)
    lens = mc.logit_lens(gpu_lm, TEXTS, positions="last")
    assert lens is not None
    tl = mc.train_tuned_lens(gpu_lm, TEXTS, steps=3)
    assert next(tl.parameters()).device.type == DEV


def test_protocol_quick_run_on_cuda(gpu_lm, tmp_path):
    from mindscope.experiments import persona

    cfg = persona.Config.quick(n_roles=4, n_questions=1, default_questions=1, n_default_prompts=2,
                               max_new_tokens=4, steer_tokens=3, drift_tokens=3,
                               jailbreak_tokens=3, eval_items=2, eval_tokens=3, role_filter="none",
                               steer_strengths=(-0.5, 0.5))
    persona.run(gpu_lm, cfg, tmp_path)
    assert (tmp_path / "results.json").exists()


@pytest.mark.skipif(N_GPU < 2, reason=f"needs 2+ GPUs to shard over (this machine has {N_GPU})")
def test_device_map_shards_and_interventions_cross_devices(tiny_dir):
    one = ms.load(str(tiny_dir), device="cuda:0")
    two = ms.load(str(tiny_dir), device_map="auto", max_memory={0: "150KB", 1: "10GB"})
    assert len({str(v) for v in two.model.hf_device_map.values()}) >= 2
    v = torch.randn(one.d_model)
    ivs = [Add(f"resid_post.{L}", v, 2.0) for L in range(one.n_layers)]     # on both GPUs
    with one.intervene(*ivs):
        a = one.forward(TEXTS)
    with two.intervene(*ivs):
        b = two.forward(TEXTS)
    m = one.tokenize(TEXTS).attention_mask.bool().to(a.device)
    torch.testing.assert_close(b.to(a.device)[m], a[m], atol=1e-4, rtol=1e-4)
    g = two.generate(TEXTS, max_new_tokens=4, temperature=0.7, seed=0, interventions=ivs)
    assert len(g) == 2


@pytest.mark.skipif(N_GPU < 2, reason=f"DDP on NCCL needs 2+ GPUs (this machine has {N_GPU})")
def test_nccl_ddp_training_and_harvest(tiny_dir, corpus_dir, tmp_path):
    worker = Path(__file__).parent / "_ddp_worker.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", str(worker), str(tmp_path), str(tiny_dir),
                        str(corpus_dir)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    from mindscope.activations import ActivationStore

    st = ActivationStore.open(tmp_path / "store")
    assert st.manifest["world_size"] == 2
    assert (tmp_path / "sae" / "checkpoint.safetensors").exists()
