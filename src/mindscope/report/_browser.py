"""Pages of the feature browser, rendered on the server (shared by ``serve`` and ``export html``).

``mode="live"`` links to server routes (``/feature/12``); ``mode="static"`` to files in one
folder (``feature-12.html``). The text and steering pages exist only live (they run the model).
"""
from __future__ import annotations

import math
from typing import Optional

from ..runs import Page, bars_svg, esc, fmt, link, table, tokens

SORTS = ("latent", "density", "max_act", "mean_act", "score")

SORT_JS = """<script>
function msSort(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),
b=t.tBodies[0],rows=[...b.rows],asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
const v=r=>{const s=r.cells[i].innerText;const n=parseFloat(s);return isNaN(n)?s:n};
rows.sort((a,c)=>{const x=v(a),y=v(c);return (x>y?1:x<y?-1:0)*(asc?1:-1)});
rows.forEach(r=>b.appendChild(r));}
function msFilter(q){q=q.toLowerCase();const b=document.getElementById('flist').tBodies[0];
let n=0;[...b.rows].forEach(r=>{const ok=r.innerText.toLowerCase().includes(q);
r.style.display=ok?'':'none';n+=ok});document.getElementById('nshown').innerText=n;}
document.addEventListener('DOMContentLoaded',()=>{document.querySelectorAll('#flist th')
.forEach(th=>th.addEventListener('click',()=>msSort(th)));});
</script>"""


def href(kind: str, mode: str, i: Optional[int] = None) -> str:
    if mode == "live":
        return {"index": "/", "feature": f"/feature/{i}", "map": "/map.svg", "text": "/text",
                "steer": f"/steer?feature={i}" if i is not None else "/steer"}[kind]
    return {"index": "index.html", "feature": f"feature-{i}.html", "map": "map.svg",
            "text": "live-only.html", "steer": "live-only.html"}[kind]


def nav(mode: str) -> str:
    return " ".join([link(href("index", mode), "features"), link(href("map", mode), "map"),
                     link(href("text", mode), "text"), link(href("steer", mode), "steering")])


def _num(x) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def index_page(fs, mode: str = "live", sort: str = "density", desc: bool = True,
               min_density: float = 0.0, max_density: float = 1.0, q: str = "",
               limit: Optional[int] = None) -> str:
    rows = fs.feature_list(sort=sort, desc=desc, min_density=min_density,
                           max_density=max_density, search=q, limit=limit)
    for r in rows:
        r["feature"] = link(href("feature", mode, r["latent"]), f"#{r['latent']}")
        r["score"] = _num(r.get("score"))
    info = fs.info
    p = Page("mindscope feature browser",
             subtitle=f"{info.get('n_latents', '?')} latents of {info.get('sae', {}).get('site', '?')} "
                      f"({info.get('model') or info.get('sae', {}).get('model', '')}), "
                      f"{info.get('n_rows', '?')} tokens analysed", nav=nav(mode), head=SORT_JS)
    form = ""
    if mode == "live":
        opts = "".join(f'<option value="{s}"{" selected" if s == sort else ""}>{s}</option>'
                       for s in SORTS)
        form = (f'<form method="get" action="/">sort <select name="sort">{opts}</select> '
                f'<select name="order"><option value="desc"{" selected" if desc else ""}>desc'
                f'</option><option value="asc"{"" if desc else " selected"}>asc</option></select> '
                f'density &ge; <input name="min_density" size="6" value="{esc(min_density)}"> '
                f'&le; <input name="max_density" size="6" value="{esc(max_density)}"> '
                f'explanation/logits contain <input name="q" value="{esc(q)}"> '
                f'<button type="submit" id="apply">apply</button></form>')
    filt = ('<p>filter shown rows: <input id="filter" oninput="msFilter(this.value)"> '
            f'<span id="nshown">{len(rows)}</span> shown (click a header to sort)</p>')
    p.section("Features", form, filt,
              table(rows, ["feature", "density", "max_act", "mean_act", "score", "explanation",
                           "top_logits"], raw=["feature"], attrs='id="flist"'))
    return p.render()


def _scores_table(scores: list) -> str:
    rows = []
    for s in scores:
        if s["scorer"] == "specificity":
            val = f"mean rating {fmt(s.get('mean_rating'))} ± {fmt(s.get('rating_se'))} (0-3); " \
                  f"by level (low → top): {fmt(s.get('rating_by_level'))}"
        else:
            val = (f"accuracy {fmt(s.get('accuracy'))} ± {fmt(s.get('accuracy_se'))}, "
                   f"F1 {fmt(s.get('f1'))}, AUC {fmt(_num(s.get('auc')))}")
        rows.append({"scorer": s["scorer"], "judge": s["judge"], "n": s.get("n"),
                     "failed": s.get("n_failed"), "result": val})
    return table(rows)


def feature_page(fs, i: int, mode: str = "live") -> str:
    d = fs.feature(i)
    mx = d["max_act"] or 1.0
    p = Page(f"Feature {i}", subtitle=f"density {fmt(d['density'])} · max activation "
             f"{fmt(d['max_act'])} · mean when active {fmt(d['mean_act'])}", nav=nav(mode))
    e = d.get("explanation")
    p.section("Explanation",
              f"<p id=\"explanation\">{esc(e['explanation']) if e else '(not explained yet)'}</p>"
              + (f'<p class="note">by judge {esc(e["judge"])}</p>' if e else "")
              + _scores_table(d["scores"]))
    top = "".join(tokens(x["token_strs"], x["acts"], mx, x["center"]) for x in d["top"])
    p.section("Top activations", top or '<p class="note">(never active)</p>', id="top")
    qs = []
    for q in sorted({x["quantile"] for x in d["quantiles"]}, reverse=True):
        ex = [x for x in d["quantiles"] if x["quantile"] == q]
        lo = min(x["value"] for x in ex)
        hi = max(x["value"] for x in ex)
        qs.append(f"<h3>quantile group {q} (activations {fmt(lo)}–{fmt(hi)})</h3>" +
                  "".join(tokens(x["token_strs"], x["acts"], mx, x["center"]) for x in ex))
    p.section("Examples across activation quantiles", "".join(qs) or "(none)", id="quantiles")
    h = d["histogram"]
    p.section("Activation histogram",
              bars_svg([r["count"] for r in h], [f"{fmt(r['lo'])}–{fmt(r['hi'])}" for r in h]) +
              (f'<p class="note">{fmt(h[0]["lo"])} … {fmt(h[-1]["hi"])} (log-spaced bins, '
               f'non-empty shown)</p>' if h else ""))
    conv = fs.info.get("logit_effects", "")
    p.section("Logit effects",
              f'<p class="note">{esc(conv)}</p><div style="display:flex;gap:2em"><div><b>promoted</b>'
              + table(d["promoted"], ["token_str", "value"]) + "</div><div><b>suppressed</b>"
              + table(d["suppressed"], ["token_str", "value"]) + "</div></div>", id="logits")
    nb = [{"feature": link(href("feature", mode, r["neighbour"]), f"#{r['neighbour']}"),
           "cosine": r["cosine"], "density": r["density"]} for r in d["neighbours"]]
    p.section("Nearest features (decoder cosine)", table(nb, raw=["feature"]), id="neighbours")
    p.section("Position on the map", map_marker(fs, d, mode))
    if mode == "live":
        p.add(f'<p>{link(href("steer", mode, i), "steer with this feature")}</p>')
    return p.render()


def _bounds(fs):
    b = fs.query("select min(x) x0, max(x) x1, min(y) y0, max(y) y1 from features")[0]
    return b["x0"], b["x1"] - b["x0"] or 1.0, b["y0"], b["y1"] - b["y0"] or 1.0


def map_marker(fs, d: dict, mode: str, size: int = 300) -> str:
    x0, w, y0, h = _bounds(fs)
    cx = 10 + (size - 20) * (d["x"] - x0) / w
    cy = size - 10 - (size - 20) * (d["y"] - y0) / h
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}">'
            f'<image href="{esc(href("map", mode))}" width="{size}" height="{size}"/>'
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="6" fill="none" stroke="#c00" stroke-width="2"/>'
            f'</svg><p class="note">map: {esc(fs.info.get("map_method", "?"))} of the unit decoder '
            f'directions</p>')


def map_svg(fs, mode: str = "live", size: int = 300) -> str:
    """All features as points (log-density colour), each a link to its page."""
    x0, w, y0, h = _bounds(fs)
    pts = []
    for r in fs.query("select latent, x, y, density from features order by latent"):
        cx = 10 + (size - 20) * (r["x"] - x0) / w
        cy = size - 10 - (size - 20) * (r["y"] - y0) / h
        t = min(1.0, max(0.0, (math.log10(max(r["density"], 1e-6)) + 6) / 6))
        col = f"rgb({int(40 + 200 * t)},{int(90 + 60 * (1 - t))},{int(200 * (1 - t))})"
        pts.append(f'<a href="{esc(href("feature", mode, r["latent"]))}"><circle cx="{cx:.1f}" '
                   f'cy="{cy:.1f}" r="1.6" fill="{col}"><title>#{r["latent"]}</title></circle></a>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" '
            f'viewBox="0 0 {size} {size}"><rect width="{size}" height="{size}" fill="#fff"/>'
            f'{"".join(pts)}</svg>')


def text_page(fs, text: str = "", rows: Optional[list] = None, error: str = "",
              top_n: int = 5) -> str:
    p = Page("Features per token", nav=nav("live"))
    p.add(f'<form method="get" action="/text"><textarea name="q" rows="3" cols="80">{esc(text)}'
          f'</textarea><br>top <input name="top" size="3" value="{int(top_n)}"> features per token '
          f'<button type="submit" id="run">run</button></form>')
    if error:
        p.text(error, "warn")
    if rows:
        out = []
        for r in rows:
            feats = " ".join(link(href("feature", "live", a), f"#{a}") + f" ({v:.3g})"
                             for a, v in r["features"])
            out.append({"pos": r["pos"], "token": r["token_str"], "features": feats})
        p.section("Tokens", table(out, raw=["features"], attrs='id="tokens"'))
    return p.render()


def steer_page(fs, feature: Optional[int] = None, strength: float = 4.0, prompt: str = "",
               result: Optional[dict] = None, error: str = "", max_new_tokens: int = 32) -> str:
    p = Page("Steering with a feature", nav=nav("live"),
             subtitle="f_i is clamped to strength × its max activation at every position "
                      "(SAE error term kept); greedy decoding")
    p.add(f'<form method="get" action="/steer">feature <input name="feature" size="6" '
          f'value="{esc("" if feature is None else feature)}"> strength <input name="strength" '
          f'size="5" value="{esc(strength)}"> new tokens <input name="tokens" size="4" '
          f'value="{int(max_new_tokens)}"><br><textarea name="prompt" rows="2" cols="80">'
          f'{esc(prompt)}</textarea><br><button type="submit" id="go">generate</button></form>')
    if error:
        p.text(error, "warn")
    if result:
        p.section("Generations", table([{"": "unsteered", "text": result["base"]},
                                        {"": f"feature {feature} × {strength}",
                                         "text": result["steered"]}], attrs='id="gens"'))
    return p.render()


def live_only_page() -> str:
    return (Page("Live pages", nav=nav("static"))
            .text("The text page (features on each token of your text) and the steering page "
                  "run the model, so this static export omits them. Run `mindscope serve DIR` "
                  "to use them.").render())
