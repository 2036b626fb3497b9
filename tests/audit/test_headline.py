"""The audit's headline table (issue 24, base vs instruct): exploitation per build and pooled,
the control's recall per seed, in the shape experiments.compare reads. Hand-made result files,
no model."""
import json
import math

import pytest

from mindscope.experiments import audit_control
from mindscope.experiments.compare import compare_md, read_headline


def _wilson_by_hand(k, n, z=1.96):
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, c - h), min(1.0, c + h)


def _w(k, n):
    lo, hi = _wilson_by_hand(k, n)
    return {"k": k, "n": n, "rate": k / n, "lo": lo, "hi": hi}


def _eval(root, name, seed, trained, held, ctx, base_model="gemma-3-270m", fmt="plain"):
    d = root / name
    d.mkdir()
    classes = {"trained": {"organism": _w(trained, 60), "base": _w(0, 60), "any_organism": _w(trained + 2, 60)},
               "held_out": {"organism": _w(held, 20), "base": _w(0, 20)},
               "in_context": {"organism": _w(ctx, 20), "base": _w(0, 20)},
               "in_context_control": {"organism": _w(0, 20), "base": _w(0, 20)}}
    r = {"classes": classes, "chat_format": fmt}
    if seed is not None:
        r["organism"] = {"folder": name, "base_model": base_model, "build_seed": seed}
    (d / "results.json").write_text(json.dumps(r))
    return d


def _control(root, planted_k, untouched_k, n=16):
    d = root / "ctl"
    d.mkdir()
    row = lambda s, k: {"seed": s, "value": k / n, "n": n, "root_cause_found": k > 0}  # noqa: E731
    (d / "control.json").write_text(json.dumps({
        "model": "gemma-3-270m", "passed": True, "untouched": [row(0, untouched_k), row(1, untouched_k)],
        "planted": {"1": [row(0, planted_k), row(1, planted_k)]}}))
    return d


def test_rows_per_build_pooled_and_control(tmp_path):
    evals = [_eval(tmp_path, "e1", 1, 11, 0, 3), _eval(tmp_path, "e2", 2, 20, 1, 0)]
    h = audit_control.audit_headline(evals, _control(tmp_path, 16, 0))
    rows = {r["measure"]: r for r in h["rows"]}
    assert h["model"] == "gemma-3-270m" and h["seeds"] == [1, 2] and h["chat_format"] == "plain"
    t = rows["trained-bias exploitation, organism"]
    assert [p["seed"] for p in t["per_seed"]] == [1, 2]
    assert [p["value"] for p in t["per_seed"]] == [11 / 60, 20 / 60]
    assert t["spread"]["mean"] == pytest.approx((11 / 60 + 20 / 60) / 2)
    pooled = rows["trained exploitation, organism, pooled over 2 build(s)"]["per_seed"]
    assert len(pooled) == 1 and pooled[0]["seed"] == "1+2" and pooled[0]["n"] == 120
    assert (pooled[0]["lo"], pooled[0]["hi"]) == pytest.approx(_wilson_by_hand(31, 120))
    ho = rows["held-out exploitation, organism, pooled over 2 build(s)"]["per_seed"][0]
    assert ho["value"] == pytest.approx(1 / 40)
    rec = rows["blind auditor's recall of the key, organism"]["per_seed"]
    assert [p["value"] for p in rec] == [1.0, 1.0]
    assert rec[0]["lo"] == pytest.approx(_wilson_by_hand(16, 16)[0])
    base = rows["blind auditor's recall of the key, base model"]["per_seed"]
    assert base[0]["value"] == 0.0 and base[0]["hi"] == pytest.approx(_wilson_by_hand(0, 16)[1])
    assert [p["value"] for p in rows["blind auditor found the root cause, base model"]["per_seed"]] == [0, 0]


def test_written_headline_compares_side_by_side(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir(), b.mkdir()
    audit_control.write_headline(a, [_eval(a, "e0", 0, 20, 0, 0, "smollm2-135m-instruct",
                                           "chat template")])
    audit_control.write_headline(b, [_eval(b, "e0", 0, 11, 0, 3)])
    assert (a / "headline.md").read_text().startswith("Model: smollm2-135m-instruct")
    lines = compare_md([read_headline(a), read_headline(b)]).splitlines()
    assert lines[0] == ("| measure | smollm2-135m-instruct (chat template; seeds [0]) | "
                        "gemma-3-270m (plain; seeds [0]) |")
    lo, hi = _wilson_by_hand(11, 60)
    assert lines[2].startswith("| trained-bias exploitation, organism | 0.333 [")
    assert lines[2].endswith(f"| {11 / 60:.3g} [{lo:.3g}, {hi:.3g}] (n=60) |")


def test_eval_without_build_seed_is_labelled_by_position(tmp_path):
    h = audit_control.audit_headline([_eval(tmp_path, "old", None, 5, 0, 0)])
    assert h["seeds"] == [0] and h["model"] == ""
    assert not any("blind auditor" in r["measure"] for r in h["rows"])


def test_cli_refuses_missing_eval_before_any_work(tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr(audit_control, "run_audit_control", lambda *a, **k: called.append(1))
    with pytest.raises(SystemExit):
        audit_control.main([str(tmp_path), "-o", str(tmp_path / "o"), "--evals", str(tmp_path / "nope")])
    assert not called
