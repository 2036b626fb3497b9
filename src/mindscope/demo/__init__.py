"""The main job: ``run_demo`` runs a full, resumable study of one model (harvest -> TopK SAE ->
evaluation -> features -> steering -> introspection -> entropy gap -> report.html).

>>> from mindscope.demo import DemoConfig, STEPS
>>> DemoConfig.quick().n_tokens < DemoConfig().n_tokens
True
"""
from ._report import build_report
from ._study import STEPS, DemoConfig, DemoState, demo_protocols, run_demo

__all__ = ["DemoConfig", "DemoState", "run_demo", "build_report", "STEPS",
           "demo_protocols"]
