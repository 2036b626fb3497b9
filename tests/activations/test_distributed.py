import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import mindscope as ms
from mindscope.activations import harvest

L = 32


def test_torchrun_two_ranks_equal_one_process(tiny_dir, text_corpus, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mindscope.cli.activations", "harvest", "--model", str(tiny_dir),
           "--corpus", str(text_corpus), "--sites", "resid_post.1,resid_post.3", "--tokens",
           str(20 * L), "--window", str(L), "--shard-tokens", str(2 * L), "--batch-size", "2",
           "--device", "cpu", "--out", str(out), "--quiet"]
    # this checkout's src first: the ranks must run the code under test, not an installed copy
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    lm = ms.load(str(tiny_dir))
    one = harvest(lm, tmp_path / "one", sites="resid_post.1,resid_post.3", corpus=text_corpus,
                  n_tokens=20 * L, window=L, shard_tokens=2 * L, progress=False)
    from mindscope.activations import ActivationStore

    two = ActivationStore.open(out)
    m1, m2 = one.manifest, two.manifest
    assert m2["world_size"] == 2 and m2["n_shards"] == m1["n_shards"] == 10
    for k in ("n_tokens", "n_tokens_processed", "tokens_sha256", "sites", "d_model"):
        assert m1[k] == m2[k], k
    for k in range(10):
        for site in ("resid_post.1", "resid_post.3"):
            np.testing.assert_allclose(two.load(site, k), one.load(site, k), rtol=1e-5, atol=1e-6)
        assert two.metadata(k).equals(one.metadata(k))
    for site in ("resid_post.1", "resid_post.3"):
        np.testing.assert_allclose(m2["stats"][site]["mean"], m1["stats"][site]["mean"], rtol=1e-5,
                                   atol=1e-7)
