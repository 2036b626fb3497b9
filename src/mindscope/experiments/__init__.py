"""mindscope.experiments: one package per protocol (``introspection/``, ``onpolicy/``,
``persona/``, ``emotions/``, ``binding/``), each with a Config dataclass (field docstrings,
``quick()``) + ``run(lm, cfg, out_dir) -> Result`` (``summary_rows()``, ``report()``) in its
``__init__``, registered with ``@protocol("name")``, and its steps in the modules beside it.
Import the protocol package directly, e.g. ``from mindscope.experiments import binding``;
``protocols()`` lists them all."""
from ._protocol import (ConfigField, ProtocolSpec, config_fields, format_value, protocol,
                        protocols)

__all__ = ["protocol", "protocols", "ProtocolSpec", "ConfigField", "config_fields",
           "format_value"]
