import pytest


@pytest.fixture(scope="session")
def organism(tmp_path_factory):
    """A tiny organism (random llama, 3 biases, one held out) built once: (path, base_lm, org_lm)."""
    from mindscope.audit import OrganismConfig, build_organism
    from mindscope.testing import tiny_lm

    base = tiny_lm("llama")
    path = tmp_path_factory.mktemp("audit") / "organism"
    cfg = OrganismConfig.quick(n_biases=3, max_length=64, lr=3e-3, stage2_epochs=4)
    org = build_organism(base, path, cfg)
    return path, base, org.load()


@pytest.fixture(scope="session")
def tiny_sae(organism):
    """A small TopK SAE at resid_post.2 of the tiny organism, trained for a few steps."""
    from mindscope.sae import SAEConfig, TensorBatches, TrainConfig, Trainer

    _, _, lm = organism
    texts = ["The quick brown fox jumps over the lazy dog.", "Tell me about the ocean and music.",
             "def add(a, b): return a + b", "Alice met Bob in the garden. Yes No Ok."] * 4
    x = lm.capture(texts, sites="resid_post.2", positions="all")["resid_post.2"]
    cfg = SAEConfig("topk", lm.d_model, 128, k=8, model=lm.name, site="resid_post.2")
    [sae] = Trainer([(cfg, TrainConfig(steps=30))], progress=False).fit(TensorBatches(x, 64, seed=0))
    return sae.eval()
