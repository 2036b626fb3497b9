"""mindscope.experiments: one package per protocol (``introspection/``, ``onpolicy/``,
``persona/``, ``emotions/``, ``binding/``), each with a Config dataclass (field docstrings,
``quick()``) + ``run(lm, cfg, out_dir) -> Result`` (``summary_rows()``, ``report()``) in its
``__init__``, registered with ``@protocol("name")``, and its steps in the modules beside it.
Import the protocol package directly, e.g. ``from mindscope.experiments import binding``;
``protocols()`` lists them all. A protocol's positive control (an effect planted in the model,
the protocol run unchanged) registers with ``@control`` and runs with ``run_control``."""
from ._control import (ControlResult, ControlSpec, Detection, Planted, control, controls,
                       run_control)
from ._protocol import (ConfigField, ProtocolSpec, config_fields, format_value, protocol,
                        protocols)

__all__ = ["protocol", "protocols", "ProtocolSpec", "ConfigField", "config_fields",
           "format_value", "control", "controls", "run_control", "Detection", "Planted",
           "ControlSpec", "ControlResult"]
