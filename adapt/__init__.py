"""adapt: domain adaptation of pretrained language models in JAX."""

from adapt.host_memory import one_arena

__version__ = "0.1.0"

one_arena()  # before JAX starts its threads: see adapt/host_memory.py
