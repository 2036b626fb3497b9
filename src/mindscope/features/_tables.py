"""``FeatureSet``: the Parquet tables of one analysis, read through DuckDB.

Every ``*.parquet`` file of the folder is a view named after the file (``features``,
``examples``, ``histogram``, ``logits``, ``neighbours``, ``token_features``, and, once written,
``explanations`` and ``scores``).

>>> # fs = FeatureSet("runs/sae/features")
>>> # fs.query("select latent, density from features order by density desc limit 5")  # list[dict]
>>> # fs.feature(12)        # everything the feature page shows, as one dict
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional, Union

from ..core import read_json

TABLES = ("features", "examples", "histogram", "logits", "neighbours", "token_features",
          "background", "background_codes", "explanations", "scores")


class FeatureSet:
    """An analysis folder. ``query(sql)`` -> list of dicts; ``feature(i)`` -> one feature."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        if (self.path / "features" / "features.parquet").exists():  # an SAE folder was given
            self.path = self.path / "features"
        if not (self.path / "features.parquet").exists():
            raise FileNotFoundError(f"{path} holds no feature analysis (no features.parquet); "
                                    "run `mindscope features analyze --sae DIR --store ACTS`")
        info_p = self.path / "analysis.json"
        self.info = read_json(info_p, expect=dict, what="analysis record",
                              fix="run `mindscope features analyze` again to rewrite it") \
            if info_p.exists() else {}
        self._lock = threading.Lock()
        self._con = None
        self._views: tuple = ()

    def __repr__(self) -> str:
        return f"FeatureSet({str(self.path)!r}, n_latents={self.n_latents}, rows={self.info.get('n_rows')})"

    @property
    def n_latents(self) -> int:
        return int(self.info.get("n_latents") or self.query("select count(*) n from features")[0]["n"])

    def tables(self) -> list[str]:
        return [t for t in TABLES if (self.path / f"{t}.parquet").exists()]

    def _connect(self):
        import duckdb

        views = tuple((t, (self.path / f"{t}.parquet").stat().st_mtime_ns) for t in self.tables())
        if self._con is None or views != self._views:
            con = duckdb.connect()
            for t, _ in views:
                p = str(self.path / f"{t}.parquet").replace("'", "''")
                con.execute(f"create or replace view {t} as select * from read_parquet('{p}')")
            self._con, self._views = con, views
        return self._con

    def query(self, sql: str, params: Optional[list] = None) -> list[dict]:
        """Run SQL over the tables (views named after the files); rows as dicts."""
        with self._lock:
            cur = self._connect().execute(sql, params or [])
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]

    def has(self, table: str) -> bool:
        return (self.path / f"{table}.parquet").exists()

    # ---- one feature -------------------------------------------------------------------------
    def feature(self, i: int, n_examples: Optional[int] = None) -> dict:
        """Stats, examples, histogram, logits, neighbours, explanation and scores of latent i."""
        if not 0 <= int(i) < self.n_latents:
            raise IndexError(f"feature {i} out of range: this analysis has {self.n_latents} latents")
        i = int(i)
        rows = self.query("select * from features where latent = ?", [i])
        d = dict(rows[0])
        lim = f" and rank < {int(n_examples)}" if n_examples else ""
        d["top"] = self.query("select * from examples where latent = ? and kind = 'top'" + lim +
                              " order by rank", [i])
        d["quantiles"] = self.query("select * from examples where latent = ? and kind = 'quantile'"
                                    " order by quantile desc, rank", [i])
        d["histogram"] = self.query("select bin, lo, hi, count from histogram where latent = ? "
                                    "order by bin", [i])
        d["promoted"] = d["suppressed"] = []
        if self.has("logits"):
            lg = self.query("select kind, rank, token, token_str, value from logits where "
                            "latent = ? order by kind, rank", [i])
            d["promoted"] = [r for r in lg if r["kind"] == "promoted"]
            d["suppressed"] = [r for r in lg if r["kind"] == "suppressed"]
        d["neighbours"] = self.query(
            "select n.neighbour, n.cosine, f.density from neighbours n join features f on "
            "f.latent = n.neighbour where n.latent = ? order by n.rank", [i])
        d["explanation"] = None
        if self.has("explanations"):
            e = self.query("select * from explanations where latent = ?", [i])
            d["explanation"] = e[0] if e else None
        d["scores"] = self.query("select * from scores where latent = ? order by scorer", [i]) \
            if self.has("scores") else []
        return d

    def feature_list(self, sort: str = "latent", desc: bool = False, min_density: float = 0.0,
                     max_density: float = 1.0, search: str = "", limit: Optional[int] = None,
                     offset: int = 0) -> list[dict]:
        """Rows for the feature list: stats + explanation + detection score; filtered/sorted."""
        sorts = {"latent": "f.latent", "density": "f.density", "max_act": "f.max_act",
                 "mean_act": "f.mean_act", "score": "score"}
        if sort not in sorts:
            raise ValueError(f"sort must be one of {sorted(sorts)}, not {sort!r}")
        expl = ("e.explanation" if self.has("explanations") else "null::varchar")
        score = ("(select avg(s.accuracy) from scores s where s.latent = f.latent and "
                 "s.scorer = 'detection')" if self.has("scores") else "null::double")
        join = " left join explanations e on e.latent = f.latent" if self.has("explanations") else ""
        sql = (f"select f.latent, f.density, f.max_act, f.mean_act, f.top_logits, {expl} "
               f"explanation, {score} score from features f{join} where f.density >= ? and "
               f"f.density <= ?")
        params: list = [float(min_density), float(max_density)]
        if search:
            sql += f" and ({expl} ilike ? or f.top_logits ilike ?)"
            params += [f"%{search}%", f"%{search}%"]
        sql += f" order by {sorts[sort]} {'desc' if desc else 'asc'} nulls last, f.latent"
        if limit is not None:
            sql += f" limit {int(limit)} offset {int(offset)}"
        return self.query(sql, params)
