"""Two models' headline tables side by side (experiments.compare, issue 24)."""
import json

import pytest

from mindscope.experiments.compare import main


def _folder(root, model, fmt, rows, seeds=(0,)):
    d = root / model
    for s in seeds:
        (d / f"seed{s}").mkdir(parents=True)
        (d / f"seed{s}" / "run_config.json").write_text(json.dumps({"chat_format": fmt}))
    (d / "headline.json").write_text(json.dumps({"model": model, "seeds": list(seeds), "rows": rows}))
    return d


def _row(measure, *vals):
    return {"measure": measure, "per_seed": [{"seed": i, "value": v, "lo": None if len(vals) > 1
                                              else v - 0.1, "hi": None if len(vals) > 1 else v + 0.1,
                                              "n": 10} for i, v in enumerate(vals)]}


def test_side_by_side_table(tmp_path, capsys):
    a = _folder(tmp_path, "instruct", "chat template",
                [_row("AUC at layer 20", 0.8), _row("rate", 0.25)])
    b = _folder(tmp_path, "base", "plain transcript (no chat template)",
                [_row("AUC at layer 12", 0.6, 0.7)], seeds=(0, 1))
    assert main([str(a), str(b)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("| measure | instruct (chat template; seeds [0]) | base (plain transcript "
                        "(no chat template); seeds [0, 1]) |")
    assert lines[2] == "| AUC at layer 20 / AUC at layer 12 | 0.8 [0.7, 0.9] (n=10) | mean 0.65 (s0: 0.6; s1: 0.7) |"
    assert lines[3] == "| rate | 0.25 [0.15, 0.35] (n=10) | – |"


def test_missing_headline_says_what_to_run(tmp_path):
    with pytest.raises(SystemExit, match="mindscope.experiments.seeds"):
        main([str(tmp_path)])
