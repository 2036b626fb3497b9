"""The multi-seed runner's table: per-seed values, across-seed spread, the doc header, and the
GGUF disclosure, from results.json files written the way the protocols write them."""
import json

import pytest

from mindscope.experiments import seeds
from mindscope.runs import mcnemar, seed_spread


def _fake_run(path, seed, k):
    path.mkdir(parents=True)
    r = {"jailbreaks": {"default": {"harmful": {"k": k, "n": 12, "rate": k / 12, "lo": 0.1,
                                                "hi": 0.6}},
                        "capped": {"harmful": {"k": 1, "n": 12, "rate": 1 / 12, "lo": 0.01,
                                               "hi": 0.35}},
                        "mcnemar": {"p": 0.5, "n_pairs": 12}}}
    (path / "results.json").write_text(json.dumps(r))
    (path / "run_config.json").write_text(json.dumps({"model": {
        "name": "smollm2-135m-instruct", "weights": "Q4_1 GGUF, dequantized to float"},
        "seeds": [seed]}))


def test_aggregate_table(tmp_path):
    for s, k in ((0, 3), (1, 6), (2, 4)):
        _fake_run(tmp_path / f"seed{s}", s, k)
    head = seeds.aggregate("persona", tmp_path)
    row = next(r for r in head["rows"] if r["measure"] == "persona-jailbreak harmful rate, default")
    assert row["seeds"] == [0, 1, 2] and row["spread"]["mean"] == pytest.approx(13 / 36)
    assert row["spread"]["sd"] == pytest.approx(seed_spread([3 / 12, 6 / 12, 4 / 12])["sd"])
    md = (tmp_path / "headline.md").read_text()
    assert "| measure | paper | this project (model, n, seeds, interval) | grader agreement |" in md
    assert "Q4_1 GGUF" in md and "3 seeds" in md
    assert json.loads((tmp_path / "headline.json").read_text())["seeds"] == [0, 1, 2]


def test_seed_spread_and_mcnemar_references():
    s = seed_spread([1.0, 2.0, 4.0])
    assert s["mean"] == pytest.approx(7 / 3) and s["lo"] < s["mean"] < s["hi"]
    assert seed_spread([])["n_seeds"] == 0
    # exact McNemar against the binomial by hand: 5 discordant, split 5/0 -> p = 2 * 0.5**5
    a = [True] * 5 + [False] * 5
    b = [False] * 5 + [False] * 5
    assert mcnemar(a, b)["p"] == pytest.approx(2 * 0.5 ** 5)
    with pytest.raises(ValueError, match="equal length"):
        mcnemar([True], [True, False])
