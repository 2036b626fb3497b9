"""Export transcoders in circuit-tracer's file layout, the only way for circuit-tracer to read
mindscope transcoders (mindscope's own files use prefixed tensor names that its loaders reject).

Per-layer transcoders: ``config.yaml`` + ``layer_{i}.safetensors`` with ``W_enc`` (n, d),
``W_dec`` (n, d), ``b_enc`` (n), ``b_dec`` (d), optionally ``activation_function.threshold``
(n, JumpReLU) and ``W_skip`` (d, d). Cross-layer transcoders: ``W_enc_{i}.safetensors`` (W_enc_i,
b_enc_i, b_dec_i, threshold_i) + ``W_dec_{i}.safetensors`` (W_dec_i: (n, L - i, d)).

circuit-tracer reads the MLP input at TransformerLens' ``blocks.L.ln2.hook_normalized`` =
x / rms(x), *before* the norm weight w, while mindscope's ``mlp_in.L`` = w * x / rms(x); so the
norm weight and the input scale are folded into the encoder (and the skip), the output scale
into the decoder:  W_enc' = s_in W_enc diag(w),  W_skip' = (s_in / s_out) W_skip diag(w),
W_dec' = W_dec / s_out,  b_dec' = b_dec / s_out.  Only relu and jumprelu transcoders can be
exported (circuit-tracer 0.5 has no TopK in its file loaders).

>>> # export_circuit_tracer(tc, lm, "tc_ct")  # then circuit_tracer.utils.hf_utils.load_transcoders
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..core import BadInputError, atomic_save_tensors, atomic_write_text
from ._splice import check_transcoders
from ._transcoders import Transcoders


def export_circuit_tracer(tc: Transcoders, lm, out, scan: str = "",
                          backend: str = "transformerlens") -> Path:
    """Write ``tc`` (transcoders of ``lm``) into folder ``out`` in circuit-tracer's layout, for
    its TransformerLens backend (input hook ``ln2.hook_normalized``, the norm weight folded in)
    or its nnsight backend (``mlp.hook_in`` = the post-attention norm's output = our mlp_in)."""
    if backend not in ("transformerlens", "nnsight"):
        raise ValueError("backend must be 'transformerlens' or 'nnsight'")
    check_transcoders(lm, tc)
    c = tc.cfg
    if c.activation not in ("relu", "jumprelu"):
        raise BadInputError(f"transcoders ({c.model})", f"use activation {c.activation!r}; "
                                                        "circuit-tracer loads relu and jumprelu only",
                            "train with --activation jumprelu (or relu) to compare with it")
    if c.kind == "clt" and c.skip:
        raise BadInputError(f"transcoders ({c.model})", "are a CLT with skip terms, which "
                                                        "circuit-tracer's CLT files cannot hold",
                            "train the CLT without --skip")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    L = c.n_layers
    w = [lm.block(l).post_attention_layernorm.weight.detach().float() if backend ==
         "transformerlens" else torch.ones(c.d_model) for l in range(L)]
    th = tc.thresholds()
    with torch.no_grad():
        enc = [tc.encoder_vectors(l) * w[l] for l in range(L)]      # (n, d) each
        b_dec = tc.bias_out()                                          # (L, d)
        files = []
        for l in range(L):
            if c.kind == "plt":
                t = {"W_enc": enc[l], "W_dec": tc.decoder_vectors(l)[:, 0], "b_enc": tc.b_enc[l],
                     "b_dec": b_dec[l]}
                if th is not None:
                    t["activation_function.threshold"] = th[l]
                if c.skip:
                    t["W_skip"] = tc.skip_matrix(l) * w[l]
                name = f"layer_{l}.safetensors"
                atomic_save_tensors(out / name, t)
                files.append(name)
            else:
                t = {f"W_enc_{l}": enc[l], f"b_enc_{l}": tc.b_enc[l], f"b_dec_{l}": b_dec[l]}
                if th is not None:
                    t[f"threshold_{l}"] = th[l]
                atomic_save_tensors(out / f"W_enc_{l}.safetensors", t)
                atomic_save_tensors(out / f"W_dec_{l}.safetensors",
                                    {f"W_dec_{l}": tc.decoder_vectors(l)})
    kind = "transcoder_set" if c.kind == "plt" else "cross_layer_transcoder"
    lines = [f"model_name: {c.model}", f"model_kind: {kind}",
             f"scan: {scan or 'mindscope-' + c.kind}",
             "feature_input_hook: " + ("ln2.hook_normalized" if backend == "transformerlens"
                                       else "mlp.hook_in"),
             "feature_output_hook: hook_mlp_out"]
    if files:
        lines.append("transcoders:")
        lines += [f"  - {out.resolve() / f}" for f in files]
    atomic_write_text(out / "config.yaml", "\n".join(lines) + "\n")
    return out
