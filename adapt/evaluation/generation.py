"""Supervised fine-tuning judged by what the model writes: at each evaluation of an ``sft`` trial with
``generation.max_new_tokens > 0``, the model answers the split's prompts (:mod:`adapt.models.generate`, KV-cached,
greedy by default) and its answers are scored against the references (:mod:`adapt.evaluation.textmetrics`: ROUGE-1/2/L,
BLEU, chrF, exact match), beside the split's loss. The metrics are logged as ``dev/rougeL`` and the like, so early
stopping and model selection can use them; the final evaluation writes ``predictions/<split>.jsonl``
(``{"index", "prompt", "gold", "prediction"}`` per example), from which tables compute intervals.

A trial with ``train.steps = 0`` trains nothing: it evaluates the pretrained model as prompted, zero-shot, or with
``generation.shots`` (prompt, response) pairs of the train split before each prompt as earlier chat turns
(few-shot; drawn once per trial with ``train.seed``): the prompting baselines a fine-tune is compared with.

    config.generation.max_new_tokens = 24           # generate at every evaluation
    config.train.early_stopping.metric = "dev/rougeL"
"""

from __future__ import annotations

import ml_collections
import numpy as np

from adapt.core import schema
from adapt.core.errors import ConfigError
from adapt.core.schema import Either, Float, Int, Map, Str, Tuple
from adapt.data.batches import eval_batches
from adapt.data.formats import sft_prompt
from adapt.evaluation import textmetrics
from adapt.models.generate import GenerationConfig, cut_at_stops, generate_ids


def defaults() -> ml_collections.ConfigDict:
    """The ``generation`` section of a trial's config."""
    return ml_collections.ConfigDict(dict(
        max_new_tokens=0,  # 0: no generation at evaluation
        examples={},  # split -> N: only its first N examples are generated for (a split not named: all)
        shots=0,  # few-shot prompting: (prompt, response) pairs of train before each prompt
        temperature=0.0, top_k=0, top_p=1.0, seed=0,  # 0 temperature: greedy
        stop=(),  # stop strings or token ids (the tokenizer's EOS always stops)
        batch_size=16,
    ))


SCHEMA = dict(  # of defaults()
    max_new_tokens=Int(min=0, hint="0: no generation at evaluation", doc="tokens generated per answer at most"),
    examples=Map(Int(min=0, hint="0: all"), doc="split -> N: only its first N examples are generated for"),
    shots=Int(min=0, doc="few-shot prompting: (prompt, response) pairs of train before each prompt"),
    temperature=Float(ge=0, hint="0: greedy", doc="sampling temperature"),
    top_k=Int(min=0, hint="0: off", doc="sample among the k most likely tokens"),
    top_p=Float(gt=0, le=1, doc="nucleus sampling's probability mass"),
    seed=Int(min=0, doc="sampling draws"),
    stop=Tuple(of=Either(Str(empty=False), Int(min=0)), doc="stop strings or token ids (EOS always stops)"),
    batch_size=Int(min=1, doc="prompts generated for at once"),
)


def enabled(config) -> bool:
    return config.data.format == "sft" and config.generation.max_new_tokens > 0


def examples(config, split: str) -> int | None:
    """How many of ``split``'s first examples are generated for (None: all)."""
    return dict(config["generation"]["examples"]).get(split) or None


def generation_config(section):
    """The :class:`adapt.models.generate.GenerationConfig` of a ``generation`` section (bad values: one line
    naming the key)."""
    schema.check(SCHEMA, section, "generation")
    return GenerationConfig(max_new_tokens=section.max_new_tokens, temperature=section.temperature,
                            top_k=section.top_k, top_p=section.top_p, seed=section.seed, stop=tuple(section.stop))


class GenerationEval:
    """One split of an ``sft`` trial evaluated by its loss and by generation; an evaluation entry of the
    :class:`~adapt.training.Trainer` (``evaluate(trainer, state) -> metrics``)."""

    at_start = False

    def __init__(self, trial, split: str, data: dict):
        """``data``: the trial's raw examples per split (:func:`adapt.data.pipeline.records`)."""
        config = trial.config
        self.trial, self.split = trial, split
        self.generation = generation_config(config.generation)
        rows = data[split][:examples(config, split)]
        column, answer = config.data.prompt_column, config.data.response_column
        shots = []
        if config.generation.shots:
            pool = data.get("train", [])
            if len(pool) < config.generation.shots:
                raise ConfigError(f"generation.shots={config.generation.shots}: the train split has {len(pool)} "
                                  f"examples")
            picked = np.random.default_rng(config.train.seed).choice(len(pool), config.generation.shots, replace=False)
            shots = [(str(pool[i][column]), str(pool[i][answer])) for i in picked]
        self.prompts = [str(r[column]) for r in rows]
        self.references = [str(r[answer]) for r in rows]
        self.prompt_ids = [sft_prompt(trial.tokenizer, p, shots) for p in self.prompts]

    def batches(self):
        """The split's batches for its loss: of the examples generated for, unless the split is packed (then all)."""
        config, arrays = self.trial.config, self.trial.splits[self.split]
        if (n := examples(config, self.split)) and not config.data.pack:
            arrays = {k: v[:n] for k, v in arrays.items()}
        return eval_batches(arrays, config.eval.batch_size, name=self.split)

    def outputs(self, trainer, state) -> list[str]:
        """The model's answers (``state``'s parameters) to the split's prompts."""
        tokenizer = self.trial.tokenizer
        with trainer.steps.context():
            ids = generate_ids(trainer.best_model(state), self.prompt_ids, self.generation,
                               eos_ids=(tokenizer.eos_token_id,), pad_id=tokenizer.pad_token_id or 0,
                               batch_size=self.trial.config.generation.batch_size)
        return [cut_at_stops(tokenizer.decode(x, skip_special_tokens=True), self.generation.stop).strip()
                for x in ids]

    def evaluate(self, trainer, state, *, predictions: list | None = None) -> dict:
        """The split's loss metrics and the generation metrics of the answers (appended to ``predictions``)."""
        metrics = trainer.evaluate(state, trainer.steps, self.batches())
        answers = self.outputs(trainer, state)
        if predictions is not None:
            predictions += answers
        return {**metrics, **textmetrics.scores(self.references, answers)}

    def rows(self, answers: list[str]) -> list[dict]:
        """``predictions/<split>.jsonl``'s rows."""
        return [{"index": i, "prompt": p, "gold": r, "prediction": a}
                for i, (p, r, a) in enumerate(zip(self.prompts, self.references, answers))]
