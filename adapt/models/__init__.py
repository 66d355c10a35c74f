"""Model families (one file each) and their loading and export.

    model = adapt.models.from_pretrained("bundled:smollm2-135m", task="causal_lm")
    tokenizer = adapt.models.load_tokenizer("bundled:smollm2-135m")
    adapt.models.save_pretrained(model, "out/smollm2")
"""

# The families register themselves with the registry on import (adapt.models.registry never imports them); importing
# any module of this package runs this first, so the registry is full before anything reads it.
from adapt.models import bert, deberta, gemma, gpt2, llama, mixtral, modernbert, roberta  # noqa: F401
from adapt.models.export import save_pretrained
from adapt.models.loading import from_pretrained, load_tokenizer
from adapt.models.registry import model_info, supported_model_types

__all__ = ["from_pretrained", "load_tokenizer", "model_info", "save_pretrained", "supported_model_types"]
