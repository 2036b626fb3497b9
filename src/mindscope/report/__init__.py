"""mindscope.report: the feature browser (served on
127.0.0.1 or exported as static files) and the Neuronpedia export. The page builder lives in
``mindscope.runs`` (re-exported here).

>>> from mindscope.report import Page, table
>>> Page("t").section("s", table([{"a": 1}])).render().startswith("<!DOCTYPE html>")
True
"""
from ..runs import CSS, Page, bars_svg, esc, fmt, link, png, table, tokens
from ._browser import feature_page, index_page, map_svg
from ._export import export_html, export_neuronpedia, neuronpedia_feature
from ._server import FeatureServer, HTTPError, safe_path, serve

__all__ = ["Page", "table", "png", "tokens", "esc", "fmt", "link", "bars_svg", "CSS",
           "FeatureServer", "serve", "safe_path", "HTTPError", "export_html", "export_neuronpedia",
           "neuronpedia_feature", "index_page", "feature_page", "map_svg"]
