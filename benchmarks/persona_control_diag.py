"""Diagnostic of the persona positive control (docs/experiments/persona.md): each planted run's
held-out turns projected on the axis the control measures with (the UNTOUCHED model's axis at
the same seed, a fixed reference) and on the axis the planted model builds for itself (the
protocol's per-model recipe, saved by the run as own_assistant_axis.safetensors): the
per-model-axis finding, on the same transcripts. Run after the control (runs/controls/persona):

    /work/wt/heavy python benchmarks/persona_control_diag.py [CONTROL_DIR]
"""
import json
import sys
from pathlib import Path

import torch

import mindscope as ms
from mindscope.experiments.persona import control as C
from mindscope.experiments.persona.data import load_roles
from mindscope.experiments.persona.effects import _turn_masks
from mindscope.experiments.persona.monitor import AXIS_FILE, OWN_AXIS_FILE
from mindscope.core import VectorSet
from mindscope.runs import write_json

root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/controls/persona")
base = ms.load()
factors = C.load_factors(root / "persona-lora")
system = load_roles()["default_system_prompts"][0]
out = {}
for run in sorted(root.glob("planted-*")):
    strength = float(run.name[8:])
    lm = C.apply_lora(base, factors, strength, "planted")
    for res_file in sorted(run.glob("seed*/results.json")):
        r = json.loads(res_file.read_text())
        L = r["drift"]["layer"]
        site = f"resid_post.{L}"
        trs = [t for t in r["drift"]["transcripts"]
               if t["mode"] == "default" and t["set"] in (C.TRIGGERED, C.DECOY)]
        full = [lm.chat(t["messages"], system=system, add_generation_prompt=False) for t in trs]
        cap = lm.capture(full, sites=[site], positions="all", dtype=torch.float32, batch_size=16)
        masks = _turn_masks(lm, full)
        for which, f in (("fixed (untouched run's axis)", AXIS_FILE),
                         ("own (rebuilt from the planted model)", OWN_AXIS_FILE)):
            ax = VectorSet.load(res_file.parent / f)
            u = ax.data[L].float() / ax.data[L].float().norm()
            proj = cap[site] @ u  # (N,)
            per = {}
            for k, t in enumerate(trs):
                sel = cap.row == k
                pos, pr = cap.pos[sel].tolist(), proj[sel]
                idx = [j for j, p in enumerate(pos) if p in masks[k][0]]
                per.setdefault(t["set"], []).append(float(pr[idx].mean()))
            ci = C.paired_ci([a - b for a, b in zip(per[C.DECOY], per[C.TRIGGERED])])
            key = f"x{strength:g} {res_file.parent.name}: {which}"
            out[key] = ci
            print(f"{key}: {ci['mean']:.2f} [{ci['lo']:.2f}, {ci['hi']:.2f}]", flush=True)
write_json(root / "diagnostic_axis.json", out)
