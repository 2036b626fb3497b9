"""The architecture registry: every behaviour of an architecture comes from its one file."""
import re
from pathlib import Path

import pytest
import torch

from mindscope.sae import SAE, SAEConfig, TensorBatches, TrainConfig, Trainer, archs, load_any
from mindscope.sae.archs import Arch

SAE_SRC = Path(__file__).resolve().parents[2] / "src" / "mindscope" / "sae"


def test_no_arch_string_comparisons_outside_the_registry():
    """A new architecture must be one file: nothing outside sae/archs/ branches on cfg.arch."""
    hits = []
    for f in SAE_SRC.rglob("*.py"):
        if "archs" in f.parts:
            continue
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"\barch\s*(==|!=|in\s*\()", line) and "architecture" not in line:
                if re.search(r"c(fg)?\.arch|self\.cfg\.arch", line):
                    hits.append(f"{f.name}:{i}: {line.strip()}")
    assert hits == []


def test_registry_names_and_errors():
    assert archs.names()[:4] == ("relu", "topk", "batchtopk", "jumprelu")
    assert archs.from_saelens("standard").name == "relu"
    assert archs.from_saelens("nonsense") is None
    with pytest.raises(ValueError, match="unknown SAE architecture 'nope'.*topk"):
        archs.get("nope")
    with pytest.raises(ValueError, match="not one of"):
        SAEConfig("nope", 4, 8)


def test_a_new_architecture_is_one_class():
    """Register a toy architecture (soft threshold with a learned shift) and train, save, load."""
    @archs.register
    class Shrink(Arch):
        name = "test_shrink"
        sparsity = "l1_coef"

        def default_lr(self, cfg):
            return 1e-3

        def tensors(self, cfg):
            return {"shift": ((cfg.n_latents,), True)}

        def init_tensors(self, sae, dtype):
            sae.shift = torch.nn.Parameter(torch.full((sae.cfg.n_latents,), 0.1, dtype=dtype))

        def encode(self, sae, z):
            return (z - sae.shift).relu()

        def penalty(self, sae, out):
            return out["f"].sum(-1).mean()

    try:
        cfg = SAEConfig("test_shrink", 8, 16)
        assert TrainConfig(steps=1).resolved_lr(cfg) == 1e-3
        x = torch.randn(512, 8)
        tc = TrainConfig(steps=20, l1_coef=0.01, sparsity_warmup=0.0)
        tr = Trainer([(cfg, tc)], progress=False)
        [sae] = tr.fit(TensorBatches(x, 64, seed=0))
        assert tr.slots[0].name.startswith("00_test_shrink_n16_lr")
        assert not torch.allclose(sae.shift, torch.full((16,), 0.1))          # it was trained
        z = sae.pre_acts(x[:5])
        assert torch.equal(sae.encode(x[:5]), (z - sae.shift).relu())
    finally:
        archs._REGISTRY.pop("test_shrink", None)


@pytest.mark.parametrize("name", ["relu", "topk", "batchtopk", "jumprelu"])
def test_defaults_come_from_the_registry(name):
    spec = archs.get(name)
    cfg = SAEConfig(name, 16, 64, k=4)
    tc = TrainConfig(steps=1)
    assert tc.resolved_lr(cfg) == spec.default_lr(cfg)
    assert cfg.b_dec_in == spec.b_dec_in
    assert set(SAE(cfg).state_dict()) == {"W_enc", "b_enc", "W_dec", "b_dec", *spec.tensors(cfg)}
