"""On-disk activation store and its shuffled, memory-bounded reader.

Layout of a store folder::

    manifest.json                 model, sites, d_model, dtype, counts, corpus hash, stats, shards
    harvest.json                  the settings of the harvest (checked on resume)
    shards/000012.json            one per finished shard: rows, files, sizes, sha256, stat sums
    acts/<site>/000012.npy        (rows, d) activations, memory-mappable (bf16 kept as uint16 bits)
    meta/000012.parquet           per row: doc, pos, token, role, window

>>> # store = ActivationStore.open("acts/smollm2-l15")
>>> # for x in store.reader(batch_size=4096, epochs=2): ...   # x: (4096, d) float32
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from ..core import BadInputError, inside, need, need_int, read_json

log = logging.getLogger(__name__)
FORMAT = "mindscope.activations/1"
_HASH_MULT = 2654435761


class CorruptStoreError(BadInputError, RuntimeError):
    """A shard is missing, truncated, unreadable, of the wrong dtype/shape, holds NaN/Inf, or
    does not match its recorded checksum (a BadInputError, and a RuntimeError as before)."""


_NP_DTYPES = {"float32": np.float32, "bfloat16": np.uint16, "float16": np.float16}
_FIX = ("delete that shard's json under shards/ and run the same harvest command again to "
        "rebuild it")


def check_manifest(mf: Path, m: dict) -> None:
    """Validate a manifest's structure (types, ranges, one file entry per site and shard, file
    paths inside the store) so later reads cannot fail obscurely; BadInputError naming ``mf``."""
    sites = need(m, "sites", list, mf)
    if not sites or not all(isinstance(x, str) and x for x in sites) or len(set(sites)) != len(sites):
        raise BadInputError(mf, f"field 'sites' should be a non-empty list of distinct site names, "
                                f"got {sites!r:.80}")
    d = need_int(m, "d_model", mf, 1, 1 << 20)
    dtype = need(m, "dtype", str, mf)
    if dtype not in _NP_DTYPES:
        raise BadInputError(mf, f"field 'dtype' is {dtype!r:.40}; expected one of {list(_NP_DTYPES)}")
    need_int(m, "n_tokens", mf, 0, 1 << 50)
    shards = need(m, "shards", list, mf)
    if not shards:
        raise BadInputError(mf, "the store holds no shards (did the corpus give no tokens?)",
                            "harvest again with a corpus that has text")
    for i, sh in enumerate(shards):
        what = f"shards[{i}]"
        need_int(sh, "rows", mf, 0, 1 << 40, what)
        files = need(sh, "files", dict, mf, what)
        missing = [x for x in sites if x not in files]
        if missing:
            raise BadInputError(mf, f"{what} has no file for site(s) {missing}")
        rows = sh["rows"]
        for j, f in enumerate([files[x] for x in sites] + [need(sh, "meta", dict, mf, what)]):
            inside(mf.parent, need(f, "path", str, mf, what), mf, f"{what} file")
            n = need_int(f, "bytes", mf, 0, 1 << 50, what)
            need(f, "sha256", str, mf, what)
            body = rows * d * np.dtype(_NP_DTYPES[dtype]).itemsize
            if j < len(sites) and not body < n <= body + (1 << 17):  # .npy = header + rows*d
                raise BadInputError(mf, f"{what} claims {rows} rows of d={d} {dtype} in a "
                                        f"{n}-byte file: the numbers do not fit together")
    stats = need(m, "stats", dict, mf)
    for x in sites:
        st = need(stats, x, dict, mf, "stats")
        mean = need(st, "mean", list, mf, f"stats.{x}")
        if len(mean) != d or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                     for v in mean):
            raise BadInputError(mf, f"stats.{x}.mean should be {d} numbers")
        for k in ("mean_norm", "rms_norm", "max_norm", "norm_scale"):
            need(st, k, (int, float), mf, f"stats.{x}")


def shard_name(k: int) -> str:
    return f"{k:06d}"


def site_dir(site: str) -> str:
    return site.replace("/", "_")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _unit_hash(x: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic pseudo-random numbers in [0, 1) from integers (for splits)."""
    x = (x.astype(np.uint64) + np.uint64(salt)) * np.uint64(_HASH_MULT)
    return ((x % np.uint64(1 << 32)).astype(np.float64)) / float(1 << 32)


def to_float32(arr: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(np.array(arr))  # a copy: shards are read-only memory maps
    if dtype == "bfloat16":
        t = t.view(torch.bfloat16)
    return t.float()


class ActivationStore:
    """A finished harvest. ``ActivationStore.open(path)``; ``.manifest``; ``.reader(...)``."""

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self.shards: list[dict] = manifest["shards"]

    @classmethod
    def open(cls, path, check_sizes: bool = True) -> "ActivationStore":
        """Open a store; checks that every shard file exists with its recorded size."""
        path = Path(path)
        mf = path / "manifest.json"
        if not mf.exists():
            hint = (" It holds finished shards: the harvest was interrupted; run the same "
                    "harvest command again to resume it." if (path / "shards").is_dir() else "")
            raise FileNotFoundError(f"{path} is not an activation store (no manifest.json).{hint}")
        manifest = read_json(mf, expect=dict, what="store manifest",
                             fix="restore it, or run the harvest again into a new folder")
        if manifest.get("format") != FORMAT:
            raise BadInputError(mf, f"unknown store format {str(manifest.get('format'))[:60]!r}; "
                                    f"expected {FORMAT!r}")
        check_manifest(mf, manifest)
        store = cls(path, manifest)
        if check_sizes:
            for sh in store.shards:
                for f in list(sh["files"].values()) + [sh["meta"]]:
                    store._check_file(f, sha=False)
        return store

    def __repr__(self) -> str:
        m = self.manifest
        return (f"ActivationStore({str(self.path)!r}, model={m.get('model')!r}, sites={m['sites']}, "
                f"n_tokens={m['n_tokens']}, d_model={m['d_model']}, dtype={m['dtype']})")

    # ---- basic facts -------------------------------------------------------------------
    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    def _site(self, site: Optional[str]) -> str:
        if site is None:
            if len(self.sites) != 1:
                raise ValueError(f"this store holds several sites {self.sites}; pass site=")
            return self.sites[0]
        if site not in self.sites:
            raise KeyError(f"site {site!r} is not in this store; it holds {self.sites}")
        return site

    def stats(self, site: Optional[str] = None) -> dict:
        """Normalisation statistics of ``site``: mean (d,), mean_norm, rms_norm, max_norm and
        norm_scale = sqrt(d) / rms_norm (multiply to get E||x||^2 = d)."""
        s = dict(self.manifest["stats"][self._site(site)])
        s["mean"] = torch.tensor(s["mean"], dtype=torch.float32)
        return s

    # ---- files -------------------------------------------------------------------------
    def _check_file(self, f: dict, sha: bool) -> Path:
        p = inside(self.path, f["path"], self.path / "manifest.json", "shard file")
        if not p.exists():
            raise CorruptStoreError(f"shard file {p} is missing; {_FIX}")
        size = p.stat().st_size
        if size != f["bytes"]:
            raise CorruptStoreError(f"shard file {p} has {size} bytes, the manifest says "
                                    f"{f['bytes']} (truncated or replaced); {_FIX}")
        if sha and file_sha256(p) != f["sha256"]:
            raise CorruptStoreError(f"shard file {p} does not match its sha256 (corrupt); {_FIX}")
        return p

    def load(self, site: Optional[str] = None, shard: int = 0, verify: bool = False) -> np.ndarray:
        """Raw (rows, d) array of one shard, memory-mapped (bf16 is stored as uint16); its
        dtype and shape are checked against the manifest (never unpickled)."""
        site = self._site(site)
        p = self._check_file(self.shards[shard]["files"][site], sha=verify)
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError, SyntaxError) as e:
            raise CorruptStoreError(p, f"is not a readable .npy array ({str(e)[:120]})",
                                    _FIX) from None
        want = np.dtype(_NP_DTYPES[self.manifest["dtype"]])
        if arr.dtype != want:
            raise CorruptStoreError(p, f"holds dtype {arr.dtype}, the manifest's "
                                       f"{self.manifest['dtype']} store needs {want}", _FIX)
        shape = (self.shards[shard]["rows"], self.d_model)
        if arr.shape != shape:
            raise CorruptStoreError(p, f"has shape {arr.shape}, the manifest says {shape}", _FIX)
        return arr

    def activations(self, site: Optional[str] = None, shard: Optional[int] = None) -> torch.Tensor:
        """(rows, d) float32 of one shard, or of the whole store (small stores only)."""
        ks = range(len(self.shards)) if shard is None else [shard]
        site = self._site(site)
        return torch.cat([self._finite(to_float32(self.load(site, k), self.manifest["dtype"]),
                                       site, k) for k in ks])

    def _finite(self, x: torch.Tensor, site: str, k: int, row0: int = 0) -> torch.Tensor:
        """``x`` if it has no NaN/Inf, else CorruptStoreError naming the shard file and row.
        (A sum is ~50x cheaper than isfinite; NaN/Inf anywhere makes it non-finite.)"""
        if bool(torch.isfinite(x.sum())):
            return x
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            r = int(bad.any(-1).nonzero()[0, 0]) + row0
            p = self.path / self.shards[k]["files"][site]["path"]
            raise CorruptStoreError(p, f"holds {int(bad.sum())} NaN/Inf value(s) (first at row "
                                       f"{r})", "the model overflowed while harvesting (harvest "
                                       "in float32) or the file was damaged; " + _FIX)
        return x

    def metadata(self, shard: Optional[int] = None, columns=None):
        """Token metadata (pyarrow Table: doc, pos, token, role, window) of one shard or all."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        ks = range(len(self.shards)) if shard is None else [shard]
        tables = []
        for k in ks:
            p = self._check_file(self.shards[k]["meta"], False)
            try:
                t = pq.read_table(p, columns=columns)
            except (pa.ArrowException, OSError, ValueError) as e:
                raise CorruptStoreError(p, f"is not a readable metadata table ({str(e)[:120]})",
                                        _FIX) from None
            if t.num_rows != self.shards[k]["rows"]:
                raise CorruptStoreError(p, f"has {t.num_rows} rows, the manifest says "
                                           f"{self.shards[k]['rows']}", _FIX)
            tables.append(t)
        try:
            return pa.concat_tables(tables)
        except pa.ArrowException as e:
            raise CorruptStoreError(self.path / "meta", f"metadata tables disagree ({e})",
                                    _FIX) from None

    def verify(self) -> None:
        """Check every shard file's size and sha256; raises CorruptStoreError."""
        for sh in self.shards:
            for f in list(sh["files"].values()) + [sh["meta"]]:
                self._check_file(f, sha=True)

    # ---- reading -----------------------------------------------------------------------
    def reader(self, batch_size: int, site: Optional[str] = None, shuffle: bool = True,
               seed: int = 0, split: str = "train", epochs: int = 1, **kw) -> "StoreReader":
        """Batches (batch_size, d) float32. See ``StoreReader`` for the other options."""
        return StoreReader(self, batch_size, self._site(site), shuffle, seed, split, epochs, **kw)

    def paired_reader(self, batch_size: int, inputs, outputs, shuffle: bool = True,
                      seed: int = 0, split: str = "train", epochs: int = 1,
                      **kw) -> "StoreReader":
        """Batches ``(x, y)`` of the same token rows at input and output sites, shuffled together
        (for transcoders): x is (B, d) for one input site or (B, n_in, d) for a list, y likewise
        for ``outputs``. Memory is bounded as in ``reader`` (the buffer holds every site).

        >>> # for x, y in store.paired_reader(4096, "mlp_in.3", "mlp_out.3"): ...  # (4096, d) each
        >>> # for x, y in store.paired_reader(4096, ins, outs): ...  # (4096, n_layers, d) each
        """
        groups = []
        for g in (inputs, outputs):
            one = isinstance(g, str)
            names = [g] if one else list(g)
            if not names:
                raise ValueError("paired_reader needs at least one input and one output site")
            groups.append((one, [self._site(x) for x in names]))
        return StoreReader(self, batch_size, groups, shuffle, seed, split, epochs, **kw)


def pa_errors():
    import pyarrow as pa

    return pa.ArrowException


class StoreReader:
    """Iterates (B, d) float32 batches over the shards of one site, or ``(x, y)`` pairs of
    several sites read at the same rows (``ActivationStore.paired_reader``).

    - shuffle: shard order is permuted per epoch; rows pass through a shuffle buffer of
      ``buffer_rows`` rows (memory stays ~``buffer_rows * d * 4`` bytes whatever the store size;
      with several sites the buffer holds ``buffer_rows / n_sites`` rows of every site).
    - split: 'train' or 'heldout', by document (``split_by="document"``, default: a document's
      rows are all on one side) or by shard; ``heldout_fraction`` of documents/shards, chosen by a
      fixed hash, so every run and every reader agree.
    - the last partial batch of an epoch is yielded unless ``drop_last``.
    - ``verify="size"`` (default) checks file sizes, ``"sha256"`` also hashes each shard on its
      first read.
    - part=(rank, world): read only shards ``k % world == rank`` (data-parallel training)."""

    def __init__(self, store: ActivationStore, batch_size: int, site: str, shuffle: bool = True,
                 seed: int = 0, split: str = "train", epochs: int = 1, buffer_rows: int = 65536,
                 heldout_fraction: float = 0.05, split_by: str = "document",
                 drop_last: bool = False, device="cpu", verify: str = "size",
                 part: tuple = (0, 1)):
        if split not in ("train", "heldout", "all"):
            raise ValueError(f"split must be 'train', 'heldout' or 'all', not {split!r}")
        if split_by not in ("document", "shard"):
            raise ValueError(f"split_by must be 'document' or 'shard', not {split_by!r}")
        if batch_size < 1 or epochs < 1:
            raise ValueError("batch_size and epochs must be >= 1")
        if not 0.0 <= heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
        if verify not in ("size", "sha256"):
            raise ValueError(f"verify must be 'size' or 'sha256', not {verify!r}")
        self.store, self.batch_size, self.site = store, batch_size, site
        # paired mode: site = [(single?, [sites]), (single?, [sites])]; rows read at every site
        self.groups = site if isinstance(site, list) else None
        self.all_sites = ([x for _, g in self.groups for x in g] if self.groups else [site])
        self.shuffle, self.seed, self.split, self.epochs = shuffle, seed, split, epochs
        self.buffer_rows = max(int(buffer_rows), batch_size)
        self.heldout_fraction, self.split_by = heldout_fraction, split_by
        self.drop_last, self.device, self.verify = drop_last, torch.device(device), verify
        rank, world = (int(v) for v in part)
        if not 0 <= rank < world:
            raise ValueError(f"part=(rank, world) needs 0 <= rank < world, got {part}")
        self.part = (rank, world)
        self.peak_buffer_rows = 0
        self._rows: Optional[list] = None
        self._verified: set = set()

    def _heldout_shards(self) -> set:
        n = len(self.store.shards)
        u = _unit_hash(np.arange(n), 7)
        held = set(np.nonzero(u < self.heldout_fraction)[0].tolist())
        if not held and n >= 2 and self.heldout_fraction > 0:
            held = {n - 1}
        return held

    def rows(self) -> list[Optional[np.ndarray]]:
        """Selected row indices per shard (None: the whole shard)."""
        if self._rows is not None:
            return self._rows
        out: list = []
        held = self._heldout_shards() if self.split_by == "shard" else set()
        rank, world = self.part
        for k, sh in enumerate(self.store.shards):
            if k % world != rank:               # another data-parallel rank's shard: never read
                out.append(np.arange(0))
            elif self.split == "all":
                out.append(np.arange(sh["rows"]))
            elif self.split_by == "shard":
                side = "heldout" if k in held else "train"
                out.append(np.arange(sh["rows"]) if side == self.split else np.arange(0))
            else:
                try:
                    doc = self.store.metadata(k, columns=["doc"]).column("doc").to_numpy()
                except (KeyError, pa_errors()) as e:
                    raise CorruptStoreError(self.store.path / self.store.shards[k]["meta"]["path"],
                                            f"has no usable 'doc' column ({e})", _FIX) from None
                is_held = (_unit_hash(doc, 13) < self.heldout_fraction) & (doc >= 0)
                out.append(np.nonzero(is_held if self.split == "heldout" else ~is_held)[0])
        self._rows = out
        return out

    def n_rows(self) -> int:
        return int(sum(len(r) for r in self.rows()))

    def __len__(self) -> int:
        n = self.n_rows()
        per = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return per * self.epochs

    def _chunks(self, order, rng) -> Iterator[torch.Tensor]:
        """(n, S, d) chunks: the same rows at each of the S sites of ``all_sites``."""
        dtype = self.store.manifest["dtype"]
        per_row = len(self.all_sites)
        chunk = max(self.batch_size, self.buffer_rows // (4 * per_row))  # rows of every site
        for k in order:
            idx = self.rows()[k]
            if len(idx) == 0:
                continue
            verify = self.verify == "sha256" and k not in self._verified
            arrs = [self.store.load(s, k, verify=verify) for s in self.all_sites]
            self._verified.add(k)
            starts = list(range(0, len(idx), chunk))
            if self.shuffle:
                rng.shuffle(starts)
            for a in starts:
                yield torch.stack([self.store._finite(to_float32(arr[idx[a:a + chunk]], dtype), s,
                                                      k, int(idx[a]))
                                   for s, arr in zip(self.all_sites, arrs)], 1)  # (n, S, d)

    def _out(self, x: torch.Tensor):
        """A batch (B, S, d) as the caller sees it: (B, d), or (x, y) in paired mode."""
        x = x.to(self.device)
        if self.groups is None:
            return x[:, 0]
        (one_in, ins), (one_out, _) = self.groups
        a, b = x[:, :len(ins)], x[:, len(ins):]
        return (a[:, 0] if one_in else a, b[:, 0] if one_out else b)

    def __iter__(self) -> Iterator[torch.Tensor]:
        B = self.batch_size
        cap = max(B, self.buffer_rows // len(self.all_sites))  # rows x sites <= buffer_rows
        for epoch in range(self.epochs):
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.store.shards)) if self.shuffle else \
                range(len(self.store.shards))
            gen = torch.Generator().manual_seed(int(rng.integers(1 << 62)))
            buf: list[torch.Tensor] = []
            n = 0
            for x in self._chunks(order, rng):
                buf.append(x)
                n += x.shape[0]
                self.peak_buffer_rows = max(self.peak_buffer_rows, n)
                if n >= cap or not self.shuffle:
                    data = torch.cat(buf)
                    if self.shuffle:
                        data = data[torch.randperm(n, generator=gen)]
                    keep = cap // 2 if self.shuffle else 0
                    n_out = max(0, (n - keep) // B * B)
                    for a in range(0, n_out, B):
                        yield self._out(data[a:a + B])
                    buf, n = [data[n_out:]], n - n_out
            if n:
                data = torch.cat(buf)
                if self.shuffle:
                    data = data[torch.randperm(n, generator=gen)]
                for a in range(0, n, B):
                    if a + B <= n or not self.drop_last:
                        yield self._out(data[a:a + B])
