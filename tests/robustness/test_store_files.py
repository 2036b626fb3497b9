"""Activation stores fed bad manifests, shards and metadata: every failure is a clear error that
names the file; nothing is unpickled; nothing escapes the store folder."""
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _attack import clean_error, copytree, hostile_texts, sparse_file
from mindscope.activations import ActivationStore, CorruptStoreError
from mindscope.core import BadInputError

SITE = "resid_post.1"


def _use(store):
    """Everything a user does with a store: open, stats, one batch, metadata, raw shard."""
    s = ActivationStore.open(store)
    s.stats()
    for _ in s.reader(16, shuffle=True, split="all"):
        break
    s.metadata(0)
    s.activations(shard=0)
    return s


@pytest.fixture
def copy(store, tmp_path):
    return copytree(store.path, tmp_path / "s")


def test_good_store_reads(store):
    assert _use(store.path).n_tokens > 0


@pytest.mark.parametrize("label,data", hostile_texts())
def test_hostile_manifest_bytes(copy, label, data):
    (copy / "manifest.json").write_bytes(data)
    if label == "nan":  # valid JSON, but not a manifest
        clean_error(lambda: _use(copy), "manifest.json")
        return
    clean_error(lambda: _use(copy), "manifest.json")


def test_huge_manifest_is_refused_without_reading_it(copy):
    sparse_file(copy / "manifest.json", 1 << 31)  # 2 GiB of zeros, no disk used
    e = clean_error(lambda: ActivationStore.open(copy), "manifest.json")
    assert "limit" in str(e)


def _mutations(m):
    """Every (json path) of the manifest, to replace one value at a time."""
    out = []

    def walk(o, path):
        out.append(path)
        if isinstance(o, dict):
            for k, v in o.items():
                walk(v, path + (k,))
        elif isinstance(o, list):
            for i, v in enumerate(o[:3]):
                walk(v, path + (i,))
    walk(m, ())
    return [p for p in out if p]


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70)
                           | st.floats() | st.text(max_size=20),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                           max_leaves=6)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_manifest_fields(store, tmp_path_factory, data):
    """Replace or delete any one manifest value: the store works or fails cleanly."""
    d = tmp_path_factory.mktemp("fz")
    copy = copytree(store.path, d / "s")
    m = json.loads((copy / "manifest.json").read_text())
    path = data.draw(st.sampled_from(_mutations(m)))
    parent = m
    for k in path[:-1]:
        parent = parent[k]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(json_values)
    (copy / "manifest.json").write_text(json.dumps(m))
    try:
        _use(copy)
    except (BadInputError, KeyError) as e:  # KeyError: asking for a site the store lacks
        assert str(copy) in str(e) or "site" in str(e), str(e)


@pytest.mark.parametrize("evil", ["../../../../etc/passwd", "/etc/passwd", "acts/../../x.npy",
                                  "acts\\..\\x.npy", ""])
def test_shard_paths_cannot_leave_the_store(copy, evil):
    m = json.loads((copy / "manifest.json").read_text())
    m["shards"][1]["files"][SITE]["path"] = evil
    (copy / "manifest.json").write_text(json.dumps(m))
    clean_error(lambda: ActivationStore.open(copy), "manifest.json")


def test_symlink_out_of_the_store_is_refused(copy, tmp_path):
    m = json.loads((copy / "manifest.json").read_text())
    rel = m["shards"][0]["files"][SITE]["path"]
    outside = tmp_path / "elsewhere.npy"
    os.replace(copy / rel, outside)
    os.symlink(outside, copy / rel)
    e = clean_error(lambda: ActivationStore.open(copy), rel)
    assert "symlink" in str(e)


def _rewrite_shard(copy, k, arr=None, raw=None):
    """Replace shard k's activations (manifest sizes updated, as an attacker would)."""
    m = json.loads((copy / "manifest.json").read_text())
    f = m["shards"][k]["files"][SITE]
    p = copy / f["path"]
    if raw is not None:
        p.write_bytes(raw)
    else:
        with open(p, "wb") as fh:
            np.save(fh, arr, allow_pickle=True)
    f["bytes"] = p.stat().st_size
    (copy / "manifest.json").write_text(json.dumps(m))
    return p


def test_shard_dtype_shape_and_pickle(copy, store):
    rows, d = store.shards[1]["rows"], store.d_model
    for arr, why in [(np.zeros((rows, d), np.float64), "dtype"),
                     (np.zeros((rows, d), np.int32), "dtype"),
                     (np.zeros((rows, d + 1), np.float32), "shape"),
                     (np.zeros((rows + 3, d), np.float32), "shape"),
                     (np.zeros((rows * d,), np.float32), "shape"),
                     (np.array([{"evil": 1}] * 3, dtype=object), "")]:
        p = _rewrite_shard(copy, 1, arr)
        e = clean_error(lambda: ActivationStore.open(copy).activations(shard=1), p.name,
                        "manifest.json")
        assert why in str(e) or "fit together" in str(e) or "pickle" in str(e), str(e)
        clean_error(lambda: list(ActivationStore.open(copy).reader(16, split="all")), p.name,
                    "manifest.json")


def test_shard_with_broken_npy_header(copy):
    m = json.loads((copy / "manifest.json").read_text())
    p = copy / m["shards"][2]["files"][SITE]["path"]
    data = bytearray(p.read_bytes())
    data[10:40] = b"{'descr': 'garbage!!!!!!!!!!!!"[:30]
    p.write_bytes(bytes(data))  # same size: passes the size check
    s = ActivationStore.open(copy)
    clean_error(lambda: s.activations(shard=2), p.name)
    p.write_bytes(b"\x00" * len(data))
    clean_error(lambda: s.activations(shard=2), p.name)


def test_nan_and_inf_activations_are_named(copy, store):
    a = store.load(SITE, 3).copy()
    a[2, 5] = np.nan
    a[4, 1] = np.inf
    p = _rewrite_shard(copy, 3, a)
    s = ActivationStore.open(copy)
    e = clean_error(lambda: list(s.reader(16, split="all")), p.name)
    assert "NaN" in str(e)
    clean_error(lambda: s.activations(), p.name)


def test_corrupt_metadata_parquet(copy):
    m = json.loads((copy / "manifest.json").read_text())
    p = copy / m["shards"][0]["meta"]["path"]
    n = p.stat().st_size
    p.write_bytes(b"PAR1" + b"\x07" * (n - 4))
    s = ActivationStore.open(copy)
    clean_error(lambda: s.metadata(0), p.name)
    clean_error(lambda: list(s.reader(16)), p.name)  # split by document reads metadata


def test_truncated_and_missing_shards_still_clear(copy):
    m = json.loads((copy / "manifest.json").read_text())
    p = copy / m["shards"][1]["files"][SITE]["path"]
    p.write_bytes(p.read_bytes()[:-7])
    e = clean_error(lambda: ActivationStore.open(copy), p.name)
    assert isinstance(e, CorruptStoreError)
    p.unlink()
    clean_error(lambda: ActivationStore.open(copy), p.name)


def test_harvest_record_and_shard_records_hostile(tiny, corpus_dir, store, tmp_path):
    """A damaged harvest.json is named; a damaged shard record is redone, not trusted."""
    from mindscope.activations import harvest

    kw = dict(sites=SITE, corpus=corpus_dir, n_tokens=16 * 32, window=32, shard_tokens=4 * 32,
              batch_size=4, progress=False)
    copy = copytree(store.path, tmp_path / "h")
    (copy / "manifest.json").unlink()
    (copy / "harvest.json").write_text("[" * 400 + "]" * 400)
    clean_error(lambda: harvest(tiny("llama"), copy, **kw), "harvest.json")
    (copy / "harvest.json").write_text(json.dumps(json.loads(
        (store.path / "harvest.json").read_text())))
    (copy / "shards" / "000002.json").write_text('{"id": 2, "rows": ')  # truncated record
    (copy / "shards" / "000001.json").write_text(json.dumps({"id": "../../x"}))
    s = harvest(tiny("llama"), copy, **kw)
    for k in range(4):
        assert np.array_equal(s.load(SITE, k), store.load(SITE, k))
    s.verify()
