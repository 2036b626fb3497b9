"""Data-parallel reading without a process group: the shared tokenizer (RankEncoder) gives
every document's ids exactly as one process would while each rank encodes only its share, and
the store reader / batch sources give each rank disjoint rows whose union is the whole."""
import numpy as np
import pytest
import torch

from mindscope.activations import ActivationStore, harvest, open_corpus
from mindscope.activations import RankEncoder, encode_docs
from mindscope.sae import StoreBatches, TensorBatches


class CountingTok:
    """Wraps a tokenizer and counts the texts it encodes."""

    def __init__(self, tok):
        self.tok, self.texts = tok, 0

    def __call__(self, texts, **kw):
        self.texts += len(texts) if isinstance(texts, list) else 1
        return self.tok(texts, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_rank_encoder_shares_the_work_and_equals_one_process(tiny, text_corpus):
    tok = tiny("llama").tokenizer
    docs = list(open_corpus(text_corpus))[:13]
    ref = encode_docs(docs, tok)
    toks = [CountingTok(tok) for _ in range(3)]
    encs = [RankEncoder(t, r, 3) for r, t in enumerate(toks)]
    payloads = [e.payload(docs) for e in encs]
    for e in encs:                      # every rank assembles the same, complete chunk
        got = e.assemble(docs, payloads)
        for (a, ra), (b, rb) in zip(got, ref):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(ra, rb)
    assert [e.docs_encoded for e in encs] == [5, 4, 4]          # 13 documents over 3 ranks
    assert sum(t.texts for t in toks) <= len(docs) + 3


def test_tensor_batches_shards_partition_each_global_batch():
    x = torch.arange(200.).view(100, 2)
    full = TensorBatches(x, batch_size=30, seed=1)
    parts = [full.shard(r, 4) for r in range(4)]
    for step in (0, 2, 5):                                          # across an epoch boundary
        g = next(iter(full.iter_from(step)))
        got = torch.cat([next(iter(p.iter_from(step))) for p in parts])
        assert torch.equal(got, g)


def test_store_reader_parts_are_disjoint_and_cover_the_store(tiny, text_corpus, tmp_path):
    lm = tiny("llama")
    st = harvest(lm, tmp_path / "st", sites="resid_post.1", corpus=text_corpus, n_tokens=8 * 32,
                 window=32, shard_tokens=64, progress=False)
    assert len(st.shards) == 4
    rows = [torch.cat(list(st.reader(7, split="all", shuffle=False, part=(r, 2))))
            for r in range(2)]
    every = torch.cat(list(st.reader(7, split="all", shuffle=False)))
    key = lambda t: sorted(map(tuple, t.tolist()))                  # noqa: E731
    assert key(torch.cat(rows)) == key(every)
    assert not set(map(tuple, rows[0].tolist())) & set(map(tuple, rows[1].tolist()))
    sb = StoreBatches(ActivationStore.open(tmp_path / "st"), batch_size=9, split="all")
    a, b = next(iter(sb.shard(0, 2))), next(iter(sb.shard(1, 2)))
    assert (a.shape[0], b.shape[0]) == (5, 4)                       # tensor_split sizes of 9
    with pytest.raises(ValueError, match="fewer than the 5 ranks"):
        sb.shard(0, 5)
