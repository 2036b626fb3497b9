"""The tiny HTML builder and the exports."""
import json
import re
import time

import matplotlib
import pytest

matplotlib.use("Agg")

from mindscope.report import Page, export_html, export_neuronpedia, png, table, tokens  # noqa: E402


def test_page_escapes_and_embeds(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    p = Page("<t>", subtitle="a & b")
    p.section("S", table([{"x": "<b>", "y": 1.23456789, "z": None}], raw=[]), png(fig, "plot"))
    p.text("<script>alert(1)</script>")
    p.add(tokens(["<a>", "\n"], [1.0, 0.0], center=0))
    html = p.render()
    assert "<t>" not in html and "&lt;t&gt;" in html and "a &amp; b" in html
    assert "&lt;script&gt;" in html and "<script>alert" not in html
    assert "data:image/png;base64," in html and "1.235" in html and "↵" in html
    assert 'class="tok ctr"' in html
    out = p.save(tmp_path / "r.html")
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert table([]) == '<p class="note">(none)</p>'


def test_exports(browser_env, tmp_path):
    fs = browser_env["fs"]
    idx = export_html(browser_env["sae_dir"], tmp_path / "html", progress=False)
    fired = fs.query("select count(*) n from features where count > 0")[0]["n"]
    assert len(list((tmp_path / "html").glob("feature-*.html"))) == fired
    assert "live-only.html" in idx.read_text()
    paths = export_neuronpedia(browser_env["sae_dir"], tmp_path / "np", batch_size=20,
                               progress=False)
    assert len(paths) == 3
    b = json.loads(paths[0].read_text())
    assert b["layer"] == 2 and b["model_id"] == fs.info["model"] and len(b["features"]) == 20
    f = b["features"][3]
    d = fs.feature(3)
    assert f["feature_index"] == 3 and f["frac_nonzero"] == d["density"]
    assert f["pos_str"] == [r["token_str"] for r in d["promoted"]]
    assert sum(f["freq_hist_data_bar_heights"]) == d["count"]
    for a in f["activations"]:
        assert len(a["tokens"]) == len(a["values"]) and 0 <= a["qualifying_token_index"] < len(a["tokens"])
    if d["top"]:
        assert max(f["activations"][0]["values"]) >= d["top"][0]["value"] - 1e-3


def _hrefs(path):
    return re.findall(r'href="([^"#:?]+)"', path.read_text())


def test_bulk_features_match_feature(browser_env):
    """The export's one-query-per-table read gives exactly ``FeatureSet.feature`` (reference)."""
    from mindscope.report._export import bulk_features

    fs = browser_env["fs"]
    everything = bulk_features(fs, range(fs.n_latents))
    assert sorted(everything) == list(range(fs.n_latents))
    for i in range(fs.n_latents):
        assert everything[i] == fs.feature(i), i
    some = bulk_features(fs, [5, 2, 5])
    assert sorted(some) == [2, 5] and some[5] == fs.feature(5)
    assert bulk_features(fs, []) == {}


def test_export_pages_equal_live_render_and_links_resolve(browser_env, tmp_path):
    from mindscope.report import _browser as B
    from mindscope.report._export import unlink_missing

    fs = browser_env["fs"]
    t = time.perf_counter()
    idx = export_html(browser_env["sae_dir"], tmp_path / "all", progress=False)
    print(f"export_html of {fs.n_latents} latents: {time.perf_counter() - t:.2f}s")
    fired = {r["latent"] for r in fs.query("select latent from features where count > 0")}
    for i in fired:  # same HTML as rendering each page from fs.feature (the pre-bulk path)
        ref = unlink_missing(B.feature_page(fs, i, "static"), fired)
        got = (tmp_path / "all" / f"feature-{i}.html").read_bytes().decode()  # "\r" tokens kept
        assert got == ref, i
    for page in [idx, tmp_path / "all" / "map.svg", *(tmp_path / "all").glob("feature-*.html")]:
        for h in _hrefs(page):
            assert (tmp_path / "all" / h).exists(), (page.name, h)

    pick = [3, 7, 40, 7]
    idx = export_html(browser_env["sae_dir"], tmp_path / "some", latents=pick, progress=False)
    d = tmp_path / "some"
    assert sorted(p.name for p in d.glob("feature-*.html")) == \
        sorted(f"feature-{i}.html" for i in {3, 7, 40})
    html = idx.read_text()
    assert html.count("<tbody><tr>") == 1 and html.count("</tr>") == 1 + 3  # header + 3 rows
    assert 'id="nshown">3<' in html and "Static pages for 3 of 48 latents" in html
    linked = set()
    for page in [idx, d / "map.svg", d / "live-only.html", *d.glob("feature-*.html")]:
        for h in _hrefs(page):
            assert (d / h).exists(), (page.name, h)
            linked.add(h)
    assert {"feature-3.html", "feature-7.html", "feature-40.html", "map.svg"} <= linked
    # a neighbour without a page keeps its number as text, not a dead link
    nb = [r["neighbour"] for r in fs.feature(3)["neighbours"] if r["neighbour"] not in pick]
    if nb:
        assert f"<td>#{nb[0]}</td>" in (d / "feature-3.html").read_text()
    with pytest.raises(IndexError, match="out of range"):
        export_html(browser_env["sae_dir"], tmp_path / "bad", latents=[48], progress=False)


def test_tokens_matches_naive_reference():
    """tokens() (cached escapes, inlined clamp) renders exactly as the plain formula."""
    from mindscope.runs import esc

    def naive(strs, acts, max_act=None, center=None, color="255,140,0"):
        mx = max_act if max_act else max([a for a in acts if a is not None] + [1e-9])
        out = []
        for i, (t, a) in enumerate(zip(strs, acts)):
            a = float(a or 0.0)
            alpha = max(0.0, min(1.0, a / mx)) if mx > 0 else 0.0
            cls = "tok ctr" if center is not None and i == center else "tok"
            out.append(f'<span class="{cls}" title="{a:.3g}" style="background:rgba({color},'
                       f'{alpha:.2f})">{esc(str(t).replace(chr(10), "↵"))}</span>')
        return '<div class="ex">' + "".join(out) + "</div>"

    nan, inf = float("nan"), float("inf")
    cases = [(["a", "<b>", "\n", "a", "", "\r"], [0.0, 2.0, -1.0, nan, 1.0, 0.5], None, 1),
             (["x", "y"], [None, 5.0], 2.0, 0), (["x"], [inf], None, None),
             (["x", "y"], [-3.0, -1.0], None, None), (["x", 7, None], [1e-12, 3.0, 0.5], 0.0, 2),
             (["x"], [-inf], 1.0, None), ([], [], None, None)]
    for c in cases * 2:  # the second pass reads the escape cache
        assert tokens(*c) == naive(*c), c
