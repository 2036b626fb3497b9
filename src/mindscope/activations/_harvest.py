"""Harvest: corpus -> packed windows -> one forward per batch for many sites -> shards on disk.

Three stages overlap: a thread tokenizes and packs windows, the main thread runs the model
(stopping after the deepest site), a writer thread writes shards (atomic: temp file + rename,
the shard's json last). Shard ``k`` holds windows ``[k*W, (k+1)*W)`` of the packed corpus, so a
killed harvest resumes at the first missing shard with no gap and no duplicate, and under
``torchrun`` rank ``r`` of ``N`` harvests shards ``k % N == r``: the union is exactly what one
process writes.

>>> # store = harvest(lm, "acts/l15", sites=["resid_post.15"], n_tokens=2_000_000)
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core import BadInputError, atomic_write_text, inside, need, need_int, read_json
from ..core import StopForward
from ..core import run_lock
from ._corpus import Corpus, open_corpus
from ._store import FORMAT, ActivationStore, file_sha256, shard_name, site_dir
from ._windows import ROLES, RankEncoder, WindowConfig, iter_windows, keep_mask

log = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class HarvestConfig:
    """Settings of one harvest (recorded in ``harvest.json`` and checked on resume)."""

    sites: list
    """Sites to store, e.g. ['resid_post.15'] (patterns like 'resid_post.10:20' expand)."""
    n_tokens: int = 2_000_000
    """Tokens to run through the model (stored rows are fewer: skipped positions/tokens)."""
    window: WindowConfig = field(default_factory=WindowConfig)
    """Window length, BOS handling and which rows are skipped."""
    batch_size: Optional[int] = None
    """Windows per forward; None picks one that fits memory (about 4096 tokens on CPU)."""
    shard_tokens: int = 32768
    """Tokens per shard (rounded to whole windows); the unit of writing and of resuming."""
    store_dtype: Optional[str] = None
    """'float32', 'bfloat16' or 'float16' on disk; None = the model's dtype."""

    def __post_init__(self):
        if isinstance(self.window, dict):
            self.window = WindowConfig(**self.window)
        if isinstance(self.sites, str):
            self.sites = [self.sites]
        if self.n_tokens < self.window.length:
            raise ValueError(f"n_tokens ({self.n_tokens}) must be >= the window length "
                             f"({self.window.length})")
        if self.store_dtype is not None and self.store_dtype not in _DTYPES:
            raise ValueError(f"store_dtype must be one of {list(_DTYPES)}, not {self.store_dtype!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")

    @property
    def shard_windows(self) -> int:
        return max(1, self.shard_tokens // self.window.length)

    @property
    def n_windows(self) -> int:
        return math.ceil(self.n_tokens / self.window.length)

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_windows / self.shard_windows)


def auto_batch_size(lm, window: int) -> int:
    """Windows per forward: ~4096 tokens on CPU; on a GPU, what fits in a quarter of free
    memory (activations ~ 40 x d_model floats per token per layer, a generous bound)."""
    if lm.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(lm.device)
        per_token = 40 * lm.d_model * torch.finfo(lm.dtype).bits // 8
        return max(1, min(512, int(free * 0.25 // (per_token * window))))
    return max(1, 4096 // window)


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _Writer(threading.Thread):
    """Writes finished shards from a queue; the first error is kept and re-raised by the caller."""

    def __init__(self, out: Path, sites: list, dtype: str):
        super().__init__(daemon=True)
        self.out, self.sites, self.dtype = out, sites, dtype
        self.q: queue.Queue = queue.Queue(maxsize=2)
        self.error: Optional[BaseException] = None

    def run(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is None:
                try:
                    write_shard(self.out, *item, sites=self.sites, dtype=self.dtype)
                except BaseException as e:  # noqa: BLE001 - handed to the main thread
                    self.error = e

    def put(self, item):
        if self.error is not None:
            raise self.error
        self.q.put(item)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_shard(out: Path, k: int, windows: tuple, acts: dict, meta: dict, sites: list,
                dtype: str) -> None:
    """Write one shard atomically: each file via temp + rename, the shard json last."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = shard_name(k)
    rec = {"id": k, "windows": list(windows), "rows": int(len(meta["token"])),
           "tokens": int(meta["n_tokens"]), "files": {}, "stats": {}}
    for s in sites:
        x = acts[s]  # (n, d) in the storage dtype
        arr = x.view(torch.uint16).numpy() if dtype == "bfloat16" else x.numpy()
        path = out / "acts" / site_dir(s) / f"{name}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp(path)
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
        os.replace(tmp, path)
        rec["files"][s] = {"path": str(path.relative_to(out)), "bytes": path.stat().st_size,
                           "sha256": file_sha256(path)}
        xf = x.float()
        nrm = xf.norm(dim=-1).double()
        rec["stats"][s] = {"sum": xf.double().sum(0).tolist(), "sum_norm": float(nrm.sum()),
                           "sum_sq_norm": float((nrm ** 2).sum()),
                           "max_norm": float(nrm.max()) if len(nrm) else 0.0}
    table = pa.table({
        "doc": pa.array(meta["doc"], pa.int64()), "pos": pa.array(meta["pos"], pa.int32()),
        "token": pa.array(meta["token"], pa.int32()),
        "role": pa.DictionaryArray.from_arrays(pa.array(meta["role"], pa.int8()),
                                               pa.array(list(ROLES))),
        "window": pa.array(meta["window"], pa.int64())})
    path = out / "meta" / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    rec["meta"] = {"path": str(path.relative_to(out)), "bytes": path.stat().st_size,
                   "sha256": file_sha256(path)}
    rec["token_sha256"] = hashlib.sha256(
        np.ascontiguousarray(meta["all_ids"]).tobytes()).hexdigest()
    atomic_write_text(out / "shards" / f"{name}.json", json.dumps(rec))


def _shard_ok(out: Path, p: Path, rec, sites) -> bool:
    """A shard record is trusted only if it parses, names this shard, lists every site, and its
    files are inside ``out`` with their recorded sizes; otherwise the shard is redone."""
    try:
        if not isinstance(rec, dict) or need_int(rec, "id", p, 0, 1 << 40) != int(p.stem):
            raise BadInputError(p, "does not describe shard " + p.stem)
        need_int(rec, "rows", p, 0, 1 << 40)
        need_int(rec, "tokens", p, 0, 1 << 50)
        need(rec, "token_sha256", str, p)
        files, stats = need(rec, "files", dict, p), need(rec, "stats", dict, p)
        for f in [need(files, s, dict, p, "files") for s in sites] + [need(rec, "meta", dict, p)]:
            q = inside(out, need(f, "path", str, p), p, "shard file")
            if not q.is_file() or q.stat().st_size != need_int(f, "bytes", p, 0, 1 << 50):
                raise BadInputError(p, f"its file {q} is missing or has another size")
        for s in sites:
            need(need(stats, s, dict, p, "stats"), "sum", list, p, f"stats.{s}")
        return True
    except BadInputError as e:
        log.warning("redoing shard %s: %s", p.stem, e)
        return False


def _done_shards(out: Path, sites=None) -> dict[int, dict]:
    """Finished shards {k: record}; a record that is unreadable or does not match its files
    (damaged by hand or by a disk) is not trusted: that shard is redone."""
    done = {}
    for p in sorted((out / "shards").glob("*.json")):
        if p.name.startswith(".") or not p.stem.isdigit():
            continue
        try:
            rec = read_json(p, max_bytes=16 << 20, expect=dict, what="shard record")
        except BadInputError as e:
            log.warning("redoing shard %s: %s", p.stem, e)
            continue
        if _shard_ok(out, p, rec, sites if sites is not None else list(rec.get("files") or [])):
            done[int(rec["id"])] = rec
    return done


def _clean_partial(out: Path, mine) -> None:
    """Remove temp files (``.tmp-<pid>`` of write_shard, ``.tmp`` of atomic_write_text) and files
    of unfinished shards owned by this rank."""
    mine = set(mine)
    for p in out.rglob("*"):
        if not p.is_file():
            continue
        stem = p.name.lstrip(".").split(".")[0]
        if stem.isdigit() and int(stem) in mine and (".tmp-" in p.name or p.suffix in
                                                     (".npy", ".parquet", ".tmp")):
            p.unlink(missing_ok=True)


class _Readers:
    """Reader hooks at ``sites`` for the whole harvest; ``run(ids, keep)`` does one forward and
    returns {site: (n, d) rows at kept positions}, stopping after the deepest site."""

    def __init__(self, lm, sites: list):
        self.lm, self.sites = lm, sites
        self.deepest = max(sites, key=lm.site_depth)
        self.early = self.deepest != "final_norm"
        self.got: dict = {}
        self.keep: Optional[torch.Tensor] = None
        self.keys: list = []

    def _reader(self, site):
        def fn(h, run):
            self.got[site] = h[self.keep].detach()  # (n, d)
            if self.early and site == self.deepest:
                raise StopForward
        return fn

    def __enter__(self):
        self.keys = [(s, self.lm._hooks.add(s, self._reader(s), priority=1)) for s in self.sites]
        return self

    def __exit__(self, *exc):
        for s, k in self.keys:
            self.lm._hooks.remove(s, k)
        return False

    def run(self, ids: torch.Tensor, keep: torch.Tensor) -> dict:
        self.got = {}
        self.keep = keep.to(self.lm.device)  # (B, T)
        try:
            with torch.no_grad():
                self.lm.model(input_ids=ids.to(self.lm.device), use_cache=False)
        except StopForward:
            pass
        return self.got


def _manifest(out: Path, lm_info: dict, cfg: HarvestConfig, corpus_info: dict, dtype: str,
              world: int) -> dict:
    done = _done_shards(out, cfg.sites)
    ids = sorted(done)
    if ids != list(range(len(ids))):
        missing = sorted(set(range(max(ids) + 1)) - set(ids)) if ids else []
        raise RuntimeError(f"{out}: shards {missing[:10]} are missing; run the same harvest again "
                           "to resume it")
    shards = [{k: v for k, v in done[i].items() if k != "stats"} for i in ids]
    stats = {}
    d = lm_info["d_model"]
    for s in cfg.sites:
        n = sum(done[i]["rows"] for i in ids)
        tot = np.sum([done[i]["stats"][s]["sum"] for i in ids], axis=0) if ids else np.zeros(d)
        sq = sum(done[i]["stats"][s]["sum_sq_norm"] for i in ids)
        rms = math.sqrt(sq / max(n, 1))
        stats[s] = {"mean": (tot / max(n, 1)).tolist(),
                    "mean_norm": sum(done[i]["stats"][s]["sum_norm"] for i in ids) / max(n, 1),
                    "rms_norm": rms, "max_norm": max((done[i]["stats"][s]["max_norm"]
                                                      for i in ids), default=0.0),
                    "norm_scale": math.sqrt(d) / rms if rms else 1.0}
    tok_hash = hashlib.sha256("".join(done[i]["token_sha256"] for i in ids).encode()).hexdigest()
    return {"format": FORMAT, **lm_info, "sites": list(cfg.sites),
            "site": cfg.sites[0] if len(cfg.sites) == 1 else None, "dtype": dtype,
            "n_tokens": sum(sh["rows"] for sh in shards),
            "n_tokens_processed": sum(sh["tokens"] for sh in shards),
            "n_windows": sum(sh["windows"][1] - sh["windows"][0] for sh in shards),
            "n_shards": len(shards), "window": asdict(cfg.window), "shard_tokens": cfg.shard_tokens,
            "corpus": corpus_info, "tokens_sha256": tok_hash, "world_size": world,
            "roles": list(ROLES), "stats": stats, "shards": shards,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "versions": {"torch": torch.__version__, "mindscope": _version()}}


def _version() -> str:
    try:
        from .. import __version__
        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


def harvest(lm, out: Union[str, Path], sites: Union[str, Sequence[str]],
            corpus: Union[str, Path, Corpus, None] = "default", n_tokens: int = 2_000_000,
            window: Union[int, WindowConfig] = 128, batch_size: Optional[int] = None,
            shard_tokens: int = 32768, store_dtype: Optional[str] = None,
            progress: bool = True, **window_kw) -> ActivationStore:
    """Run ``lm`` over ``n_tokens`` of ``corpus`` and store ``sites`` under ``out``; resumes a
    partial harvest in ``out`` (same settings). Under torch.distributed each rank does its
    shards and rank 0 writes ``manifest.json``. Returns the ``ActivationStore`` (every rank).
    ``out`` is locked (``<out>/.lock``, by rank 0): a second harvest into it raises
    ``RunLockedError``."""
    lock = run_lock(out, "harvest").acquire() if _dist()[0] == 0 else None
    try:
        return _harvest(lm, out, sites, corpus, n_tokens, window, batch_size, shard_tokens,
                        store_dtype, progress, **window_kw)
    finally:
        if lock is not None:
            lock.release()


def _harvest(lm, out, sites, corpus, n_tokens, window, batch_size, shard_tokens, store_dtype,
             progress, **window_kw) -> ActivationStore:
    wcfg = window if isinstance(window, WindowConfig) else WindowConfig(length=int(window),
                                                                        **window_kw)
    cfg = HarvestConfig(sites=lm.expand_sites(sites), n_tokens=n_tokens, window=wcfg,
                        batch_size=batch_size, shard_tokens=shard_tokens, store_dtype=store_dtype)
    corpus = open_corpus(corpus)
    rank, world = _dist()
    out = Path(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    dtype = cfg.store_dtype or {v: k for k, v in _DTYPES.items()}.get(lm.dtype, "float32")
    sdtype = _DTYPES[dtype]
    lm_info = {"model": lm.name, "family": lm.family, "n_layers": lm.n_layers,
               "d_model": lm.d_model, "compute_dtype": str(lm.dtype).replace("torch.", "")}
    fp = corpus.fingerprint()
    record = {"lm": lm_info, "config": {**asdict(cfg), "window": asdict(wcfg)}, "dtype": dtype,
              "corpus_fingerprint": fp, "format": FORMAT}
    rec_path = out / "harvest.json"
    if rec_path.exists():
        old = read_json(rec_path, expect=dict, what="harvest record",
                        fix="it is damaged; delete the folder and harvest again, or use a new "
                            "--out folder")
        keys = ("lm", "dtype", "corpus_fingerprint")
        old_c = old.get("config")
        old_c = {k: v for k, v in old_c.items() if k != "batch_size"} if isinstance(old_c, dict) \
            else None
        new_c = {k: v for k, v in record["config"].items() if k != "batch_size"}
        if any(old.get(k) != record[k] for k in keys) or old_c != new_c:
            raise ValueError(f"{out} holds a harvest with other settings ({rec_path}); resume "
                             "with the same model, sites, corpus, tokens and window, or use a new "
                             "--out folder")
    else:
        atomic_write_text(rec_path, json.dumps(record, indent=1))
    done = _done_shards(out, cfg.sites)
    encode, per_call = None, 64
    if world > 1:
        # every rank must see the same finished shards before any writes a new one
        torch.distributed.barrier()
        # Tokenizing is shared: each rank encodes 1/world of the documents and the ranks swap
        # ids over a CPU group (gloo even when the model runs on NCCL).
        group = None if torch.distributed.get_backend() == "gloo" else \
            torch.distributed.new_group(backend="gloo")
        encode, per_call = RankEncoder(lm.tokenizer, rank, world, group), 64 * world
    mine = [k for k in range(cfg.n_shards) if k % world == rank]
    todo = [k for k in mine if k not in done]
    todo_all = [k for k in range(cfg.n_shards) if k not in done]
    _clean_partial(out, todo)
    if done:
        log.info("resuming %s: %d shards done, %d to do on rank %d", out, len(done), len(todo), rank)
    B = cfg.batch_size or auto_batch_size(lm, wcfg.length)
    W = cfg.shard_windows
    todo_set = set(todo)
    # all ranks read the stream to the same end (the shared tokenizer needs every rank)
    last = (max(todo_all) + 1) * W if todo_all else 0
    readers = _Readers(lm, cfg.sites)
    writer = _Writer(out, cfg.sites, dtype)
    writer.start()
    batches: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()

    def produce():
        # Batches never cross shards; the batch holding a shard's last window is ``final``.
        try:
            shard, buf = None, []
            n_win = min(last, cfg.n_windows)
            for w in iter_windows(corpus, lm.tokenizer, wcfg, n_windows=n_win,
                                  want=lambda i: i // W in todo_set, encode=encode,
                                  docs_per_call=per_call):
                if stop.is_set():
                    return
                k = w.index // W
                if shard is not None and k != shard:  # previous shard ended early (unlikely)
                    batches.put((shard, buf, True))
                    buf = []
                shard = k
                buf.append(w)
                final = w.index + 1 == min((k + 1) * W, n_win)
                if len(buf) == B or final:
                    batches.put((shard, buf, final))
                    buf = []
                    shard = None if final else shard
            if shard is not None:  # the corpus ended inside a shard
                batches.put((shard, buf, True))
            batches.put(None)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            batches.put(e)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    total = sum(min((k + 1) * W, cfg.n_windows) - k * W for k in todo) * wcfg.length
    bar = tqdm(total=total, unit="tok", unit_scale=True, desc=f"harvest r{rank}" if world > 1
               else "harvest", disable=not progress, smoothing=0.1)
    parts: dict = {s: [] for s in cfg.sites}
    meta: dict = {k: [] for k in ("doc", "pos", "token", "role", "window", "all_ids")}
    first = None
    try:
        readers.__enter__()
        while True:
            item = batches.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            k, ws, final = item
            if ws:
                ids = torch.from_numpy(np.stack([w.ids for w in ws]))  # (b, L)
                keep = torch.from_numpy(keep_mask(ids.numpy(), wcfg, lm.tokenizer))  # (b, L)
                got = readers.run(ids, keep)
                for s in cfg.sites:
                    parts[s].append(got[s].to("cpu", sdtype))
                kn = keep.numpy()
                meta["doc"].append(np.stack([w.doc for w in ws])[kn])
                meta["pos"].append(np.broadcast_to(np.arange(wcfg.length), kn.shape)[kn])
                meta["token"].append(ids.numpy()[kn])
                meta["role"].append(np.stack([w.role for w in ws])[kn])
                meta["window"].append(np.repeat([w.index for w in ws], wcfg.length)
                                      .reshape(kn.shape)[kn])
                meta["all_ids"].append(ids.numpy().ravel())
                first = ws[0].index if first is None else first
                last_w = ws[-1].index
                bar.update(ids.numel())
            if final and first is not None:
                acts = {s: torch.cat(v) for s, v in parts.items()}
                m = {key: np.concatenate(v) for key, v in meta.items()}
                m["n_tokens"] = m["all_ids"].size
                writer.put((k, (first, last_w + 1), acts, m))
                parts = {s: [] for s in cfg.sites}
                meta = {key: [] for key in meta}
                first = None
    finally:
        readers.__exit__()
        stop.set()
        bar.close()
        writer.q.put(None)
        writer.join()
        while producer.is_alive():  # unblock a producer waiting on a full queue
            try:
                batches.get_nowait()
            except queue.Empty:
                producer.join(0.05)
    if writer.error is not None:
        raise writer.error
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        manifest = _manifest(out, lm_info, cfg, {"fingerprint": fp, "files": len(corpus.files()),
                                                 "bad_records": corpus.bad.to_dict()}, dtype, world)
        atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
        log.info("harvest done: %d rows of %s in %s", manifest["n_tokens"], cfg.sites, out)
    if world > 1:
        torch.distributed.barrier()
    return ActivationStore.open(out)
