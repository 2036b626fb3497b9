"""SAE folders (ours, SAELens, sparsify) and trainer checkpoints fed bad files: clear errors that
name the file, no allocation driven by a hostile config, no pickle, no NaN weights loaded."""
import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from _attack import clean_error, copytree, hostile_texts, sparse_file
from mindscope.sae import (SAEConfig, TensorBatches, TrainConfig, Trainer, import_saelens,
                           import_sparsify, load_any)

WEIGHTS = {"ours": "sae.safetensors", "saelens": "sae_weights.safetensors",
           "sparsify": "sae.safetensors"}
LOADERS = {"ours": load_any, "saelens": import_saelens, "sparsify": import_sparsify}
KINDS = list(WEIGHTS)


@pytest.fixture(params=KINDS)
def folder(request, sae_dirs, tmp_path):
    return request.param, copytree(sae_dirs[request.param], tmp_path / request.param)


def test_good_folders_load_and_agree(sae_dirs):
    x = torch.randn(5, 64)
    ref = sae_dirs["sae"](x)
    for kind in KINDS:
        assert torch.allclose(LOADERS[kind](sae_dirs[kind])(x), ref, atol=1e-4), kind
        assert torch.allclose(load_any(sae_dirs[kind])(x), ref, atol=1e-4), kind


@pytest.mark.parametrize("label,data", hostile_texts())
def test_hostile_cfg_json(folder, label, data):
    kind, d = folder
    (d / "cfg.json").write_bytes(data)
    clean_error(lambda: LOADERS[kind](d), "cfg.json")
    clean_error(lambda: load_any(d), "cfg.json", WEIGHTS[kind])


def test_huge_cfg_and_weights_files(folder):
    kind, d = folder
    sparse_file(d / "cfg.json", 1 << 31)
    clean_error(lambda: LOADERS[kind](d), "cfg.json")


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(KINDS), key=st.sampled_from(["d_in", "n_latents", "d_sae", "k",
                                                          "num_latents", "expansion_factor",
                                                          "arch", "architecture", "format",
                                                          "scale_in", "d_out", "transcode",
                                                          "apply_b_dec_to_input", "meta",
                                                          "normalize_activations"]),
       value=st.one_of(st.none(), st.booleans(), st.integers(-5, 10 ** 13), st.floats(),
                       st.text(max_size=8), st.lists(st.integers(), max_size=2)),
       drop=st.booleans())
def test_fuzz_cfg_fields(sae_dirs, tmp_path_factory, kind, key, value, drop):
    """Change or drop one config field: the SAE loads and still works, or fails cleanly,
    without allocating what a hostile config asks for."""
    d = copytree(sae_dirs[kind], tmp_path_factory.mktemp("c") / kind)
    cfg = json.loads((d / "cfg.json").read_text())
    if drop:
        cfg.pop(key, None)
    else:
        cfg[key] = value
    (d / "cfg.json").write_text(json.dumps(cfg))
    try:
        sae = LOADERS[kind](d)
    except (FileNotFoundError, ValueError) as e:
        clean_error(lambda: LOADERS[kind](d), "cfg.json", WEIGHTS[kind])
        return
    sae(torch.randn(3, sae.cfg.d_in))


def _rewrite(d, name, fn):
    """Apply ``fn`` to the tensors by their bare names (mindscope's own files prefix them with
    ``mindscope_sae.``, see SAE.save), then write them back under the file's own names."""
    p = d / name
    t = load_file(str(p))
    pre = "mindscope_sae." if t and all(k.startswith("mindscope_sae.") for k in t) else ""
    t = {k[len(pre):]: v for k, v in t.items()}
    fn(t)
    save_file({pre + k: v for k, v in t.items()}, str(p))


@pytest.mark.parametrize("attack", ["nan", "inf", "int8", "transposed", "missing", "scalar",
                                    "huge-latents", "empty"])
def test_bad_tensors(folder, attack):
    kind, d = folder
    name = WEIGHTS[kind]
    enc = {"ours": "W_enc", "saelens": "W_enc", "sparsify": "encoder.weight"}[kind]

    def mutate(t):
        if attack == "nan":
            t["W_dec"][3, 4] = float("nan")
        elif attack == "inf":
            t["b_dec"][0] = float("inf")
        elif attack == "int8":
            t[enc] = t[enc].to(torch.int8)
        elif attack == "transposed":
            t["W_dec"] = t["W_dec"].T.contiguous()
        elif attack == "missing":
            del t["b_dec"]
        elif attack == "scalar":
            t["b_dec"] = torch.tensor(1.0)
        elif attack == "huge-latents":
            for k in list(t):
                t[k] = t[k][:1].contiguous() if t[k].dim() and t[k].shape[0] == 128 else t[k]
        elif attack == "empty":
            t.clear()
            t["x"] = torch.zeros(0)
    _rewrite(d, name, mutate)
    if attack == "huge-latents":  # the config still says 128 latents: a mismatch, not a crash
        pass
    clean_error(lambda: LOADERS[kind](d), name)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(KINDS), cut=st.floats(0, 1, exclude_max=True),
       flip=st.one_of(st.none(), st.integers(0, 10 ** 6)))
def test_fuzz_truncated_and_flipped_weights(sae_dirs, tmp_path_factory, kind, cut, flip):
    d = copytree(sae_dirs[kind], tmp_path_factory.mktemp("w") / kind)
    p = d / WEIGHTS[kind]
    data = bytearray(p.read_bytes())
    if flip is None:
        data = data[:int(cut * len(data))]
    else:
        data[flip % len(data)] ^= 0xFF
    p.write_bytes(bytes(data))
    try:
        sae = LOADERS[kind](d)
    except (FileNotFoundError, ValueError):
        clean_error(lambda: LOADERS[kind](d), WEIGHTS[kind])
        return
    assert flip is not None  # a truncated file never loads
    assert torch.isfinite(sae(torch.randn(2, 64))).all()


def test_hostile_safetensors_header(folder):
    kind, d = folder
    p = d / WEIGHTS[kind]
    p.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")  # header length far past the file
    clean_error(lambda: LOADERS[kind](d), p.name)
    bomb = ("[" * 10000 + "]" * 10000).encode()
    p.write_bytes(struct.pack("<Q", len(bomb)) + bomb)
    clean_error(lambda: LOADERS[kind](d), p.name)
    p.write_bytes(b"")
    clean_error(lambda: LOADERS[kind](d), p.name)


def test_not_a_folder_and_empty_folder(tmp_path):
    clean_error(lambda: load_any(tmp_path), str(tmp_path))
    f = tmp_path / "file"
    f.write_text("x")
    clean_error(lambda: load_any(f), str(f))


# ---- trainer checkpoints -------------------------------------------------------------------------

def _trainer(out):
    spec = [(SAEConfig("topk", 16, 32, k=4), TrainConfig(steps=6, seed=1))]
    return Trainer(spec, out, checkpoint_every=2, progress=False, plots=False)


@pytest.fixture(scope="module")
def ckpt_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "run"
    data = TensorBatches(torch.randn(512, 16), batch_size=32, seed=0)
    _trainer(out).fit(data)
    return out, data


@pytest.mark.parametrize("attack", ["truncate", "garbage", "no-meta", "deep-meta", "bad-meta",
                                    "wrong-shape", "nan"])
def test_bad_checkpoints_are_named(ckpt_run, tmp_path, attack):
    src, data = ckpt_run
    out = copytree(src, tmp_path / "run")
    p = out / "checkpoint.safetensors"
    raw = p.read_bytes()
    if attack == "truncate":
        p.write_bytes(raw[: len(raw) // 2])
    elif attack == "garbage":
        p.write_bytes(b"\x13" * len(raw))
    else:
        from safetensors import safe_open
        with safe_open(str(p), "pt") as f:
            meta = dict(f.metadata())
            t = {k: f.get_tensor(k) for k in f.keys()}
        if attack == "no-meta":
            meta = {}
        elif attack == "deep-meta":
            meta["trainer"] = "[" * 3000 + "]" * 3000
        elif attack == "bad-meta":
            m = json.loads(meta["trainer"])
            m["step"] = "three"
            meta["trainer"] = json.dumps(m)
        elif attack == "wrong-shape":
            k = next(k for k in t if k.endswith("sae.W_dec"))
            t[k] = t[k][:, :3].contiguous()
        elif attack == "nan":
            k = next(k for k in t if k.endswith("sae.W_enc"))
            t[k][0, 0] = float("nan")
        save_file(t, str(p), metadata=meta)
    clean_error(lambda: _trainer(out).fit(data), "checkpoint.safetensors")
