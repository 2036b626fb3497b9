"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024): BatchTopK codes, and every
nested prefix of the latents must reconstruct the input on its own, so early latents learn
general features and later ones refine them (less absorption of parents into children).

Loss: ``||y - y_hat||^2 + sum_{w in widths[:-1]} ||y - (f[:, :w] W_dec[:w] + b_dec)||^2`` (the
outer level is the ordinary MSE; the same unweighted sum as sae_lens'
``MatryoshkaBatchTopKTrainingSAE``). ``SAEConfig.arch_params["widths"]``: increasing prefix
widths ending at n_latents; default n/16, n/8, n/4, n/2, n. Inference is BatchTopK's threshold
(a JumpReLU), so it exports to SAELens as ``jumprelu`` like batchtopk."""
from __future__ import annotations

from . import register
from .batchtopk import BatchTopK


def widths(cfg) -> list:
    """The prefix widths of a Matryoshka config (validated)."""
    n = cfg.n_latents
    w = list(cfg.arch_params.get("widths") or [])
    if not w:
        w = sorted({max(1, n >> s) for s in (4, 3, 2, 1)} | {n})
    return w


@register
class Matryoshka(BatchTopK):
    name = "matryoshka"
    doc = "BatchTopK codes; each nested prefix of latents (arch_params['widths']) reconstructs alone"

    def validate(self, cfg):
        super().validate(cfg)
        unknown = set(cfg.arch_params) - {"widths"}
        if unknown:
            raise ValueError(f"matryoshka arch_params has unknown key(s) {sorted(unknown)}; "
                             "known: widths")
        w = widths(cfg)
        if (any(not isinstance(v, int) or v <= 0 for v in w) or w != sorted(set(w))
                or w[-1] != cfg.n_latents):
            raise ValueError(f"matryoshka widths {w} must be increasing positive integers "
                             f"ending at n_latents={cfg.n_latents}")

    def run_name(self, cfg):
        return f"{self.name}{len(widths(cfg))}_n{cfg.n_latents}_k{cfg.k}"

    def extra_loss(self, sae, y, out):
        f, loss, prev = out["f"], None, 0
        dec = sae.b_dec.expand_as(y)
        for w in widths(sae.cfg)[:-1]:
            dec = dec + f[:, prev:w] @ sae.W_dec[prev:w]                       # (B, d_out)
            prev = w
            mse = (y - dec).pow(2).sum(-1).mean()
            loss = mse if loss is None else loss + mse
        return loss
