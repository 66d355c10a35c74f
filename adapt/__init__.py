"""adapt: domain adaptation of pretrained language models in JAX. Importing it changes nothing in the process."""

from adapt.host_memory import use_kept_heap

__version__ = "0.1.0"
