"""datarax-bench: a reproducible benchmark of the data-loading pipelines that feed JAX."""

__version__ = "0.1.0"
