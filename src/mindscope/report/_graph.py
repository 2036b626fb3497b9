"""The attribution-graph page: one self-contained HTML file (inline SVG + a little JS) drawn from
graph JSON in circuit-tracer / Neuronpedia's schema, and ``GraphServer``, which serves it on
127.0.0.1 with feature pages and live interventions.

Page: nodes placed by position (x) and layer (y; embeddings at the bottom, logits on top);
edges coloured by sign, their weight shown on hover; clicking a node shows its details (top
edges in and out), a link to its feature page, pin / group buttons (pinned nodes become a
supernode, as in circuit-tracer's qParams), and for features the buttons 'zero' and 'x2' that
run an intervention on the server and show how the target logit moved.

>>> html = graph_page({"metadata": {"prompt": "a", "prompt_tokens": ["a"]}, "nodes": [], "links": []})
>>> html.startswith("<!DOCTYPE html>")
True
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, urlsplit

from ..runs import CSS, esc
from ._server import HTTPError, _one

_JS = r"""
const G = JSON.parse(document.getElementById('gdata').textContent);
const LIVE = document.body.dataset.live === '1';
const nodes = G.nodes, byId = {}; nodes.forEach(n => byId[n.node_id] = n);
const toks = G.metadata.prompt_tokens, T = toks.length;
const lay = n => n.layer === 'E' ? -1 : parseInt(n.layer);
const L = Math.max(1, ...nodes.map(lay));
const W = Math.max(640, T * 90), H = (L + 2) * 26 + 60, svgNS = 'http://www.w3.org/2000/svg';
const svg = document.getElementById('g'); svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
svg.setAttribute('width', W); svg.setAttribute('height', H);
const cell = {}; nodes.forEach(n => { const k = lay(n) + ':' + n.ctx_idx; (cell[k] = cell[k] || []).push(n); });
Object.values(cell).forEach(list => list.forEach((n, i) => {
  n.x = 40 + n.ctx_idx * ((W - 60) / Math.max(1, T)) + 8 + i * 9;
  n.y = H - 40 - (lay(n) + 1) * 26; }));
const mk = (tag, attrs) => { const e = document.createElementNS(svgNS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]); return e; };
const tip = document.getElementById('tip');
const maxw = Math.max(1e-9, ...G.links.map(l => Math.abs(l.weight)));
G.links.forEach(l => { const s = byId[l.source], t = byId[l.target]; if (!s || !t) return;
  const e = mk('line', {x1: s.x, y1: s.y, x2: t.x, y2: t.y, class: 'edge',
    stroke: l.weight > 0 ? '#2b6cb0' : '#c53030', 'stroke-width': 0.5 + 3 * Math.abs(l.weight) / maxw,
    'data-src': l.source, 'data-dst': l.target, 'data-w': l.weight});
  const title = mk('title', {}); title.textContent = `${l.source} → ${l.target}: ${l.weight.toFixed(4)}`;
  e.appendChild(title);
  e.addEventListener('mouseover', ev => { tip.textContent = title.textContent; tip.style.display = 'block'; });
  e.addEventListener('mouseout', () => tip.style.display = 'none');
  svg.appendChild(e); });
toks.forEach((t, i) => { const x = mk('text', {x: 40 + i * ((W - 60) / T), y: H - 8, class: 'tok'});
  x.textContent = t; svg.appendChild(x); });
nodes.forEach(n => {
  const shape = n.feature_type === 'mlp reconstruction error' ? mk('rect', {x: n.x - 4, y: n.y - 4, width: 8, height: 8})
    : mk('circle', {cx: n.x, cy: n.y, r: n.feature_type === 'logit' ? 7 : 5});
  shape.setAttribute('class', 'node ' + n.feature_type.replace(/ /g, '-'));
  shape.setAttribute('id', 'n-' + n.node_id); shape.dataset.id = n.node_id;
  const title = mk('title', {}); title.textContent = label(n); shape.appendChild(title);
  shape.addEventListener('click', () => select(n.node_id)); svg.appendChild(shape); });
function label(n) {
  if (n.feature_type === 'logit') return n.clerp;
  if (n.feature_type === 'embedding') return `token "${toks[n.ctx_idx]}" @${n.ctx_idx}`;
  if (n.feature_type === 'mlp reconstruction error') return `error L${n.layer} @${n.ctx_idx}`;
  const [l, f] = n.node_id.split('_'); return `L${l} feature ${f} @${n.ctx_idx} (act ${(n.activation||0).toFixed(3)})`; }
const pinned = [], groups = [];
function select(id) {
  const n = byId[id]; document.querySelectorAll('.sel').forEach(e => e.classList.remove('sel'));
  document.getElementById('n-' + id).classList.add('sel');
  const ins = G.links.filter(l => l.target === id).sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 8);
  const outs = G.links.filter(l => l.source === id).sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 8);
  const row = (l, k) => `<tr><td>${label(byId[l[k]])}</td><td>${l.weight.toFixed(4)}</td></tr>`;
  let h = `<h3 id="dtitle">${label(n)}</h3><p>influence ${n.influence == null ? '' : n.influence.toFixed(3)}</p>`;
  if (n.feature_type === 'cross layer transcoder') {
    const [l, f] = n.node_id.split('_');
    h += `<p><a id="flink" href="feature/${l}/${f}">open feature page</a></p>`;
    if (LIVE) h += `<button id="zero">zero</button> <button id="clamp">x2</button>`; }
  h += ` <button id="pin">pin</button>`;
  h += `<h4>top inputs</h4><table id="ins">${ins.map(l => row(l, 'source')).join('')}</table>`;
  h += `<h4>top outputs</h4><table id="outs">${outs.map(l => row(l, 'target')).join('')}</table>`;
  document.getElementById('detail').innerHTML = h;
  document.getElementById('pin').onclick = () => { if (!pinned.includes(id)) pinned.push(id); showPins(); };
  for (const mode of ['zero', 'clamp']) { const b = document.getElementById(mode);
    if (b) b.onclick = () => intervene(id, mode); } }
function showPins() {
  document.getElementById('pinned').innerHTML = pinned.map(p => `<li>${label(byId[p])}</li>`).join('');
  G.qParams.pinnedIds = pinned.slice(); }
document.getElementById('group').onclick = () => {
  if (!pinned.length) return; const name = document.getElementById('gname').value || `group ${groups.length + 1}`;
  groups.push([name, ...pinned]); pinned.length = 0; showPins(); G.qParams.supernodes = groups;
  document.getElementById('groups').innerHTML = groups.map(g => `<li>${g[0]}: ${g.slice(1).map(i => label(byId[i])).join(', ')}</li>`).join(''); };
async function intervene(id, mode) {
  const out = document.getElementById('result'); out.textContent = 'running…';
  const r = await fetch(`api/intervene?node=${encodeURIComponent(id)}&mode=${mode}`);
  const j = await r.json();
  if (!r.ok) { out.textContent = 'error: ' + j.error; return; }
  out.innerHTML = `<b id="delta">${j.delta.toFixed(4)}</b> change of the target logit "${j.target}" `
    + `(predicted ${j.predicted.toFixed(4)}); top tokens now: ${j.top.map(t => `${t[0]} (${t[1].toFixed(3)})`).join(', ')}`; }
"""

_CSS = """
#wrap{display:flex;gap:16px} #gbox{overflow:auto;max-width:72vw;border:1px solid #ddd}
.node{cursor:pointer;stroke:#333;stroke-width:.5} .cross-layer-transcoder{fill:#f6ad55}
.mlp-reconstruction-error{fill:#a0aec0} .embedding{fill:#68d391} .logit{fill:#9f7aea}
.sel{stroke:#000;stroke-width:2.5} .edge{opacity:.55} .edge:hover{opacity:1}
.tok{font-size:11px;font-family:monospace} #side{min-width:300px;font-size:13px}
#tip{display:none;position:fixed;top:8px;right:8px;background:#fffbe6;border:1px solid #ccc;padding:4px}
"""


def graph_page(d: dict, live: bool = False) -> str:
    """The HTML page of graph JSON ``d`` (``live``: intervention buttons call the server)."""
    m = d.get("metadata", {})
    data = json.dumps({"metadata": m, "qParams": d.get("qParams", {"pinnedIds": [], "supernodes": []}),
                       "nodes": d.get("nodes", []), "links": d.get("links", [])})
    data = data.replace("</", "<\\/")
    info = m.get("info", {})
    scores = info.get("scores", {})
    sc = " · ".join(f"{k} {v:.3f}" for k, v in scores.items())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>graph: "
            f"{esc(m.get('prompt', ''))[:60]}</title><style>{CSS}{_CSS}</style></head>"
            f"<body data-live='{1 if live else 0}'><h1>Attribution graph</h1>"
            f"<p id='prompt'>{esc(m.get('prompt', ''))}</p><p>{esc(sc)}</p><div id='tip'></div>"
            f"<div id='wrap'><div id='gbox'><svg id='g'></svg></div><div id='side'>"
            f"<div id='detail'><p>click a node</p></div><div id='result'></div>"
            f"<h4>pinned</h4><ul id='pinned'></ul><input id='gname' placeholder='group name'>"
            f"<button id='group'>group pinned</button><h4>groups</h4><ul id='groups'></ul>"
            f"</div></div><script id='gdata' type='application/json'>{data}</script>"
            f"<script>{_JS}</script></body></html>")


class GraphServer:
    """Serves one graph folder (``circuits graph --out``): ``/`` the page, ``/graph.json``,
    ``/feature/<layer>/<i>`` a feature page, ``/api/intervene?node=&mode=zero|clamp``.
    The model and transcoders load on the first intervention (one lock serialises them)."""

    def __init__(self, folder, host: str = "127.0.0.1", port: int = 8766, transcoders=None,
                 lm=None, tc=None, load_lm: Optional[Callable[[], Any]] = None):
        from ..circuits import graph_json, load_graph

        self.folder = Path(folder)
        self.graph = load_graph(self.folder)
        jsons = sorted(p for p in self.folder.glob("*.json") if p.name != "graph_meta.json")
        self.data = (json.loads(jsons[0].read_text()) if jsons else graph_json(self.graph))
        self.host, self.port = host, port
        self._lm, self._tc, self._load_lm, self._tc_path = lm, tc, load_lm, transcoders
        self.lock = threading.Lock()
        self.httpd: Optional[ThreadingHTTPServer] = None

    @property
    def live(self) -> bool:
        return (self._lm is not None or self._load_lm is not None) and (
            self._tc is not None or self._tc_path is not None)

    def _model(self):
        from ..circuits import Transcoders

        if not self.live:
            raise HTTPError(503, "start the server with --model and --transcoders to intervene")
        try:
            if self._lm is None:
                self._lm = self._load_lm()
            if self._tc is None:
                self._tc = Transcoders.load(self._tc_path)
        except Exception as e:  # noqa: BLE001 - reported to the client
            raise HTTPError(503, f"could not load the model or transcoders: {e}") from None
        return self._lm, self._tc

    def intervene(self, node: str, mode: str) -> dict:
        import torch

        from ..circuits import intervene, prepare_ids, total_effects
        g = self.graph
        try:
            l, f, p = (int(x) for x in node.split("_"))
        except ValueError:
            raise HTTPError(400, f"node {node[:40]!r} is not a feature node (layer_feature_pos)") from None
        hit = ((g.features[:, 0] == l) & (g.features[:, 1] == p) & (g.features[:, 2] == f)).nonzero()
        if hit.numel() == 0:
            raise HTTPError(404, f"feature node {node} is not in this graph")
        i = int(hit[0, 0])
        a = float(g.activations[i])
        pred = float(total_effects(g, 0)[i])
        with self.lock:
            lm, tc = self._model()
            ids = prepare_ids(lm, g.prompt)
            base = intervene(lm, tc, ids, {})
            new = intervene(lm, tc, ids, {(l, p, f): 0.0 if mode == "zero" else 2 * a})
        tok = g.logit_tokens[0]
        d = float((new[tok] - new.mean()) - (base[tok] - base.mean()))
        pr = new.softmax(-1)
        top = pr.topk(5)
        return {"node": node, "mode": mode, "target": g.logit_strs[0], "delta": d,
                "predicted": -pred if mode == "zero" else pred,
                "top": [[lm.tokenizer.decode([int(t)]), float(q)] for q, t in zip(top.values, top.indices)]}

    def feature_page(self, layer: int, feat: int) -> str:
        g = self.graph
        rows = [(int(p), float(a)) for (l, p, f), a in zip(g.features.tolist(), g.activations.tolist())
                if l == layer and f == feat]
        if not rows:
            raise HTTPError(404, f"feature {feat} of layer {layer} is not active in this graph")
        items = "".join(f"<tr><td>{p}</td><td>{esc(g.token_strs[p])}</td><td>{a:.4f}</td></tr>"
                        for p, a in rows)
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{CSS}</style></head><body>"
                f"<h1>Layer {layer} feature {feat}</h1><p><a href='../../'>back to the graph</a></p>"
                f"<table id='acts'><tr><th>pos</th><th>token</th><th>activation</th></tr>{items}"
                f"</table></body></html>")

    def handle(self, raw: str) -> tuple:
        u = urlsplit(raw)
        qs = parse_qs(u.query, max_num_fields=10)
        parts = [x for x in u.path.split("/") if x]
        html = "text/html; charset=utf-8"
        if not parts:
            return 200, html, graph_page(self.data, live=self.live).encode()
        if parts == ["graph.json"]:
            return 200, "application/json", json.dumps(self.data).encode()
        if len(parts) == 3 and parts[0] == "feature":
            if not (parts[1].isdigit() and parts[2].isdigit()):
                raise HTTPError(400, "feature pages are /feature/<layer>/<index>")
            return 200, html, self.feature_page(int(parts[1]), int(parts[2])).encode()
        if parts == ["api", "intervene"]:
            mode = _one(qs, "mode", "zero")
            if mode not in ("zero", "clamp"):
                raise HTTPError(400, "mode must be 'zero' or 'clamp'")
            node = _one(qs, "node")
            if not node:
                raise HTTPError(400, "parameter 'node' is required")
            return 200, "application/json", json.dumps(self.intervene(node, mode)).encode()
        raise HTTPError(404, "no such page")

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt, *args):
                pass

            def do_GET(self):
                try:
                    status, ctype, body = server.handle(self.path)
                except HTTPError as e:
                    status, ctype = e.status, "application/json"
                    body = json.dumps({"error": e.message}).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        return Handler

    def start(self) -> "GraphServer":
        self.httpd = ThreadingHTTPServer((self.host, self.port), self._handler())
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def serve_forever(self) -> None:
        self.httpd = self.httpd or ThreadingHTTPServer((self.host, self.port), self._handler())
        self.port = self.httpd.server_address[1]
        self.httpd.serve_forever()

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
