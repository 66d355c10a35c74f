"""adapt: domain adaptation of pretrained language models in JAX."""

__version__ = "0.1.0"
