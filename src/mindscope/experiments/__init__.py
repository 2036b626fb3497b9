"""mindscope.experiments: one package per protocol (``introspection/``, ``onpolicy/``,
``persona/``, ``emotions/``, ``binding/``), each with a Config dataclass + run() -> Result with
.report() in its ``__init__`` and its steps in the modules beside it. Import the protocol package
directly, e.g. ``from mindscope.experiments import binding``."""
