"""JSON/JSONL/Parquet inputs: benchmark item files, benchmark run records, feature-analysis state
and config files, and the shared guarded JSON reader itself."""
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _attack import clean_error, deep_json, hostile_texts, sparse_file
from mindscope.core import BadInputError, read_json
from mindscope.core._files import inside, json_depth, loads_checked

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats()
                           | st.text(max_size=20),
                           lambda c: st.lists(c, max_size=3)
                           | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=10)


# ---- the shared reader ------------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(v=json_values)
def test_read_json_round_trips_what_json_writes(tmp_path_factory, v):
    p = tmp_path_factory.mktemp("j") / "x.json"
    p.write_text(json.dumps(v))
    got = read_json(p)
    assert json.dumps(got) == json.dumps(v)  # (NaN != NaN, so compare the text)


@settings(max_examples=100, deadline=None)
@given(b=st.binary(max_size=200))
def test_read_json_only_raises_bad_input(tmp_path_factory, b):
    p = tmp_path_factory.mktemp("j") / "x.json"
    p.write_bytes(b)
    try:
        read_json(p)
    except BadInputError as e:
        assert str(p) in str(e)


@pytest.mark.parametrize("label,data", hostile_texts())
def test_read_json_hostile(tmp_path, label, data):
    p = tmp_path / "x.json"
    p.write_bytes(data)
    if label in ("list", "string", "null", "big int", "nan", "deep-ok-parse", "utf16"):
        if label in ("list", "string", "null", "nan"):
            read_json(p)  # valid JSON: only a type check can refuse it
            clean_error(lambda: read_json(p, expect=dict) if label != "nan" else
                        read_json(p, expect=list), "x.json")
            return
    clean_error(lambda: read_json(p), "x.json")


def test_read_json_size_cap_is_checked_before_reading(tmp_path):
    p = tmp_path / "big.json"
    sparse_file(p, 1 << 40)  # 1 TiB sparse: reading it would never finish
    e = clean_error(lambda: read_json(p), "big.json")
    assert "limit" in str(e)
    clean_error(lambda: read_json(tmp_path), str(tmp_path))  # a folder


def test_depth_is_counted_without_recursion():
    assert json_depth(json.loads(deep_json(900))) == 900
    assert json_depth({"a": [1, {"b": []}]}) == 4 and json_depth(3) == 0
    clean_error(lambda: loads_checked(deep_json(101), "here"), "here")


@pytest.mark.parametrize("rel", ["../x", "/abs", "a/../../x", "", None, 3, "a\\..\\b", "a\x00b"])
def test_inside_refuses_escapes(tmp_path, rel):
    clean_error(lambda: inside(tmp_path, rel, "rec.json"), "rec.json")


# ---- benchmark item files ---------------------------------------------------------------------

GOOD = {"id": "q1", "question": "2+2?", "answer": "4", "answer_type": "exactMatch"}


@pytest.mark.parametrize("line", [deep_json(5000), '{"id": ' + "1" * 6000 + "}", "[1]",
                                  "\x00\xff", '{"id": "q2", "question": "x"', "null"])
def test_item_file_bad_lines_name_file_and_line(tmp_path, line):
    from mindscope.evals import load_items

    p = tmp_path / "items.jsonl"
    p.write_text(json.dumps(GOOD) + "\n" + line + "\n", errors="surrogateescape")
    clean_error(lambda: load_items(p), "items.jsonl:2")


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(key=st.sampled_from(["id", "question", "answer", "answer_type", "category", "image",
                            "rationale"]), value=json_values)
def test_fuzz_item_fields(tmp_path_factory, key, value):
    from mindscope.evals import load_items

    p = tmp_path_factory.mktemp("i") / "items.jsonl"
    p.write_text(json.dumps({**GOOD, key: value}) + "\n")
    try:
        s = load_items(p)
    except ValueError:
        clean_error(lambda: load_items(p), "items.jsonl")
        return
    assert all(isinstance(it.question, str) and isinstance(it.id, str) for it in s)


def test_item_parquet_corrupt_and_wrong_types(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mindscope.evals import load_items

    p = tmp_path / "items.parquet"
    p.write_bytes(b"PAR1" + b"\x01" * 100)
    clean_error(lambda: load_items(p), "items.parquet")
    pq.write_table(pa.table({"id": [1], "question": ["q"], "answer": ["a"], "image": [3]}), p)
    clean_error(lambda: load_items(p), "items.parquet")
    sparse_file(tmp_path / "big.jsonl", 1 << 34)
    clean_error(lambda: load_items(tmp_path / "big.jsonl"), "big.jsonl")


# ---- benchmark run records ----------------------------------------------------------------------

def test_run_store_survives_hostile_lines(tmp_path):
    from mindscope.evals._store import RunStore

    s = RunStore(tmp_path / "run")
    s.append({"id": "a", "status": "graded"})
    with open(s.path, "a") as fh:
        fh.write(deep_json(5000) + "\n" + '{"id": ' + "7" * 6000 + "}\n" + "[1,2]\n")
    s.append({"id": "b", "status": "graded"})
    with open(s.path, "ab") as fh:
        fh.write(b'{"id": "c", "sta')  # killed mid-write
    recs = RunStore(tmp_path / "run").load()
    assert sorted(recs) == ["a", "b"]
    assert not s.path.read_bytes().endswith(b"sta")  # the torn tail was cut off


# ---- feature analysis state ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def state_file(tmp_path_factory):
    from mindscope.features._state import FeatureState

    st_ = FeatureState(16, top_k=2, context=(1, 1), reservoir=2, n_background=4, background_codes=3)
    st_.update(torch.relu(torch.randn(20, 16)), torch.arange(20), torch.zeros(20, dtype=torch.long))
    p = tmp_path_factory.mktemp("fs") / "state.safetensors"
    st_.save(p)
    return p


@pytest.mark.parametrize("attack", ["truncate", "garbage", "no-meta", "deep-meta", "huge-n",
                                    "negative", "wrong-shape", "missing-tensor", "nan"])
def test_bad_feature_state(state_file, tmp_path, attack):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from mindscope.features._state import FeatureState

    p = tmp_path / "state.safetensors"
    raw = state_file.read_bytes()
    if attack == "truncate":
        p.write_bytes(raw[:len(raw) // 3])
    elif attack == "garbage":
        p.write_bytes(b"\x00" * 7)
    else:
        with safe_open(str(state_file), "pt") as f:
            meta = dict(f.metadata())
            t = {k: f.get_tensor(k) for k in f.keys()}
        m = json.loads(meta["state"])
        if attack == "no-meta":
            meta = {}
        elif attack == "deep-meta":
            meta["state"] = deep_json(4000)
        elif attack == "huge-n":  # a hostile state would make us allocate terabytes
            m["settings"]["n_latents"] = 10 ** 9
        elif attack == "negative":
            m["settings"]["top_k"] = -1
        elif attack == "wrong-shape":
            t["count"] = t["count"][:5].contiguous()
        elif attack == "missing-tensor":
            del t["res_key"]
        elif attack == "nan":
            t["total"][0] = float("nan")
        if attack not in ("no-meta", "deep-meta"):
            meta["state"] = json.dumps(m)
        save_file(t, str(p), metadata=meta)
    clean_error(lambda: FeatureState.load(p), "state.safetensors")


def test_analysis_json_hostile(tmp_path, store, sae_dirs):
    """append=True reads the previous analysis: damaged files there are named."""
    from mindscope.features import analyze

    out = tmp_path / "features"
    analyze(sae_dirs["ours"], store, out=out, progress=False)
    (out / "analysis.json").write_text(deep_json(3000))
    (out / "state.safetensors").write_bytes(b"junk")
    clean_error(lambda: analyze(sae_dirs["ours"], store, out=out, append=True, progress=False),
                "state.safetensors", "analysis.json")
