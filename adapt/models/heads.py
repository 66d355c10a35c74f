"""The model heads a family can declare (``Family.heads``), with what transformers and PEFT call each. A task kind of
:mod:`adapt.training.tasks` trains one of them (the built-in task kinds share their heads' names).

    heads.get("sequence_classification").auto_mapping   # transformers' auto-class table (export)
    heads.of_architecture(["BertForMaskedLM"])            # "masked_lm": a checkpoint's own head
"""

from __future__ import annotations

import dataclasses
import difflib

from adapt.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Head:
    name: str
    architectures: tuple[str, ...] = ()  # suffixes of the transformers class names that are this head
    auto_mapping: str = ""  # transformers' auto-class name table of the head's classes (export)
    peft_task_type: str | None = None  # PEFT's task type (adapter export)


HEADS = {h.name: h for h in (
    Head("base", auto_mapping="MODEL_MAPPING_NAMES", peft_task_type="FEATURE_EXTRACTION"),
    Head("causal_lm", ("ForCausalLM", "LMHeadModel"), "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "CAUSAL_LM"),
    Head("masked_lm", ("ForMaskedLM",), "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
    Head("sequence_classification", ("ForSequenceClassification",),
         "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "SEQ_CLS"),
    Head("token_classification", ("ForTokenClassification",), "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
         "TOKEN_CLS"),
)}


def get(name: str, where: str = "task") -> Head:
    if name not in HEADS:
        close = difflib.get_close_matches(str(name), list(HEADS), n=3)
        raise ConfigError(f"{where}={name!r} is not a model head; " + (f"did you mean {', '.join(close)}? " if close
                                                                        else "") + f"heads: {', '.join(HEADS)}")
    return HEADS[name]


def of_architecture(architectures) -> str:
    """The head a checkpoint's ``config.architectures`` names (``BertForMaskedLM`` -> masked_lm); ``base`` when
    none does."""
    for arch in architectures or ():
        for head in HEADS.values():
            if head.architectures and arch.endswith(head.architectures):
                return head.name
    return "base"
