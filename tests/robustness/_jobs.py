"""Jobs that test_interrupt.py SIGKILLs: ``python _jobs.py JOB OUT THREADS [ARGS...]``.

Each job is slowed down (a sleep per unit of work) so a kill lands mid-run, and prints one
``P <n>`` line per unit of progress. The same settings (``*_KW``) serve the in-process
reference runs, so killed + resumed outputs can be compared with uninterrupted ones."""
import sys
import time

import torch

L = 32
HARVEST_KW = dict(sites="resid_post.0,resid_post.2", n_tokens=8 * L, window=L, batch_size=1,
                  shard_tokens=L, progress=False)


def progress(n, tag="P"):
    print(f"{tag} {n}", flush=True)


def train_specs():
    from mindscope.sae import SAEConfig, TrainConfig

    return [(SAEConfig("topk", 16, 64, k=4), TrainConfig(steps=24, dead_tokens=256, seed=1)),
            (SAEConfig("relu", 16, 32), TrainConfig(steps=24, seed=2))]


def train_data():
    from mindscope.sae import TensorBatches

    g = torch.Generator().manual_seed(0)
    return TensorBatches(torch.randn(2048, 16, generator=g), batch_size=64, seed=3)


def sweep_args():
    from mindscope.sae import SAEConfig, TrainConfig

    g = torch.Generator().manual_seed(5)
    held = [torch.randn(128, 16, generator=g)]
    return dict(heldout=held, base=SAEConfig("topk", 16, 32, k=4),
                train=TrainConfig(steps=1, seed=4, dead_tokens=256), n_latents=[32, 64],
                tokens=[768], lrs=[1e-3], batch_size=64, progress=False)


def eval_items():
    from mindscope.evals import load_items

    return load_items(limit=12)


def eval_responses(items):
    """Deterministic answers: right for even items, wrong for odd ones, varied confidence."""
    return {it.id: f"Explanation: because.\nExact Answer: {it.answer if i % 2 == 0 else 'zzz'}"
                   f"\nConfidence: {40 + 5 * i}%" for i, it in enumerate(items)}


class Sleepy:
    """Wraps a batch iterable / responder: sleeps and reports progress per unit."""

    def __init__(self, inner, delay):
        self.inner, self.delay, self.n = inner, delay, 0

    def tick(self):
        time.sleep(self.delay)
        self.n += 1
        progress(self.n)

    def iter_from(self, step):
        for b in self.inner.iter_from(step):
            self.tick()
            yield b


def main():
    job, out, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    args = sys.argv[4:]
    torch.set_num_threads(threads)
    if job == "harvest":
        import mindscope as ms
        from mindscope.activations import _harvest, harvest

        slow = _harvest.file_sha256
        _harvest.file_sha256 = lambda p: (time.sleep(0.1), slow(p))[1]  # widen the write window
        harvest(ms.load(args[0]), out, corpus=args[1], **HARVEST_KW)
    elif job == "train":
        from mindscope.sae import Trainer

        Trainer(train_specs(), out, checkpoint_every=1, progress=False,
                plots=False).fit(Sleepy(train_data(), 0.05))
    elif job == "sweep":
        from mindscope.sae import sweep

        sweep(Sleepy(train_data(), 0.1), out_dir=out, **sweep_args())
    elif job == "analyze":
        from mindscope.features import _analyze, _state, analyze

        n = [0]
        upd, wp = _state.FeatureState.update, _analyze.write_parquet

        def update(self, *a, **k):
            time.sleep(0.05)
            n[0] += 1
            progress(n[0])
            return upd(self, *a, **k)

        def write_parquet(*a, **k):
            time.sleep(0.05)
            n[0] += 1
            progress(n[0])
            return wp(*a, **k)
        _state.FeatureState.update, _analyze.write_parquet = update, write_parquet
        analyze(args[0], args[1], out=out, append=True, progress=False,
                cfg=_analyze.AnalysisConfig(batch_rows=64))
    elif job == "eval":
        from mindscope.evals import EvalConfig, StaticResponder, run_eval

        items = eval_items()
        resp = StaticResponder(eval_responses(items))
        real = resp.respond

        done = [0]

        def respond(its, msgs):
            time.sleep(0.05 * len(its))
            if done[0]:
                progress(done[0])  # the previous batch is on disk by now
            done[0] += len(its)
            return real(its, msgs)
        resp.respond = respond
        run_eval(resp, items, "rule", out, config=EvalConfig(batch_size=1, plot=False),
                 progress=False)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
