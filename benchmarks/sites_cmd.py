"""One whole command reading every attention pattern of layer 15 for 8 x 128 tokens of
SmolLM2-135M-Instruct, for ``farm-bench --vs`` (process start, imports and model load included):

    farm-bench -n 5 --timeout 600 --vs 'python benchmarks/sites_cmd.py hf' -- python benchmarks/sites_cmd.py mindscope

``mindscope``: ``lm.capture(windows, "attn_pattern.15")`` (eager kernel on layer 15 only, early
stop after block 15); ``hf``: the same model loaded with HF eager attention and
``output_attentions=True`` (every layer's weights, the whole model), keeping layer 15's."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_core import windows  # noqa: E402

import mindscope as ms  # noqa: E402


def main(method: str) -> None:
    lm = ms.load()
    b = windows(lm, 8, 128)
    if method == "mindscope":
        lm.capture(b, "attn_pattern.15", batch_size=4, progress=False)
        return
    lm.model.config._attn_implementation = "eager"
    kept = []
    with torch.no_grad():
        for a in range(0, 8, 4):
            out = lm.model(input_ids=b.input_ids[a:a + 4], output_attentions=True)
            kept.append(out.attentions[15])


if __name__ == "__main__":
    main(sys.argv[1])
