"""Run circuit-tracer (its nnsight backend, CPU, float32) on one prompt with transcoders exported
by ``mindscope circuits export --backend nnsight``; runs inside benchmarks/.venvs/circuit-tracer.

    python circuit_tracer_graph.py MODEL_DIR TC_DIR PROMPT OUT_DIR [max_feature_nodes] [batch] [threads]

Writes OUT_DIR/ct_graph.safetensors (adjacency, active/selected features, tokens, logits) and
prints one JSON line: seconds, peak RSS and the RSS before attribution."""
import json
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file


def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def main():
    model_dir, tc_dir, prompt, out = sys.argv[1:5]
    if prompt.startswith("["):  # token ids as JSON
        prompt = json.loads(prompt)
    max_feat = int(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[5] != "all" else None
    batch = int(sys.argv[6]) if len(sys.argv) > 6 else 64
    torch.set_num_threads(int(sys.argv[7]) if len(sys.argv) > 7 else 1)
    from circuit_tracer.attribution.attribute import attribute
    from circuit_tracer.replacement_model.replacement_model_nnsight import NNSightReplacementModel
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    cfg = yaml.safe_load(open(Path(tc_dir) / "config.yaml"))
    tcs = load_transcoder_set({i: p for i, p in enumerate(cfg["transcoders"])}, scan=cfg["scan"],
                              feature_input_hook=cfg["feature_input_hook"],
                              feature_output_hook=cfg["feature_output_hook"],
                              device=torch.device("cpu"), dtype=torch.float32,
                              lazy_encoder=False, lazy_decoder=False)
    model = NNSightReplacementModel.from_pretrained_and_transcoders(
        model_dir, tcs, device=torch.device("cpu"), dtype=torch.float32)
    before = rss("VmRSS")
    t = time.perf_counter()
    g = attribute(prompt, model, max_n_logits=10, desired_logit_prob=0.95, batch_size=batch,
                  max_feature_nodes=max_feat)
    dt = time.perf_counter() - t
    peak = rss("VmHWM")
    Path(out).mkdir(parents=True, exist_ok=True)
    save_file({"adjacency": g.adjacency_matrix.float().contiguous(),
               "active_features": g.active_features.long().contiguous(),
               "selected_features": g.selected_features.long().contiguous(),
               "activation_values": g.activation_values.float().contiguous(),
               "input_tokens": g.input_tokens.long().cpu().contiguous(),
               "logit_tokens": g.logit_token_ids.long().cpu().contiguous(),
               "logit_probs": g.logit_probabilities.float().cpu().contiguous()},
              str(Path(out) / "ct_graph.safetensors"))
    print(json.dumps({"seconds": dt, "peak_rss": peak, "rss_before": before,
                      "n_nodes": int(g.adjacency_matrix.shape[0]),
                      "active_features": int(g.active_features.shape[0])}))


if __name__ == "__main__":
    main()
