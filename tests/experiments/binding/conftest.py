"""Shared fixtures of the binding tests."""
import json
import shutil
from importlib import resources

import pytest


@pytest.fixture
def tiny_data(tmp_path):
    """Bundled attributes/templates + names that the tiny BPE vocabulary starts distinctly."""
    src = resources.files("mindscope") / "data" / "binding"
    for f in ("attributes.json", "templates.json"):
        shutil.copy(src / f, tmp_path / f)
    words = ["Alice", "Bob", "Trial", "Tell", "Yes", "No", "Ok", "Do", "If", "Hello"]
    (tmp_path / "names.json").write_text(json.dumps({"names": [{"name": w, "pronoun": "she"}
                                                               for w in words]}))
    return tmp_path
