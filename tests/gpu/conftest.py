"""tests/gpu: every public path on CUDA. Skipped, with the reason, where torch sees no CUDA GPU
(the CPU suite covers the same code on CPU); run with ``make test-gpu`` on a GPU machine.
``MINDSCOPE_TEST_DEVICE=cpu`` dry-runs the suite on the CPU (checks the tests themselves)."""
import os

import pytest
import torch

DEV = os.environ.get("MINDSCOPE_TEST_DEVICE", "cuda")

NO_CUDA = (f"no CUDA GPU visible to torch {torch.__version__} (CUDA build: "
           f"{torch.version.cuda or 'none'}); tests/gpu runs on a GPU machine (make test-gpu)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() or DEV != "cuda":
        return
    here = str(__import__("pathlib").Path(__file__).parent)
    for it in items:
        if str(it.path).startswith(here):
            it.add_marker(pytest.mark.skip(reason=NO_CUDA))


@pytest.fixture(autouse=True)
def _policy_device(monkeypatch):
    """The root conftest pins 'auto' to the CPU for the CPU suite; here 'auto' means the GPU."""
    monkeypatch.setenv("MINDSCOPE_DEVICE", DEV)


@pytest.fixture(scope="session")
def gpu_lm():
    """The tiny llama on cuda:0 in fp32 (exact comparisons) ..."""
    from mindscope.testing import tiny_lm

    lm = tiny_lm("llama")
    lm.model.to(DEV)
    return lm


@pytest.fixture(scope="session")
def gpu_lm_bf16():
    """... and in bf16 (the dtype researchers run)."""
    from mindscope.testing import tiny_lm

    lm = tiny_lm("llama", dtype=torch.bfloat16)
    lm.model.to(DEV)
    return lm



@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu-corpus")
    words = "the quick brown fox jumps over the lazy dog alice met bob in the garden".split()
    for i in range(8):
        (d / f"doc{i}.txt").write_text(" ".join(words[(i + j) % len(words)] for j in range(300)))
    return d
