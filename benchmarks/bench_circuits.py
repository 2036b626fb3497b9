"""Benchmark: mindscope's attribution graph vs circuit-tracer 0.5.0 (its nnsight backend) on the
same prompt, model and transcoders (exported with ``export_circuit_tracer(backend="nnsight")``),
each in a fresh process: wall time of the attribution, peak RSS (VmHWM) and the RSS before it,
and agreement of the edges: Spearman rank correlation of the weights over the union of each
graph's top-K edges (nodes matched by identity), plus the relative L2 difference.

    python benchmarks/bench_circuits.py --model /work/runs_circuits/smollm2_hf \
        --transcoders /work/runs_circuits/plt --prompt "..." --out /work/runs_circuits/bench
    (--setup-peers creates benchmarks/.venvs/circuit-tracer)

The peer venv needs circuit-tracer==0.5.0 with nnsight<0.7 (0.8 moved modules it imports).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PEER = HERE / ".venvs" / "circuit-tracer" / "bin" / "python"


def run_ours(args) -> dict:
    """In this process (call it through a subprocess for a clean peak)."""
    import mindscope as ms
    from mindscope.circuits import GraphConfig, Transcoders, attribute, save_graph

    torch.set_num_threads(args.threads)
    lm = ms.load(str(args.model))
    lm.name = args.name or lm.name
    tc = Transcoders.load(args.transcoders)
    tc.cfg.model = lm.name
    before = _rss("VmRSS")
    prompt = json.loads(args.prompt) if args.prompt.startswith("[") else args.prompt
    g = attribute(lm, tc, prompt, GraphConfig(batch_size=args.batch, keep_mass=args.keep_mass,
                                                   max_feature_nodes=args.max_features or 10 ** 9),
                  progress=False)
    save_graph(g, args.out / "ms")
    return {"seconds": g.stats["seconds"], "peak_rss": _rss("VmHWM"), "rss_before": before,
            "n_nodes": g.n_nodes, "active_features": g.stats["active_features"],
            "edges_stored": g.stats["edges"]}


def _rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _keys(feats, L, T, logits):
    return ([("f", *map(int, f)) for f in feats] + [("e", l, p) for l in range(L) for p in range(T)]
            + [("t", p) for p in range(T)] + [("l", int(v)) for v in logits])


def compare(out: Path, top: int) -> dict:
    from safetensors.torch import load_file

    from mindscope.circuits import load_graph

    g = load_graph(out / "ms")
    ct = load_file(str(out / "ct" / "ct_graph.safetensors"))
    T, L = len(ct["input_tokens"]), g.n_layers
    assert ct["input_tokens"].tolist() == g.tokens, "the two tools tokenized differently"
    ck = _keys(ct["active_features"][ct["selected_features"]].tolist(), L, T, ct["logit_tokens"])
    mk = _keys(g.features.tolist(), L, T, g.logit_tokens)
    common = sorted(set(ck) & set(mk))
    ci = {k: i for i, k in enumerate(ck)}
    mi = {k: i for i, k in enumerate(mk)}
    ic = torch.tensor([ci[k] for k in common])
    im = torch.tensor([mi[k] for k in common])
    A_ct = ct["adjacency"][ic][:, ic]
    A_ms = g.dense()[im][:, im]
    n = A_ct.numel()
    sel = set(A_ct.abs().flatten().topk(min(top, n)).indices.tolist()) | set(
        A_ms.abs().flatten().topk(min(top, n)).indices.tolist())
    idx = torch.tensor(sorted(sel))
    a, b = A_ct.flatten()[idx], A_ms.flatten()[idx]

    def ranks(x):
        r = torch.empty_like(x)
        r[x.argsort()] = torch.arange(len(x), dtype=x.dtype)
        return r
    ra, rb = ranks(a), ranks(b)
    spearman = float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])
    top_ct = set(A_ct.abs().flatten().topk(min(top, n)).indices.tolist())
    top_ms = set(A_ms.abs().flatten().topk(min(top, n)).indices.tolist())
    return {"nodes_ct": len(ck), "nodes_ms": len(mk), "nodes_common": len(common),
            "top_k": top, "spearman_top_edges": spearman,
            "top_k_overlap": len(top_ct & top_ms) / max(1, len(top_ct)),
            "rel_l2": float((A_ct - A_ms).norm() / A_ct.norm().clamp(min=1e-30))}


def _make_tiny(args) -> list:
    """Tiny llama + random jumprelu transcoders under --out; returns the argv that uses them."""
    sys.path.insert(0, str(HERE.parent / "tests" / "circuits"))
    from conftest import random_transcoders

    from mindscope.testing import tiny_lm

    lm = tiny_lm("llama")
    lm.model.save_pretrained(args.out / "tiny_model")
    lm.tokenizer.save_pretrained(args.out / "tiny_model")
    random_transcoders(lm, activation="jumprelu").save(args.out / "tiny_tc")
    ids = [2] + lm.tokenizer("The quick brown fox jumps over the lazy dog",
                             add_special_tokens=False)["input_ids"]
    return ["--model", str(args.out / "tiny_model"), "--transcoders", str(args.out / "tiny_tc"),
            "--prompt", json.dumps(ids), "--out", str(args.out), "--keep-mass", "1.0",
            "--top", str(args.top)]


def _fix_tokenizer_config(model: Path) -> None:
    """transformers 5 writes tokenizer_class 'TokenizersBackend', which the peer's 4.57 lacks."""
    p = model / "tokenizer_config.json"
    d = json.loads(p.read_text())
    if d.get("tokenizer_class") == "TokenizersBackend":
        d["tokenizer_class"] = "PreTrainedTokenizerFast"
        p.write_text(json.dumps(d, indent=1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, help="HF model folder (both tools)")
    ap.add_argument("--transcoders", type=Path, help="mindscope transcoder folder")
    ap.add_argument("--prompt", help="text, or token ids as a JSON list")
    ap.add_argument("--tiny", action="store_true", help="the tiny random llama with random "
                    "jumprelu transcoders (written under --out): an exactness check")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", default="", help="model name recorded in the transcoders")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--keep-mass", type=float, default=0.9999)
    ap.add_argument("--max-features", type=int, default=0, help="0 = every active feature")
    ap.add_argument("--top", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, both tools")
    ap.add_argument("--rounds", type=int, default=1, help="alternating runs (ours, peer) x N; "
                    "the ratios are taken pair by pair, their median reported")
    ap.add_argument("--ours", action="store_true", help="(internal) run mindscope here")
    ap.add_argument("--setup-peers", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tiny and not args.ours:
        argv = _make_tiny(args)
        sys.argv = [sys.argv[0], *argv]
        args = ap.parse_args(argv)
    if args.ours:
        print(json.dumps(run_ours(args)))
        return
    if args.setup_peers and not PEER.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER.parents[1])], check=True)
        pip = [str(PEER.parent / "pip"), "install", "-q", "torch==2.13.0"]
        subprocess.run(pip, check=True)
        subprocess.run(pip + ["circuit-tracer==0.5.0", "nnsight>=0.6,<0.7"], check=True)
    import mindscope as ms
    from mindscope.circuits import Transcoders, export_circuit_tracer

    lm = ms.load(str(args.model))
    tc = Transcoders.load(args.transcoders)
    tc.cfg.model = lm.name
    export_circuit_tracer(tc, lm, args.out / "ct_tc", backend="nnsight")
    del lm
    _fix_tokenizer_config(args.model)
    pairs = []
    for _ in range(args.rounds):  # A B A B ...: the machine's drift hits both alike
        ours = json.loads(subprocess.run(
            [sys.executable, __file__, "--ours", *sys.argv[1:]], check=True, capture_output=True,
            text=True).stdout.strip().splitlines()[-1])
        r = subprocess.run([str(PEER), str(HERE / "peers" / "circuit_tracer_graph.py"),
                            str(args.model), str(args.out / "ct_tc"), args.prompt,
                            str(args.out / "ct"), str(args.max_features or "all"), str(args.batch),
                            str(args.threads)],
                           capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": str(args.threads)})
        if r.returncode:
            raise SystemExit(f"circuit-tracer failed: {r.stderr[-2000:]}")
        peer = json.loads(r.stdout.strip().splitlines()[-1])
        pairs.append({"mindscope": ours, "circuit_tracer": peer,
                      "speedup": peer["seconds"] / ours["seconds"],
                      "peak_ratio": ours["peak_rss"] / peer["peak_rss"],
                      "extra_ratio": (ours["peak_rss"] - ours["rss_before"]) /
                      max(1, peer["peak_rss"] - peer["rss_before"])})
        print(json.dumps({k: v for k, v in pairs[-1].items()}), flush=True)

    def med(k):
        return float(torch.tensor([p[k] for p in pairs]).median())
    res = {"prompt": args.prompt, "threads": args.threads, "rounds": pairs,
           "mindscope": pairs[-1]["mindscope"], "circuit_tracer": pairs[-1]["circuit_tracer"],
           "speedup": med("speedup"), "peak_ratio": med("peak_ratio"),
           "extra_ratio": med("extra_ratio"), "agreement": compare(args.out, args.top)}
    (args.out / "bench.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
