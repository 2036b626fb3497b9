"""Result files of the causal toolbox: atomic writes, and a tuned lens read back with checks."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import mindscope.causal as mc
from mindscope.causal._common import save_files
from mindscope.core import BadInputError


def test_save_files_writes_each_file_whole(tmp_path):
    out = save_files(tmp_path / "r", {"w.safetensors": {"x": torch.arange(4.0)},
                                      "meta.json": {"a": [1, 2]}})
    assert torch.equal(load_file(str(out / "w.safetensors"))["x"], torch.arange(4.0))
    assert json.loads((out / "meta.json").read_text()) == {"a": [1, 2]}
    assert oct(os.stat(out / "meta.json").st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "w.safetensors"]


def test_save_files_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    save_files(tmp_path, {"meta.json": {"v": 1}})
    with pytest.raises(TypeError):  # not JSON-serialisable: fails once the temp file exists
        save_files(tmp_path, {"meta.json": {"v": object()}})
    assert json.loads((tmp_path / "meta.json").read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


def test_tuned_lens_load_checks_its_files(tmp_path):
    lens = mc.TunedLens(3, 8, "m")
    lens.save(tmp_path / "tl")
    back = mc.TunedLens.load(tmp_path / "tl")
    assert (back.n_layers, back.d_model, back.model) == (3, 8, "m")
    (tmp_path / "tl" / "tuned_lens.json").write_text('{"n_layers": 3')
    with pytest.raises(BadInputError, match="tuned_lens.json"):
        mc.TunedLens.load(tmp_path / "tl")
    (tmp_path / "tl" / "tuned_lens.json").write_text('{"n_layers": 3, "d_model": 100000}')
    with pytest.raises(BadInputError, match="tuned_lens.safetensors"):  # before allocating
        mc.TunedLens.load(tmp_path / "tl")
    (tmp_path / "tl" / "tuned_lens.json").write_text('{"n_layers": "3", "d_model": 8}')
    with pytest.raises(BadInputError, match="n_layers"):
        mc.TunedLens.load(tmp_path / "tl")
    (tmp_path / "tl" / "tuned_lens.json").write_text('{"n_layers": 3, "d_model": 8}')
    save_file({"translators.0.weight": torch.zeros(8, 8)},
              str(tmp_path / "tl" / "tuned_lens.safetensors"))
    with pytest.raises(BadInputError, match="translators"):
        mc.TunedLens.load(tmp_path / "tl")
