"""The worked example of docs/circuits.md on SmolLM2-135M-Instruct, stage by stage (each stage
resumes or skips when its output exists):

    python benchmarks/circuits_smollm2.py harvest   # all layers' mlp_in/mlp_out, one pass
    python benchmarks/circuits_smollm2.py train     # per-layer transcoders (all 30 layers)
    python benchmarks/circuits_smollm2.py metrics   # FVU per layer, CE spliced, replacement
    python benchmarks/circuits_smollm2.py graph     # graph of the capital-city prompt + checks
    python benchmarks/circuits_smollm2.py memory    # peak memory vs prompt length

Outputs go to --root (default /work/runs_circuits); results.json collects the numbers.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

PROMPT = "Fact: the capital of the state containing Dallas is"
TEXTS = ["The capital of France is Paris, and the capital of Germany is Berlin.",
         "Alice went to the market to buy bread, milk and eggs for breakfast.",
         "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
         "The mitochondria is the powerhouse of the cell; it makes ATP from glucose."]


def eval_texts(n: int = 8, chars: int = 200) -> list:
    """``n`` text documents spread over the second half of the default corpus (the harvest
    read its first ~100k tokens), cut to ``chars`` characters: the CE/KL evaluation set."""
    from mindscope.activations import open_corpus
    docs = [d.text for d in open_corpus("default") if d.text and len(d.text) >= chars]
    half = docs[len(docs) // 2:]
    return [half[i * len(half) // n][:chars] for i in range(n)]


def _status(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _results(root: Path) -> dict:
    p = root / "results.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _save(root: Path, key: str, val) -> None:
    r = _results(root)
    r[key] = val
    (root / "results.json").write_text(json.dumps(r, indent=1))


def plot_graph(d: dict, path: Path, n_layers: int) -> None:
    """The pruned graph as a PNG: x = token position, y = layer (E at the bottom, logits on
    top), edge width ~ |weight| (blue +, red -), features orange, errors grey, logits purple."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    toks = d["metadata"]["prompt_tokens"]
    pos = {}
    cells: dict = {}
    for n in d["nodes"]:
        y = -1 if n["layer"] == "E" else int(n["layer"])
        k = (n["ctx_idx"], y)
        cells[k] = cells.get(k, 0) + 1
        pos[n["node_id"]] = (n["ctx_idx"] + 0.12 * (cells[k] - 1), y, n["feature_type"])
    fig, ax = plt.subplots(figsize=(max(8, len(toks) * 0.9), 7))
    from matplotlib.collections import LineCollection

    wmax = max((abs(link["weight"]) for link in d["links"]), default=1.0)
    segs = [[pos[k["source"]][:2], pos[k["target"]][:2]] for k in d["links"]]
    ax.add_collection(LineCollection(
        segs, colors=["#2b6cb0" if k["weight"] > 0 else "#c53030" for k in d["links"]],
        linewidths=[0.2 + 2.5 * abs(k["weight"]) / wmax for k in d["links"]], alpha=0.4, zorder=1))
    colors = {"cross layer transcoder": "#f6ad55", "mlp reconstruction error": "#a0aec0",
              "embedding": "#68d391", "logit": "#9f7aea"}
    for x, y, kind in pos.values():
        ax.scatter([x], [y], s=30 if kind != "logit" else 60, c=colors[kind],
                   marker="s" if kind == "mlp reconstruction error" else "o", zorder=2,
                   edgecolors="#333", linewidths=0.4)
    ax.set_xticks(range(len(toks)), [t.replace("\n", "\\n") for t in toks], rotation=45, ha="right")
    ax.set_yticks([-1, 0, n_layers // 2, n_layers - 1, n_layers + 1],
                  ["emb", "L0", f"L{n_layers // 2}", f"L{n_layers - 1}", "logit"])
    ax.set_title(d["metadata"]["prompt"][:80])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_layers(res: dict, names: list, path: Path) -> None:
    """Per-layer FVU, L0, dead fraction and KL (layer spliced alone) of each transcoder set."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("fvu", "FVU of mlp_out (held-out)"), ("l0", "L0 (active latents / token)"),
            ("dead", "dead fraction (held-out rows)"), ("kl_spliced", "KL, this layer spliced (nats)")]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for ax, (k, title) in zip(axes, keys):
        for n in names:
            m = res.get(f"metrics_{n}")
            if not m:
                continue
            ys = [x.get(k) for x in m["layers"]]
            ax.plot(range(len(ys)), [float("nan") if y is None else y for y in ys], marker=".",
                    label=n)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("layer")
        if k in ("kl_spliced", "l0"):
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def tables(res: dict, names: list) -> str:
    """Markdown tables for docs/circuits.md from results.json: one summary row per transcoder
    set, then per layer FVU / L0 / dead / KL of each set."""
    out = ["| set | kind | latents | rows trained | train time | FVU (mean) | L0 (mean/layer) "
           "| dead (mean) | CE clean / all spliced | KL all spliced | replacement (CE) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        m, t = res.get(f"metrics_{n}"), res.get(f"train_{n}", {})
        if not m:
            continue
        ly = m["layers"]
        mean = lambda k: sum(x[k] for x in ly) / len(ly)  # noqa: E731
        cfg, st = t.get("cfg", {}), t.get("settings", {})
        out.append(f"| {n} | {cfg.get('kind', '?')} {cfg.get('activation', '')} | "
                   f"{cfg.get('n_latents', '?')} | {st.get('steps', 0) * st.get('batch_size', 0):,} "
                   f"| {t.get('seconds', 0) / 60:.0f} min | {mean('fvu'):.3f} | {mean('l0'):.1f} | "
                   f"{mean('dead'):.3f} | {m['ce_clean']:.3f} / {m['ce_spliced']:.3f} | "
                   f"{m['kl_spliced']:.3f} | {m['replacement_score']:.3f} |")
    have = [n for n in names if res.get(f"metrics_{n}")]
    out += ["", "| layer | " + " | ".join(f"{n} FVU | {n} L0 | {n} dead | {n} KL" for n in have)
            + " |", "|---|" + "---|---|---|---|" * len(have)]
    L = len(res[f"metrics_{have[0]}"]["layers"]) if have else 0
    for l in range(L):
        cells = []
        for n in have:
            x = res[f"metrics_{n}"]["layers"][l]
            cells.append(f"{x['fvu']:.3f} | {x['l0']:.1f} | {x['dead']:.3f} | "
                         f"{x.get('kl_spliced', float('nan')):.4f}")
        out.append(f"| {l} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _check(lm, tc, g, d, pr, root, name):
    from mindscope import circuits as C

    plot_graph(d, root / f"graph_{name}" / "capital.png", lm.n_layers)
    ids = C.prepare_ids(lm, PROMPT)
    checks = {m: C.check_interventions(lm, tc, g, ids, n=20, mode=m) for m in ("zero", "clamp")}
    out = {"stats": g.stats, "scores": g.scores(), "n_nodes": g.n_nodes,
           "pruned_nodes": int(pr.nodes.sum()), "pruned_edges": int(pr.edges.sum()),
           "logits": list(zip(g.logit_strs, g.logit_probs.tolist())),
           "interventions": {m: {k: v for k, v in c.items() if k != "rows"}
                             for m, c in checks.items()},
           "intervention_rows": {m: c["rows"] for m, c in checks.items()}}
    _save(root, f"graph_{name}", out)
    print(json.dumps({k: v for k, v in out.items() if k != "intervention_rows"}, indent=1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("stage")
    ap.add_argument("--root", type=Path, default=Path("/work/runs_circuits"))
    ap.add_argument("--tokens", type=int, default=80_000)
    ap.add_argument("--latents", type=int, default=1024)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--arch", default="jumprelu")
    ap.add_argument("--skip", action="store_true")
    ap.add_argument("--name", default="plt")
    ap.add_argument("--T", type=int, default=0)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--kind", default="plt")
    ap.add_argument("--sparsity", type=float, default=3e-3)
    ap.add_argument("--threshold-init", type=float, default=0.001)
    ap.add_argument("--bandwidth", type=float, default=0.001)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-features", type=int, default=128)
    ap.add_argument("--Ts", default="8,16,32,64,128", help="memory: prompt lengths")
    ap.add_argument("--mfs", default="128,1024", help="memory: max_feature_nodes values")
    ap.add_argument("--names", default="plt,plt2k,clt")
    ap.add_argument("--png", default="docs/img/circuits_layers.png")
    args = ap.parse_args()
    if args.stage == "plot":  # per-layer metrics of --names (comma list) -> --png, no model
        plot_layers(_results(args.root), args.names.split(","), Path(args.png))
        print(tables(_results(args.root), args.names.split(",")))
        return
    import mindscope as ms
    from mindscope import circuits as C

    root = args.root
    root.mkdir(parents=True, exist_ok=True)
    lm = ms.load("smollm2-135m-instruct")
    store = root / "acts"
    if args.stage == "harvest":
        t = time.perf_counter()
        C.harvest_mlp(lm, store, n_tokens=args.tokens, store_dtype="bfloat16", shard_tokens=8192)
        _save(root, "harvest", {"tokens": args.tokens, "seconds": time.perf_counter() - t})
    elif args.stage == "train":
        cfg = C.TranscoderConfig(lm.n_layers, lm.d_model, args.latents, k=args.k, kind=args.kind,
                                 activation=args.arch, skip=args.skip,
                                 threshold_init=args.threshold_init, bandwidth=args.bandwidth)
        st = C.TrainSettings(steps=args.steps, batch_size=args.batch, lr=args.lr if args.arch !=
                             "topk" else None, sparsity_coef=args.sparsity, checkpoint_every=25,
                             dtype=args.dtype)
        t = time.perf_counter()
        C.train_transcoders(store, root / args.name, cfg, st)
        _save(root, f"train_{args.name}", {"cfg": cfg.to_dict(), "settings": vars(st),
                                           "seconds": time.perf_counter() - t})
    elif args.stage == "metrics":
        from mindscope.activations import ActivationStore
        tc = C.Transcoders.load(root / args.name)
        t = time.perf_counter()
        m = C.transcoder_metrics(lm, tc, eval_texts(), store=ActivationStore.open(store),
                                 per_layer_zero=False)
        m["seconds"] = time.perf_counter() - t
        _save(root, f"metrics_{args.name}", m)
        print(json.dumps({k: v for k, v in m.items() if k != "layers"}, indent=1))
        print([round(x["fvu"], 3) for x in m["layers"]])
    elif args.stage == "graph":
        tc = C.Transcoders.load(root / args.name)
        g = C.attribute(lm, tc, PROMPT, C.GraphConfig(batch_size=64, max_feature_nodes=1024))
        C.save_graph(g, root / f"graph_{args.name}")
        pr = C.prune(g, 0.8, 0.98)
        d = C.graph_json(g, pr, slug="capital")
        (root / f"graph_{args.name}" / "capital.json").write_text(json.dumps(d))
        _check(lm, tc, g, d, pr, root, args.name)
    elif args.stage == "check":  # plot + interventions of a saved graph
        tc = C.Transcoders.load(root / args.name)
        g = C.load_graph(root / f"graph_{args.name}")
        d = json.loads((root / f"graph_{args.name}" / "capital.json").read_text())
        _check(lm, tc, g, d, C.prune(g, 0.8, 0.98), root, args.name)
    elif args.stage == "memory":  # one fresh process per size: peak RSS is per process
        if args.T:
            print(json.dumps(_memory_point(lm, C.Transcoders.load(root / args.name), args)))
            return
        rows = []
        for T in map(int, args.Ts.split(",")):
            for mf in map(int, args.mfs.split(",")):
                r = subprocess.run([sys.executable, __file__, "memory", "--T", str(T), "--name",
                                    args.name, "--root", str(root), "--max-features", str(mf)],
                                   capture_output=True, text=True)
                if r.returncode:
                    raise SystemExit(r.stderr[-2000:])
                rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
        _save(root, f"memory_{args.name}", rows)


def _memory_point(lm, tc, args) -> dict:
    """One prompt of args.T tokens: the weights are made resident first (a forward, every
    transcoder weight read), then VmHWM is reset, so the RSS growth is the attribution's own;
    then the same graph again under TensorPeak (the tensor bytes counted exactly)."""
    import gc

    from mindscope import circuits as C

    text = " ".join(TEXTS * 20)
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"][:args.T - 1]
    prompt = lm.tokenizer.decode(ids)
    cfg = C.GraphConfig(batch_size=64, max_feature_nodes=args.max_features)
    C.attribute(lm, tc, "Warm up the weights.", C.GraphConfig(max_feature_nodes=8),
                progress=False)
    with torch.no_grad():
        float(sum(p.float().sum() for p in tc.parameters()))
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
        fh.write("5")
    before = _status("VmRSS")
    g = C.attribute(lm, tc, prompt, cfg, progress=False)
    peak = _status("VmHWM")
    st = g.stats
    del g
    gc.collect()
    with C.TensorPeak() as tp:
        C.attribute(lm, tc, prompt, cfg, progress=False)
    return {"T": st["T"], "max_features": args.max_features, "seconds": st["seconds"],
            "features": st["active_features"], "edges": st["edges"],
            "edges_kept": st["edges_kept"], "rss_before": before, "rss_growth": peak - before,
            "tensor_peak": tp.peak, **{k: st[k] for k in st if k.startswith("estimate")}}

if __name__ == "__main__":
    main()
