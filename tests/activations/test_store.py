import json

import numpy as np
import pytest
import torch

from mindscope.activations import ActivationStore, CorruptStoreError, harvest

L = 32


@pytest.fixture(scope="module")
def store(tiny, text_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    return harvest(tiny("llama"), out, sites="resid_post.1,resid_post.2", corpus=text_corpus,
                   n_tokens=64 * L, window=L, shard_tokens=8 * L, batch_size=8, progress=False)


def _row_keys(x):  # a row's identity: its exact float values
    return sorted(map(tuple, x.numpy().round(6).tolist()))


def test_manifest_contract(store):
    m = ActivationStore.open(store.path).manifest
    for k in ("d_model", "sites", "model", "n_tokens", "dtype", "stats", "corpus", "shards"):
        assert k in m
    assert m["n_tokens"] == sum(sh["rows"] for sh in m["shards"]) > 1500
    assert json.loads((store.path / "manifest.json").read_text()) == m


def test_reader_covers_every_row_once_per_epoch_with_bounded_memory(store):
    site = "resid_post.2"
    full = store.activations(site)  # (N, d)
    assert full.shape[0] > 4 * 256  # the store is much larger than the buffer
    r = store.reader(100, site=site, split="all", epochs=2, buffer_rows=256, seed=3)
    batches = list(r)
    n = full.shape[0]
    assert [b.shape[0] for b in batches] == ([100] * (n // 100) + [n % 100]) * 2
    assert all(b.shape[1] == 64 and b.dtype == torch.float32 for b in batches)
    x = torch.cat(batches)
    assert x.shape[0] == 2 * n and len(r) == len(batches) == 2 * -(-n // 100)
    e1, e2 = x[:n], x[n:]
    assert _row_keys(e1) == _row_keys(full) == _row_keys(e2)
    assert not torch.equal(e1, e2) and not torch.equal(e1, full)  # shuffled, differently per epoch
    assert r.peak_buffer_rows < 256 + 100  # buffer + one chunk (max(batch, buffer / 4))
    again = torch.cat(list(store.reader(100, site=site, split="all", epochs=2, buffer_rows=256,
                                        seed=3)))
    assert torch.equal(x, again)  # same seed, same order
    # shards are mixed: the first 256 rows do not come from one shard only
    in_order = torch.cat(list(store.reader(100, site=site, split="all", shuffle=False)))
    assert torch.equal(in_order, full)


def test_train_heldout_split_by_document_and_by_shard(store):
    site = "resid_post.1"
    full = store.activations(site)
    doc = torch.tensor(store.metadata(columns=["doc"]).column("doc").to_numpy())
    for split_by in ("document", "shard"):
        kw = dict(site=site, shuffle=False, heldout_fraction=0.3, split_by=split_by)
        tr = torch.cat(list(store.reader(64, split="train", **kw)))
        he = torch.cat(list(store.reader(64, split="heldout", **kw)))
        assert tr.shape[0] + he.shape[0] == full.shape[0] and he.shape[0] > 0
        assert _row_keys(torch.cat([tr, he])) == _row_keys(full)
    # by document: no document has rows on both sides
    r_he = store.reader(64, site=site, split="heldout", heldout_fraction=0.3)
    held_docs = set(doc[np.concatenate(r_he.rows()[:1])].tolist()) if len(r_he.rows()[0]) else set()
    r_tr = store.reader(64, site=site, split="train", heldout_fraction=0.3)
    offs = np.cumsum([0] + [sh["rows"] for sh in store.shards])
    tr_docs = set(doc[np.concatenate([o + r for o, r in zip(offs, r_tr.rows())])].tolist())
    he_docs = set(doc[np.concatenate([o + r for o, r in zip(offs, r_he.rows())])].tolist())
    assert held_docs <= he_docs and not tr_docs & he_docs


def test_multi_site_store_needs_site(store):
    with pytest.raises(ValueError, match="several sites"):
        store.reader(10)
    with pytest.raises(KeyError, match="not in this store"):
        store.reader(10, site="resid_post.3")


def test_truncated_and_corrupt_shards_are_clear(store, tmp_path):
    import shutil

    copy = tmp_path / "s"
    shutil.copytree(store.path, copy)
    p = copy / store.shards[2]["files"]["resid_post.1"]["path"]
    data = p.read_bytes()
    p.write_bytes(data[:-100])
    with pytest.raises(CorruptStoreError, match=r"000002\.npy has .* bytes.*truncated"):
        ActivationStore.open(copy)
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    p.write_bytes(bytes(flipped))
    s = ActivationStore.open(copy)  # same size: only the checksum tells
    with pytest.raises(CorruptStoreError, match="sha256"):
        s.verify()
    with pytest.raises(CorruptStoreError, match="sha256"):
        list(s.reader(64, site="resid_post.1", verify="sha256"))
    assert len(list(s.reader(64, site="resid_post.2", verify="sha256"))) > 0


def test_paired_reader_keeps_rows_aligned_shuffled_and_bounded(store):
    a, b = store.activations("resid_post.1"), store.activations("resid_post.2")  # (N, d) each
    pair_of = {tuple(x): tuple(y) for x, y in zip(a.numpy().round(6).tolist(),
                                                   b.numpy().round(6).tolist())}
    r = store.paired_reader(50, "resid_post.1", "resid_post.2", split="all", buffer_rows=256,
                            seed=1)
    got = list(r)
    x = torch.cat([g[0] for g in got])
    y = torch.cat([g[1] for g in got])
    assert x.shape == y.shape == a.shape
    assert not torch.equal(x, a)  # shuffled
    # every row of x is paired with its own row of y, and each row appears exactly once
    assert all(pair_of[tuple(r_)] == tuple(s_) for r_, s_ in
               zip(x.numpy().round(6).tolist(), y.numpy().round(6).tolist()))
    assert _row_keys(x) == _row_keys(a)
    assert r.peak_buffer_rows < 256 // 2 + 50 + 32  # buffer rows / 2 sites + one chunk
    # lists of sites give (B, n, d) stacks in the order asked
    xs, ys = next(iter(store.paired_reader(8, ["resid_post.2", "resid_post.1"], ["resid_post.1"],
                                           shuffle=False, split="all")))
    assert xs.shape == (8, 2, 64) and ys.shape == (8, 1, 64)
    assert torch.equal(xs[:, 0], b[:8]) and torch.equal(xs[:, 1], a[:8])
    assert torch.equal(ys[:, 0], a[:8])
    with pytest.raises(KeyError, match="not in this store"):
        store.paired_reader(8, "mlp_in.1", "resid_post.1")
