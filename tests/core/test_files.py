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
