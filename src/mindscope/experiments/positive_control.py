"""Run a protocol's positive control from the shell (``experiments._control.run_control``).

``python -m mindscope.experiments.positive_control PROTOCOL [--quick] [--seeds 0 1 2]
[--strengths 0.5 1] [--set key=value ...] [-m MODEL] -o runs/controls/PROTOCOL``

runs the protocol on the untouched model and on the planted model at each strength and seed,
each run in its own folder (a killed control resumes), then prints ``control.md``.
``mindscope <protocol> --control`` does the same from the CLI.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from ._control import controls, run_control
from ._protocol import protocols
from .seeds import _parse_sets


def control_args(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every control command takes: --seeds, --strengths, --quick, --set, -m, -o
    (``config_from_args`` turns --quick / --set into a protocol config)."""
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="protocol seeds (default: the config's)")
    ap.add_argument("--strengths", type=float, nargs="+", default=None,
                    help="planted strengths (default: the control's)")
    ap.add_argument("--quick", action="store_true", help="start from Config.quick()")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="a Config field as key=value (JSON value), repeatable")
    ap.add_argument("-m", "--model", default="smollm2-135m-instruct")
    ap.add_argument("-o", "--out", required=True)
    return ap


def config_from_args(config_cls, a: argparse.Namespace):
    """``config_cls.quick(**sets)`` with --quick, else ``config_cls(**sets)``."""
    over = _parse_sets(a.sets)
    return config_cls.quick(**over) if a.quick else config_cls(**over)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mindscope.experiments.positive_control",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("protocol")
    a = control_args(ap).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import mindscope as ms

    spec = protocols().get(a.protocol)
    if spec is None or a.protocol not in controls():
        ap.error(f"no positive control for {a.protocol!r}; controls: {', '.join(controls())}")
    cfg = config_from_args(spec.config, a)
    lm = ms.load(a.model)
    res = run_control(a.protocol, lm, cfg, Path(a.out), a.strengths, a.seeds)
    print((Path(a.out) / "control.md").read_text(encoding="utf-8"))
    return 0 if res.passed else 1


if __name__ == "__main__":
    sys.exit(main())
