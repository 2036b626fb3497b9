"""The graph page in headless Chromium (tests/report/_cdp.py): it loads, edges show their weight
on hover, a click opens a node's details and its feature page, nodes pin into a group, and an
intervention run from a node shows its result."""
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))
import _cdp  # noqa: E402

from mindscope.circuits import GraphConfig, attribute, save_graph, graph_json, prune  # noqa: E402
from mindscope.report import GraphServer  # noqa: E402

from .conftest import random_transcoders  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.exists(_cdp.CHROMIUM),
                                reason="/usr/bin/chromium is absent (Debian package 'chromium'; "
                                       "`make test` installs it via .ci/install-browser.sh)")
ART = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    lm = tiny("llama")
    tc = random_transcoders(lm)
    g = attribute(lm, tc, "The quick brown fox jumps over the lazy dog",
                  GraphConfig(batch_size=32), progress=False)
    d = tmp_path_factory.mktemp("graph")
    save_graph(g, d)
    (d / "fox.json").write_text(json.dumps(graph_json(g, prune(g, 0.6, 0.9), slug="fox")))
    srv = GraphServer(d, port=0, lm=lm, tc=tc).start()
    yield srv
    srv.stop()


def test_graph_page_hover_click_pin_group_intervene(served, tmp_path):
    b = _cdp.Browser(tmp_path / "profile")
    try:
        b.goto(served.url + "/")
        n_nodes = b.js("document.querySelectorAll('.node').length")
        assert n_nodes == len(served.data["nodes"]) > 10
        assert b.js("document.querySelectorAll('.edge').length") == len(served.data["links"])
        # hover over an edge shows its weight
        b.js("document.querySelector('.edge').dispatchEvent(new MouseEvent('mouseover'))")
        tip = b.js("document.getElementById('tip').textContent")
        w = float(b.js("document.querySelector('.edge').dataset.w"))
        assert tip.endswith(f"{w:.4f}") and "→" in tip
        # tokens along the bottom, logits on top (smaller y)
        ys = b.js("[...document.querySelectorAll('.logit')].map(e => +e.getAttribute('cy'))")
        ye = b.js("[...document.querySelectorAll('.embedding')].map(e => +e.getAttribute('cy'))")
        assert max(ys) < min(ye)
        # click a feature node: details, pin, second node, group
        b.js("document.querySelector('.cross-layer-transcoder').dispatchEvent(new MouseEvent('click'))")
        title = b.js("document.getElementById('dtitle').textContent")
        assert title.startswith("L") and "feature" in title
        b.js("document.getElementById('pin').click()")
        b.js("document.querySelectorAll('.cross-layer-transcoder')[1].dispatchEvent(new MouseEvent('click'))")
        b.js("document.getElementById('pin').click()")
        assert b.js("document.querySelectorAll('#pinned li').length") == 2
        b.js("document.getElementById('gname').value = 'my group'")
        b.js("document.getElementById('group').click()")
        assert b.js("document.querySelector('#groups li').textContent").startswith("my group:")
        assert b.js("G.qParams.supernodes[0].length") == 3
        # run an intervention from the node: the result appears
        b.js("document.getElementById('zero').click()")
        b.wait_for("document.getElementById('delta') !== null")
        delta = float(b.js("document.getElementById('delta').textContent"))
        node = b.js("document.querySelector('.sel').dataset.id")
        assert delta == pytest.approx(served.intervene(node, "zero")["delta"], abs=1e-4)
        ART.mkdir(exist_ok=True)
        b.screenshot(ART / "circuits_graph.png")
        # the feature page opens from the node
        b.click("#flink")
        assert b.js("document.querySelector('h1').textContent").startswith("Layer ")
        assert b.js("document.querySelectorAll('#acts tr').length") >= 2
    finally:
        b.close()


def test_server_rejects_bad_requests(served):
    import urllib.error
    import urllib.request
    for path, code in (("/api/intervene?node=E_1_2", 400), ("/api/intervene?node=0_0_0&mode=x", 400),
                       ("/api/intervene?node=1_99999_3", 404), ("/feature/a/b", 400),
                       ("/nope", 404)):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(served.url + path)
        assert e.value.code == code, path
