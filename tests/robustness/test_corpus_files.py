"""Corpora (txt / jsonl / chat jsonl / parquet / arrow / save_to_disk folders) fed hostile
records and files: bad records are skipped and counted (or raised with file:line), broken files
are named, and nothing leaves the dataset folder."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _attack import clean_error, deep_json
from mindscope.activations import BadRecordError, Corpus
from mindscope.core import BadInputError

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats()
                           | st.text(max_size=30),
                           lambda c: st.lists(c, max_size=3)
                           | st.dictionaries(st.sampled_from(["text", "messages", "role", "content",
                                                              "x"]), c, max_size=3), max_leaves=8)
lines = st.one_of(json_values.map(json.dumps), st.text(max_size=40),
                  st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
                  st.integers(50, 3000).map(deep_json))


def _docs(path, **kw):
    c = Corpus(path, **kw)
    docs = list(c)
    for d in docs:  # every document handed on is well-formed
        assert (isinstance(d.text, str) and d.text.strip()) or (
            isinstance(d.messages, list) and d.messages
            and all(isinstance(m["role"], str) and isinstance(m["content"], str) for m in d.messages))
    return c, docs


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.lists(lines, max_size=8), fmt=st.sampled_from(["auto", "text", "chat"]))
def test_fuzz_jsonl_records_skip(tmp_path_factory, body, fmt):
    p = tmp_path_factory.mktemp("c") / "x.jsonl"
    p.write_text("\n".join(x.replace("\n", " ").replace("\r", " ") for x in body) + "\n",
                 encoding="utf-8", errors="surrogatepass")
    c, docs = _docs(p, format=fmt)
    assert len(docs) + c.bad.count <= len(body)
    try:
        list(Corpus(p, format=fmt, on_error="raise"))
    except BadRecordError as e:
        assert "x.jsonl:" in str(e) and isinstance(e, BadInputError)


@pytest.mark.parametrize("line", [deep_json(100000), '{"text": ' + "9" * 10000 + "}",
                                  "\x00\x01\x02", '{"text": "ok"', "[1,2]", '"just a string"',
                                  '{"messages": [{"role": "user"}]}',
                                  '{"messages": "hello"}', '{"text": ["a"]}', '{"text": "   "}'])
def test_each_bad_record_named_with_line(tmp_path, line):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"text": "a good document"}) + "\n" + line + "\n")
    c, docs = _docs(p)
    assert len(docs) == 1 and c.bad.count == 1 and "c.jsonl:2" in c.bad.examples[0]
    e = clean_error(lambda: list(Corpus(p, on_error="raise")), "c.jsonl:2", allow=(BadRecordError,))
    assert "on_error" in str(e)


def test_invalid_utf8_and_empty_text_files(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00 hello \x80\x81 world")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.md").write_text("  \n\n ")
    c, docs = _docs(tmp_path)
    assert len(docs) == 1 and "hello" in docs[0].text and c.bad.count == 2


@pytest.mark.parametrize("kind", ["parquet", "arrow"])
def test_corrupt_columnar_files_are_named(tmp_path, kind):
    p = tmp_path / f"x.{kind}"
    p.write_bytes(b"PAR1" + b"\x00garbage" * 50 if kind == "parquet" else b"ARROW1\x00\x00" * 20)
    clean_error(lambda: list(Corpus(p)), f"x.{kind}")
    p.write_bytes(b"")
    clean_error(lambda: list(Corpus(p)), f"x.{kind}")


def test_parquet_with_wrong_column_types(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "x.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), p)
    c, docs = _docs(p)
    assert docs == [] and c.bad.count == 3
    pq.write_table(pa.table({"other": ["a"]}), p)
    c, docs = _docs(p)
    assert docs == [] and c.bad.count == 1 and "'text'" in c.bad.examples[0]
    pq.write_table(pa.table({"messages": [[{"role": "user", "content": "hi"}], None]}), p)
    c, docs = _docs(p)
    assert len(docs) == 1 and c.bad.count == 1


def _hf_folder(root, state, dataset_dict=None):
    root.mkdir(parents=True, exist_ok=True)
    (root / "state.json").write_text(state if isinstance(state, str) else json.dumps(state))
    if dataset_dict is not None:
        (root / "dataset_dict.json").write_text(dataset_dict)
    return root


@pytest.mark.parametrize("state", ['{"_data_files": [{"filename": "../../../etc/passwd"}]}',
                                   '{"_data_files": [{"filename": "/etc/passwd"}]}',
                                   '{"_data_files": [{"nope": 1}]}', '{"_data_files": "x"}',
                                   "[" * 5000 + "]" * 5000, "not json", "[]"])
def test_hostile_dataset_folder_state(tmp_path, state):
    d = _hf_folder(tmp_path / "ds", state)
    clean_error(lambda: Corpus(d).files(), "state.json")


@pytest.mark.parametrize("dd", ['{"splits": "train"}', '{"splits": []}', "{}", "[1]",
                                '{"splits": ["../x"]}'])
def test_hostile_dataset_dict(tmp_path, dd):
    d = tmp_path / "dd"
    _hf_folder(d, "{}", dd)
    clean_error(lambda: Corpus(d).files(), "dataset_dict.json")


def test_symlinked_data_file_out_of_dataset_folder_is_refused(tmp_path):
    import os

    outside = tmp_path / "outside.arrow"
    outside.write_bytes(b"x")
    d = _hf_folder(tmp_path / "ds", {"_data_files": [{"filename": "data.arrow"}]})
    os.symlink(outside, d / "data.arrow")
    clean_error(lambda: Corpus(d).files(), "data.arrow")
