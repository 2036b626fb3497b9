"""Runs inside a peer venv: proves mindscope's SAELens / sparsify folders with the real packages.
Prints one JSON object of max errors (relative to the largest |value|, "_err"; absolute in
"max_abs_err") and checks, and exits 1 if any is above 1e-5 or an active set differs.

    PYTHONPATH=src benchmarks/.venvs/saelens/bin/python benchmarks/peers/interop_check.py saelens
    PYTHONPATH=src benchmarks/.venvs/sparsify/bin/python benchmarks/peers/interop_check.py sparsify

Each direction uses random weights (non-zero biases, input scale 1.7, non-unit decoder rows
where the format allows them) and the same random activations on both sides:
* mindscope -> peer: ``export_saelens`` / ``export_sparsify`` then the peer's own loader
  (``sae_lens.SAE.load_from_disk``, ``sparsify.SparseCoder.load_from_disk``); compare codes and
  reconstructions with mindscope's ``encode``/``decode``.
* peer -> mindscope: the peer's own ``save_model`` / ``save_to_disk`` then ``load_any``.
"""
import json
import sys
import tempfile
from pathlib import Path

import torch

from mindscope.sae import SAE, SAEConfig, export_saelens, export_sparsify, load_any

TOL = 1e-5
torch.manual_seed(0)


def rand_sae(arch, d=64, n=256, k=8, scale=1.7, unit=False):
    sae = SAE(SAEConfig(arch, d, n, k=k, scale_in=scale, scale_out=scale, model="toy",
                        site="resid_post.3"))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_().div_(d ** 0.5)                     # O(1) codes and reconstructions
        if unit:
            sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True))
        if arch == "jumprelu":
            sae.log_threshold.copy_(torch.rand(n).log())
        if arch == "batchtopk":
            sae.threshold.copy_(torch.rand(n))
    return sae


def err(a, b):
    """Max abs error relative to the largest |value| (float32 folding of the scale constant
    rounds at ~1e-7 of the magnitude); the absolute error is recorded too."""
    a, b = a.detach().double(), b.detach().double()
    d = float((a - b).abs().max())
    ABS.append(d)
    return d / max(float(b.abs().max()), 1e-12)


ABS: list = []


def same_sets(fa, fb):
    """Fraction of rows whose active latent sets agree."""
    return float(((fa != 0) == (fb != 0)).all(-1).float().mean())


def saelens(out: dict, tmp: Path):
    import sae_lens
    from sae_lens import SAE as LensSAE
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from mindscope.core import BadInputError
    out["sae_lens"] = sae_lens.__version__
    x = torch.randn(512, 64) * 3
    for arch in ("relu", "topk", "jumprelu", "batchtopk"):
        ours = rand_sae(arch)
        export_saelens(ours, tmp / f"to_{arch}")
        peer = LensSAE.load_from_disk(str(tmp / f"to_{arch}"))
        fo, fp = ours.encode(x), peer.encode(x)
        out[f"ms->saelens {arch}"] = {
            "class": type(peer).__name__, "code_err": err(fo, fp), "rec_err": err(ours.decode(fo), peer.decode(fp)),
            "same_active_set": same_sets(fo, fp), "hook_name": peer.cfg.metadata.hook_name,
            "model_name": peer.cfg.metadata.model_name}
    meta = dict(model_name="toy", hook_name="blocks.3.hook_resid_post", sae_lens_version=sae_lens.__version__)
    peers = {
        "topk rescale=False": TopKSAE(TopKSAEConfig(d_in=64, d_sae=256, k=8, rescale_acts_by_decoder_norm=False)),
        "topk rescale=True": TopKSAE(TopKSAEConfig(d_in=64, d_sae=256, k=8, rescale_acts_by_decoder_norm=True)),
        "standard": StandardSAE(StandardSAEConfig(d_in=64, d_sae=256)),
        "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=64, d_sae=256)),
    }
    for name, peer in peers.items():
        for k, v in meta.items():
            peer.cfg.metadata[k] = v
        with torch.no_grad():
            for pn, p in peer.named_parameters():
                p.normal_().div_(8)
                if pn == "W_dec":
                    p.mul_(torch.rand(256, 1) * 3 + 0.2)     # decoder rows of norm 0.2..3.2 x 8
                if pn == "threshold":
                    p.copy_(torch.rand(256))
        d = tmp / f"from_{name.replace(' ', '_').replace('=', '')}"
        peer.save_model(str(d))
        ours = load_any(d)
        fo, fp = ours.encode(x), peer.encode(x)
        out[f"saelens->ms {name}"] = {"code_err": err(fo, fp), "rec_err": err(ours.decode(fo), peer.decode(fp)),
                                      "same_active_set": same_sets(fo, fp), "site": ours.cfg.site}
    # an unknown key is refused, not dropped
    cfg = json.loads((tmp / "to_topk" / "cfg.json").read_text())
    cfg["some_future_option"] = True
    (tmp / "to_topk" / "cfg.json").write_text(json.dumps(cfg))
    try:
        load_any(tmp / "to_topk")
        out["unknown key refused"] = False
    except BadInputError as e:
        out["unknown key refused"] = str(e)[:160]


def sparsify(out: dict, tmp: Path):
    import importlib.metadata as md
    from sparsify import SparseCoder, SparseCoderConfig
    out["eai-sparsify"] = md.version("eai-sparsify")
    x = torch.randn(512, 64) * 3
    ours = rand_sae("topk", unit=True)            # what our trainer makes: unit rows, scale 1.7
    export_sparsify(ours, tmp / "to")
    peer = SparseCoder.load_from_disk(tmp / "to", device="cpu")
    enc = peer.encode(x)
    fo = ours.encode(x)
    fp = torch.zeros_like(fo).scatter(-1, enc.top_indices, enc.top_acts)
    c0 = 1 / ours.cfg.scale_out                      # export multiplies codes by the raw row norm
    rec_p = peer.decode(enc.top_acts, enc.top_indices)
    r = {"code_err (peer vs ours*c)": err(fo * c0, fp), "rec_err": err(ours.decode(fo), rec_p),
         "same_active_set": same_sets(fo, fp), "normalize_decoder": peer.cfg.normalize_decoder,
         "max |1-|W_dec_i||": float((peer.W_dec.norm(dim=1) - 1).abs().max())}
    peer.set_decoder_norm_to_unit_norm()             # what sparsify fine-tuning does each step
    r["rec_err after sparsify renormalises"] = err(ours.decode(fo), peer.decode(*peer.encode(x)[:2]))
    out["ms->sparsify topk"] = r
    cfg = SparseCoderConfig(num_latents=256, k=8)
    peer = SparseCoder(64, cfg, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        for p in peer.parameters():
            p.normal_().div_(8)
        peer.set_decoder_norm_to_unit_norm()
    peer.save_to_disk(tmp / "layers.3")
    ours = load_any(tmp / "layers.3")
    enc = peer.encode(x)
    fo = ours.encode(x)
    fp = torch.zeros_like(fo).scatter(-1, enc.top_indices, enc.top_acts)
    out["sparsify->ms topk"] = {"code_err": err(fo, fp),
                                "rec_err": err(ours.decode(fo), peer.decode(enc.top_acts, enc.top_indices)),
                                "same_active_set": same_sets(fo, fp), "site": ours.cfg.site}


def main():
    which = sys.argv[1]
    out = {"torch": torch.__version__}
    with tempfile.TemporaryDirectory() as t:
        {"saelens": saelens, "sparsify": sparsify}[which](out, Path(t))
    out["max_abs_err (all comparisons)"] = max(ABS)
    print(json.dumps(out, indent=1))
    bad = [k for k, v in out.items() if isinstance(v, dict) and
           (any(e > TOL for n, e in v.items() if "err" in n) or v.get("same_active_set", 1) < 1)]
    if bad or out.get("unknown key refused") is False:
        print("FAILED:", bad, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
