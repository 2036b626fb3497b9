"""``atomic_dir``: a folder appears whole or not at all."""
import pytest

from mindscope.core._files import atomic_dir


def _leftovers(parent, name):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_atomic_dir_creates_and_replaces(tmp_path):
    out = tmp_path / "sub" / "run"
    with atomic_dir(out) as tmp:
        assert tmp.parent == out.parent and not out.exists()
        (tmp / "a.txt").write_text("one")
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    with atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("two")
    assert [p.name for p in out.iterdir()] == ["b.txt"]  # replaced whole, nothing merged
    assert _leftovers(out.parent, "run") == []


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_dir_leaves_nothing_when_the_writer_raises(tmp_path, exc):
    out = tmp_path / "run"
    with pytest.raises(exc):
        with atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("partial")
            raise exc("writer failed")
    assert not out.exists() and _leftovers(tmp_path, "run") == []
    out.mkdir()
    (out / "old.txt").write_text("kept")
    with pytest.raises(exc):
        with atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("partial")
            raise exc("writer failed")
    assert [p.name for p in out.iterdir()] == ["old.txt"]  # the previous folder is untouched
    assert _leftovers(tmp_path, "run") == []


def test_atomic_file_writers_replace_whole_and_leave_nothing_on_error(tmp_path):
    import torch
    from safetensors.torch import load_file

    from mindscope.core._files import atomic_save_tensors, atomic_write_json, atomic_write_text

    p = tmp_path / "a.json"
    atomic_write_json(p, {"b": 1, "a": [2]})
    assert p.read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'
    assert (p.stat().st_mode & 0o777) == 0o644
    atomic_write_text(p, "new")
    assert p.read_text() == "new"
    t = tmp_path / "t.safetensors"
    atomic_save_tensors(t, {"x": torch.arange(3.0)})
    with pytest.raises(Exception):
        atomic_save_tensors(t, {"x": "not a tensor"})
    assert torch.equal(load_file(str(t))["x"], torch.arange(3.0))   # the old file survived
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a.json", "t.safetensors"]


def test_count_nonfinite_counts_across_chunks_like_a_whole_tensor_mask():
    import numpy as np
    import torch

    from mindscope.core import BadInputError, check_finite, count_nonfinite

    x = torch.zeros(3 * 2 ** 20 + 5)
    x[[0, 2 ** 20 - 1, 2 ** 20, 3 * 2 ** 20 + 4]] = float("nan")   # both sides of a chunk edge
    x[2 * 2 ** 20 + 7] = float("-inf")
    assert count_nonfinite(x) == int((~torch.isfinite(x)).sum()) == 5
    assert count_nonfinite(x[:-5].reshape(-1, 4)) == 4                # any shape
    assert count_nonfinite(torch.arange(10)) == 0                     # integers cannot be NaN
    assert count_nonfinite(np.array([1.0, np.inf])) == 1              # arrays too
    with pytest.raises(BadInputError, match="holds 5 NaN/Inf value"):
        check_finite(x, "w.safetensors", "tensor 'W'")
    check_finite(torch.ones(4), "w.safetensors", "tensor 'W'")
