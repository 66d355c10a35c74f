"""adapt's causal language models in EleutherAI's lm-evaluation-harness (``lm-eval``, the extra ``[eval]``).

    from adapt.integrations.lm_eval import AdaptLM, evaluate
    lm = AdaptLM(pretrained="bundled:smollm2-135m")          # any checkpoint from_pretrained takes
    lm = AdaptLM(run="runs/tapt", checkpoint="best")          # or a run folder's trained model
    results = evaluate(lm, ["hellaswag"], limit=100)           # lm_eval.simple_evaluate's result dict

Importing this module registers the class with lm-eval as ``adapt``, so ``simple_evaluate(model="adapt",
model_args="pretrained=...")`` works, and ``python -m adapt.integrations.lm_eval --model adapt --model_args run=runs/x
--tasks hellaswag`` is lm-eval's own command line with it registered.

Requests are scored as lm-eval's HFLM scores them (the same tokens, so the same numbers up to float rounding):
context and continuation encoded whole and split, an empty context replaced by the prefix token (BOS, else
EOS), inputs left-truncated to the model's length, rolling loglikelihoods over
``get_rolling_token_windows`` / ``make_disjoint_window``. Each batch is ``batch_size`` rows, right-padded to
the smallest of a few bucket lengths, so the jitted forward compiles once per bucket and is reused by every
later call. Generation goes through :mod:`adapt.models.generate`.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os

try:
    import lm_eval.models  # noqa: F401 - lm-eval's own model names, registered lazily before ours
    from lm_eval import utils as lm_utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import (
        handle_stop_sequences,
        has_bos_prefix,
        normalize_gen_kwargs,
        postprocess_generated_text,
        resolve_max_length,
    )
except ImportError:
    from adapt.core.errors import ConfigError

    raise ConfigError("lm-eval is not installed: pip install 'adapt[eval]' (or pip install 'lm-eval>=0.4,<0.5')") \
        from None

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from adapt.core.errors import AdaptError, ConfigError
from adapt.core.sharding import axis_rules, current_rules, normalize_rules
from adapt.data.batches import DEFAULT_BUCKETS, bucket_width
from adapt.experiment import load_run
from adapt.models import from_pretrained, load_tokenizer
from adapt.models.generate import GenerationConfig, generate_ids

DEFAULT_BATCH_SIZE = 8


def _score_fn(graphdef, rules):
    """A jitted ``(state, ids, mask, targets) -> (log p(target), target is the argmax)``, each ``[B, T]``: the
    model's float32 logits stay on the device; only two ``[B, T]`` arrays come back. ``rules``: the axis rules
    its activations are sharded by when a mesh is set."""

    @jax.jit
    def score(state, ids, mask, targets):  # [B, T] int32 each; mask 1 for tokens, 0 for padding
        with axis_rules(rules):
            logits = nnx.merge(graphdef, state)(ids, mask)  # [B, T, V]
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # [B, T]
        return picked, jnp.argmax(logits, axis=-1) == targets

    return score


def _mesh(state):
    """The mesh the parameters are placed on (a run's), or None (one device)."""
    for leaf in jax.tree.leaves(state):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding):
            return sharding.mesh
    return None


@register_model("adapt")
class AdaptLM(TemplateLM):
    """An adapt causal LM as an lm-eval ``LM``. Give one of

    - ``pretrained``: anything :func:`adapt.models.from_pretrained` loads (Hub id, local folder, ``.gguf``
      file, ``bundled:...``), or a model object already built (then ``tokenizer`` is the tokenizer object);
    - ``run``: a run folder (``scripts/train.py``'s ``--workdir``); the model is rebuilt from its
      ``config.json`` with ``overrides`` as :func:`adapt.experiment.trial.load_run` does, with the parameters of its
      ``checkpoint`` ("best" or "latest"), and its tokenizer.

    ``batch_size`` rows per forward; ``max_length`` tokens per row (default: the model config's positions);
    ``max_gen_toks``: generation's default length; ``dtype``: compute dtype of a ``pretrained`` model;
    ``add_bos_token``/``prefix_token_id`` as HFLM's. ``device`` and ``max_batch_size`` (which lm-eval passes to
    every model) are ignored: JAX runs on its default devices (``JAX_PLATFORMS``).
    """

    def __init__(self, pretrained=None, *, run: str | None = None, checkpoint: str = "best", overrides=(),
                 tokenizer=None, batch_size: int | str = DEFAULT_BATCH_SIZE, max_length: int | None = None,
                 max_gen_toks: int = 256, dtype: str = "float32", revision: str | None = None,
                 add_bos_token: bool | None = None, prefix_token_id: int | None = None, seed: int = 0,
                 device=None, max_batch_size=None):
        super().__init__()
        del device, max_batch_size
        if jax.process_count() > 1:
            raise ConfigError(f"AdaptLM runs in one process; this job has {jax.process_count()} (lm-eval's requests "
                              f"are not split over processes)")
        if (pretrained is None) == (run is None):
            raise ConfigError("AdaptLM: give pretrained=<checkpoint> or run=<run folder>, not both or neither")
        self._batch_size = _positive_int(batch_size, "batch_size")
        self._rules = current_rules()
        if run is not None:
            self.model, self.tokenizer, self._rules = _load_run(str(run), checkpoint, overrides)
            self.source, self.checkpoint = str(run), checkpoint
        elif isinstance(pretrained, (str, os.PathLike)):
            self.source, self.checkpoint = str(pretrained), None
            self.model = from_pretrained(self.source, task="causal_lm", dtype=dtype, revision=revision)
            self.tokenizer = tokenizer if hasattr(tokenizer, "encode") else \
                load_tokenizer(str(tokenizer or pretrained), revision=revision)
        else:
            if not hasattr(tokenizer, "encode"):
                raise ConfigError("AdaptLM: a model object needs its tokenizer object (tokenizer=...)")
            self.model, self.tokenizer = pretrained, tokenizer
            self.source, self.checkpoint = type(pretrained).__name__, None
        self._max_length = _positive_int(max_length, "max_length") if max_length is not None else \
            resolve_max_length(self.model.cfg.hf, self.tokenizer)
        self._max_gen_toks = _positive_int(max_gen_toks, "max_gen_toks")
        self.add_bos_token = _flag(add_bos_token)
        self.custom_prefix_token_id = None if prefix_token_id is None else int(prefix_token_id)
        self.seed = int(seed)
        self._buckets = tuple(b for b in DEFAULT_BUCKETS if b < self._max_length) + (self._max_length,)
        graphdef, self._state = nnx.split(self.model)
        self._score = _score_fn(graphdef, self._rules)
        self._mesh = _mesh(self._state)

    def _on_mesh(self):
        """The context the model runs in: its mesh set (batches split over its data axes), or nothing."""
        return jax.set_mesh(self._mesh) if self._mesh is not None else contextlib.nullcontext()

    # ---- what lm-eval reads
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix_token_id is not None:
            return self.custom_prefix_token_id
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", self.source)).replace("/", "__")

    def get_model_info(self) -> dict:
        """What lm-eval writes under the result's "config"."""
        params = jax.tree.leaves(nnx.state(self.model, nnx.Param))
        return {"model_source": self.source, "checkpoint": self.checkpoint,
                "model_num_parameters": sum(int(np.prod(x.shape)) for x in params)}

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The tokenizer's chat template over ``chat_history`` (``--apply_chat_template``), as HFLM renders it."""
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        """HFLM's encoding: the tokenizer's own special tokens unless ``add_special_tokens`` or ``add_bos_token``
        say otherwise, and none when the string already starts with the prefix token."""
        flag = add_special_tokens if add_special_tokens is not None else self.add_bos_token
        special = {} if flag is None else {"add_special_tokens": flag}
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special["add_special_tokens"] = False
        ids = self.tokenizer.encode(string, **special)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    # ---- scoring
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """``requests``: ``(cache key or None, context ids, continuation ids)`` -> ``(sum of the continuation's
        log-probabilities, whether each of its tokens is the argmax)``; longest first, ``batch_size`` a forward."""
        rows = []  # (input ids, target ids, continuation length)
        for key, context, continuation in requests:
            if len(continuation) > self.max_length:
                raise AdaptError(f"a continuation of {len(continuation)} tokens is longer than max_length="
                                 f"{self.max_length} ({key!r:.80})")
            whole = (context + continuation)[-(self.max_length + 1):]  # left-truncated, as HFLM
            rows.append((whole[:-1], whole[1:], len(continuation)))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        out: list = [None] * len(rows)
        bs = self.batch_size
        for start in tqdm(range(0, len(order), bs), disable=disable_tqdm, desc="adapt loglikelihood batches"):
            chunk = order[start:start + bs]
            width = bucket_width([len(rows[i][0]) for i in chunk], self._buckets)
            ids, targets = np.zeros((bs, width), np.int32), np.zeros((bs, width), np.int32)  # [B, T]
            mask = np.zeros((bs, width), np.int32)
            mask[len(chunk):, 0] = 1  # rows that fill the last batch: one token each, never read
            for r, i in enumerate(chunk):
                n = len(rows[i][0])
                ids[r, :n], targets[r, :n], mask[r, :n] = rows[i][0], rows[i][1], 1
            with self._on_mesh():
                logp, greedy = (np.asarray(a) for a in self._score(self._state, ids, mask, targets))
            for r, i in enumerate(chunk):
                n, c = len(rows[i][0]), rows[i][2]
                out[i] = (float(logp[r, n - c:n].astype(np.float64).sum()), bool(greedy[r, n - c:n].all()))
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], out[i])
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each string's total log-likelihood over lm-eval's disjoint rolling windows of ``max_length`` (the
        first conditioned on the prefix token); the windows of all strings are scored together."""
        windows, owner = [], []
        for n, (string,) in enumerate(req.args for req in requests):
            for context, continuation in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (logp, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[n] += logp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---- generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continuations through :func:`adapt.models.generate.generate_ids`, one call per distinct ``gen_kwargs``
        (``until``, ``max_gen_toks``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``), cut at the first stop
        string as HFLM cuts them."""
        groups: dict[str, list[int]] = {}
        for n, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(n)
        eos = self.tokenizer.decode(self.eot_token_id, skip_special_tokens=False)
        out: list = [None] * len(requests)
        for members in tqdm(groups.values(), disable=disable_tqdm, desc="adapt generate_until"):
            kwargs = normalize_gen_kwargs(requests[members[0]].args[1], self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            new = int(kwargs.pop("max_gen_toks"))
            if new >= self.max_length:
                raise ConfigError(f"max_gen_toks={new}: must be less than the model's max_length={self.max_length}")
            sampled = bool(kwargs.get("do_sample"))
            config = GenerationConfig(max_new_tokens=new, temperature=float(kwargs.get("temperature", 0.0)) if sampled
                                      else 0.0, top_k=int(kwargs.get("top_k") or 0),
                                      top_p=float(kwargs.get("top_p") or 1.0), seed=self.seed, stop=tuple(until))
            prompts = [self.tok_encode(requests[n].args[0], left_truncate_len=self.max_length - new) for n in members]
            pad = self.tokenizer.pad_token_id
            with axis_rules(self._rules):
                generated = generate_ids(self.model, prompts, config, eos_ids=[self.eot_token_id],
                                         pad_id=self.eot_token_id if pad is None else pad, batch_size=self.batch_size,
                                         max_length=self.max_length)
            for n, ids in zip(members, generated):
                out[n] = postprocess_generated_text(self.tokenizer.decode(ids, skip_special_tokens=True), until, None)
                self.cache_hook.add_partial("generate_until", requests[n].args, out[n])
        return out


def _load_run(workdir: str, checkpoint: str, overrides):
    """A run folder's trained causal LM (with its method applied), its tokenizer and its axis rules."""
    path = os.path.join(workdir, "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            task = json.load(f).get("model", {}).get("task")
        if task != "causal_lm":
            raise ConfigError(f"{workdir}: model.task={task!r}; the harness evaluates causal language models "
                              f"(model.task='causal_lm')")
    trial, state = load_run(workdir, overrides, checkpoint)
    return trial.trainer.best_model(state), trial.tokenizer, normalize_rules(trial.config.mesh.rules)


def _positive_int(value, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(number) != str(value).strip():
        raise ConfigError(f"{name}={value!r}: expected a whole number >= 1")
    return number


def _flag(value) -> bool | None:
    """lm-eval passes ``model_args`` strings through its parser, which makes "True"/"False" bools already."""
    if value is None or isinstance(value, bool):
        return value
    raise ConfigError(f"add_bos_token={value!r}: expected True or False")


def task_manager(names: list[str], include: str | None = None):
    """An lm-eval ``TaskManager`` that knows every task (or group) in ``names``, with the YAML tasks of the folder
    ``include``. When ``include`` defines them all, lm-eval's own thousands of tasks are not indexed (seconds).
    A name known to neither is a one-line :class:`ConfigError` naming it and the closest known names."""
    from lm_eval.tasks import TaskManager

    if include is not None and not os.path.isdir(include):
        raise ConfigError(f"--lm-eval-include={include}: no such folder (expected a folder of task YAML files)")
    if include:
        local = TaskManager(include_path=include, include_defaults=False)
        if all(name in local.all_tasks for name in names):
            return local
    manager = TaskManager(include_path=include)
    known = manager.all_tasks
    unknown = [name for name in names if name not in known]
    if unknown:
        hints = {name: difflib.get_close_matches(name, known, n=3) for name in unknown}
        where = f"tasks are lm-eval's and those in {include}" if include else "local task YAMLs: --lm-eval-include"
        raise ConfigError("unknown lm-eval task " + "; ".join(
            f"{name!r}" + (f" (closest: {', '.join(hints[name])})" if hints[name] else "") for name in unknown)
            + f" ({where})")
    return manager


def evaluate(lm: AdaptLM, tasks: list[str], *, include: str | None = None, manager=None, limit: float | None = None,
             num_fewshot: int | None = None, log_samples: bool = False, **kwargs) -> dict:
    """``lm_eval.simple_evaluate`` of ``lm`` on ``tasks`` (``include``: a folder of local task YAMLs; ``manager``:
    the :func:`task_manager` already made for them, else made here); ``kwargs`` go to ``simple_evaluate``.
    Returns its result dict."""
    import lm_eval

    manager = task_manager(tasks, include) if manager is None else manager
    return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                   num_fewshot=num_fewshot, log_samples=log_samples, **kwargs)


def to_json(results: dict) -> str:
    """lm-eval's result dict as JSON (its numpy values and functions written as lm-eval's CLI writes them)."""
    return json.dumps(results, indent=2, default=lm_utils.handle_non_serializable, ensure_ascii=False)


if __name__ == "__main__":  # lm-eval's command line, with this module's model registered as "adapt"
    from lm_eval.__main__ import cli_evaluate

    from adapt.core import cli

    cli.run(cli_evaluate)
