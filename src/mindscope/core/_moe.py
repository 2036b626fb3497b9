"""Mixture-of-experts sites (read-only): ``router.L`` the router logits (B, T, E) and
``expert_out.L`` every expert's output (B, T, E, d) before the routing weights, computed densely
from the experts' fused weights (gate_up_proj (E, 2I, d), down_proj (E, d, I)).

``mlp_out = sum over the top-k experts of weight * expert_out`` (plus the gated shared expert
where the family has one): see ``tests/core/test_families.py``."""
from __future__ import annotations

import torch


def _read_only(site: str):
    raise ValueError(f"{site} is read-only (its value is recomputed, not used by the model); "
                     "edit 'mlp_in', 'mlp_out' or a 'module:' site of the experts instead")


def expert_outputs(experts: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x (n, d) -> (n, E, d): every expert's output, unweighted."""
    gu = torch.einsum("nd,eid->nei", x, experts.gate_up_proj)  # (n, E, 2I)
    gate, up = gu.chunk(2, dim=-1)
    return torch.einsum("nei,edi->ned", experts.act_fn(gate) * up, experts.down_proj)


def install(disp, site: str, kind: str, layer: int):
    lm, fam = disp.lm, disp.lm.family_spec
    if kind == "router":
        def hook(module, args, output):
            logits = output[0] if isinstance(output, tuple) else output  # (B*T, E)
            run = disp.run
            if disp._dispatch(site, logits.view(run.B, run.T, -1)) is not None:
                _read_only(site)
        return lm.block_part(layer, fam.router).register_forward_hook(hook)

    experts = lm.block_part(layer, fam.experts)
    if not all(hasattr(experts, a) for a in ("gate_up_proj", "down_proj", "act_fn")):
        raise ValueError(f"expert_out: {type(experts).__name__} does not store fused expert "
                         "weights (gate_up_proj, down_proj); read 'module:' sites of the experts")

    def pre(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]  # (B, T, d)
        per = expert_outputs(experts, x.reshape(-1, x.shape[-1]))  # (B*T, E, d)
        if disp._dispatch(site, per.view(*x.shape[:2], *per.shape[1:])) is not None:
            _read_only(site)
    return lm.block_part(layer, fam.mlp).register_forward_pre_hook(pre, with_kwargs=True)
