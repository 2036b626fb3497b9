"""Diagnostic of the persona positive control (docs/experiments/persona.md): the planted model's held-out
turns (transcripts from runs/controls/persona) projected on the UNTOUCHED model's axis and on the
planted model's own axis. Run after the control: /work/wt/heavy python benchmarks/persona_control_diag.py"""
import json, math, statistics as st
import torch
import mindscope as ms
from mindscope.experiments.persona import control as C
from mindscope.experiments.persona.effects import _turn_masks
from mindscope.core import VectorSet

base = ms.load()
f = C.load_factors("runs/controls/persona/persona-lora")
out = {}
for strength in (1.0, 0.5):
    lm = C.apply_lora(base, f, strength, "planted")
    for seed in (0,):
        r = json.load(open(f"runs/controls/persona/planted-{strength:g}/seed{seed}/results.json"))
        trs = [t for t in r["drift"]["transcripts"] if t["mode"] == "default" and t["set"].startswith("control")]
        from mindscope.experiments.persona.data import load_roles
        sp = load_roles()["default_system_prompts"][0]
        full = [lm.chat(t["messages"], system=sp, add_generation_prompt=False) for t in trs]
        cap = lm.capture(full, sites=["resid_post.20"], positions="all", dtype=torch.float32, batch_size=16)
        masks = _turn_masks(lm, full)
        for axis_from in ("untouched", f"planted-{strength:g}"):
            ax = VectorSet.load(f"runs/controls/persona/{axis_from}/seed{seed}/assistant_axis.safetensors")
            u = ax.data[20].float(); u = u / u.norm()
            proj = cap["resid_post.20"] @ u
            per = {}
            for k, t in enumerate(trs):
                sel = cap.row == k
                pos, pr = cap.pos[sel].tolist(), proj[sel]
                idx = [j for j, p in enumerate(pos) if p in masks[k][0]]
                per.setdefault(t["set"][8:], []).append(float(pr[idx].mean()))
            d = [a - b for a, b in zip(per["decoy"], per["triggered"])]
            m, sd = st.mean(d), st.stdev(d)
            h = 2.069 * sd / math.sqrt(len(d))
            key = f"planted x{strength:g} seed{seed}, axis of {axis_from}"
            out[key] = {"decoy_minus_triggered": [m, m - h, m + h],
                        "mean": {k: st.mean(v) for k, v in per.items()}}
            print(key, out[key], flush=True)
json.dump(out, open("runs/controls/persona/diagnostic_axis.json", "w"), indent=1)
