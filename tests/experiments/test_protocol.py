"""The protocol registry: every protocol package registers run(lm, cfg, out_dir) with a
documented Config (+ quick()); the summary formatter; `mindscope protocols`."""
import inspect

from typer.testing import CliRunner

from mindscope.experiments import config_fields, format_value, protocols
from mindscope.runs import mean_ci, wilson


def test_registry_lists_every_protocol_package_with_the_one_interface():
    reg = protocols()
    assert sorted(reg) == ["binding", "emotions", "introspection", "onpolicy", "persona"]
    for name, p in reg.items():
        params = list(inspect.signature(p.run).parameters)
        assert params[0] == "lm" and params[2] == "out_dir", (name, params)
        assert callable(getattr(p.config, "quick", None)), name
        assert p.config.quick() is not None
        fields = config_fields(p.config)
        assert fields and all(f.doc for f in fields), (name, [f.name for f in fields if not f.doc])


def test_config_fields_reads_the_docstring_under_each_field():
    from mindscope.experiments import binding

    f = {x.name: x for x in config_fields(binding.Config)}
    assert f["n_stories"].default == 120
    assert f["n_stories"].doc == "Stories for probe training/testing (split by story)."


def test_format_value_rounds_and_shows_intervals():
    w = wilson(3, 10)
    assert format_value(w) == f"0.300 [{w['lo']:.3f}, {w['hi']:.3f}]"
    m = mean_ci([1.0, 2.0, 3.0])
    assert format_value(m) == f"2 [{m['lo']:.3g}, {m['hi']:.3g}]"
    assert format_value({"mean": 0.123456, "ci": [0.1, 0.2], "n": 3}) == "0.123 [0.1, 0.2]"
    assert format_value(2 / 3) == "0.667" and format_value("L3") == "L3"
    assert format_value(None) == "–"


def test_protocols_command_lists_the_registry():
    from mindscope.cli import app

    r = CliRunner().invoke(app, ["protocols"])
    assert r.exit_code == 0, r.output
    for name in protocols():
        assert name in r.output
    r = CliRunner().invoke(app, ["protocols", "persona"])
    assert r.exit_code == 0 and "n_roles" in r.output
    r = CliRunner().invoke(app, ["protocols", "nope"])
    assert r.exit_code != 0 and "unknown protocol" in r.output


def test_results_show_a_short_repr_and_a_notebook_table():
    """Every protocol's Result displays its summary rows (not a dump of its arrays)."""
    import dataclasses
    import importlib

    import torch

    from mindscope.experiments._protocol import ResultDisplay, protocols

    for name, spec in protocols().items():
        cls = importlib.import_module(spec.module).Result
        assert issubclass(cls, ResultDisplay) and cls.__repr__ is ResultDisplay.__repr__, name

    @dataclasses.dataclass(repr=False)
    class Result(ResultDisplay):
        acts: torch.Tensor

        def summary_rows(self):
            return [{"metric": "auc <held-out>", "value": {"auc": 0.91234, "ci": [0.8, 0.97]}},
                    {"metric": "n", "value": 40}, {"metric": "fpr", "value": 0.1},
                    {"metric": "tpr", "value": 0.5}]

    r = Result(torch.randn(1000, 64))
    text = repr(r)
    assert text.startswith("test_protocol.Result(auc <held-out> = 0.912 [0.8") and "1 more" in text
    assert "tensor" not in text and len(text) < 200
    html = r._repr_html_()
    assert "auc &lt;held-out&gt;" in html and html.count("<tr>") == 5
