"""adapt: domain adaptation of pretrained language models in JAX."""

from adapt.host_memory import keep_freed_memory

__version__ = "0.1.0"

keep_freed_memory()  # before JAX starts its threads: see adapt/host_memory.py
