"""Batched generation with a KV cache for the decoder families (greedy or sampled), jitted once per shape.

    config = GenerationConfig(max_new_tokens=32, temperature=0.7, top_p=0.9, seed=1, stop=("\\n\\n",))
    texts = generate(model, tokenizer, ["Question: ...", ...], config, chat=True)
    ids = generate_ids(model, [[1, 2, 3], [4, 5]], config, eos_ids=(tokenizer.eos_token_id,))

How: prompts are sorted by length and cut into batches of ``batch_size``; a batch is LEFT-padded to a bucketed
length (a power of two, at least 16) and, the last one, to a bucketed number of rows (a power of two), so every
row's last token sits in the last column. Positions count a row's real tokens (the first at 0, as transformers
derives them from the attention mask) and padding is never attended. One jitted program runs the prefill (the
prompts through the model, every layer's keys and values written into a :class:`~adapt.models.kv_cache.KVCache`
of prompt + new-token slots, the latter ``max_new_tokens`` rounded up to a power of two) and a ``while_loop`` of
one-token steps that ends when every row has stopped or ``max_new_tokens`` (data, not a constant) are out.
Programs are cached by the model's structure (its ``nnx`` graph, not its parameter
values), the padded shapes and the sampler, so evaluation during training compiles once. A model on a mesh
(``from_pretrained(..., mesh=)``) runs there, its activations and cache sharded by the axis rules in force.

Sampling: temperature, then top-k, then top-p (nucleus), as transformers orders them; each prompt draws from
its own key, ``fold_in(key(seed), prompt index)``, so its tokens depend on the seed and its place in the list,
not on the batching. A stop token (the ``eos_ids`` and the integer ``stop`` items) ends a row; stop strings cut
the decoded text afterwards, on the host.

Prefix tuning and prompt tuning (``adapt.methods.prefix``) are supported: the prefix keys and values are
visible to every step, and the virtual tokens are written into the cache's first slots by the prefill.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adapt.core.errors import ConfigError
from adapt.core.sharding import axis_rules, current_rules
from adapt.models import kv_cache
from adapt.models.registry import model_info

STOP_SLOTS = 8  # the stop ids' array holds 8 (or the power of two above their count): -1 fills it


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """What to generate: ``max_new_tokens`` per prompt, greedy at ``temperature`` 0, else sampled from the
    tokens that survive ``top_k`` (0: all) and ``top_p`` (1: all) with ``seed``. ``stop``: strings that cut
    the decoded text and token ids that end a row (the tokenizer's EOS always does)."""
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "stop", tuple(self.stop) if isinstance(self.stop, (list, tuple)) else self.stop)
        self.check()

    def check(self):
        """One-line :class:`ConfigError` naming the first bad field."""
        def bad(field, expected):
            raise ConfigError(f"generation.{field}={getattr(self, field)!r}: expected {expected}")

        def integer(x):
            return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

        def number(x):
            return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)

        if not integer(self.max_new_tokens) or self.max_new_tokens < 1:
            bad("max_new_tokens", "an integer >= 1")
        if not number(self.temperature) or not self.temperature >= 0:
            bad("temperature", "a number >= 0 (0 = greedy)")
        if not integer(self.top_k) or self.top_k < 0:
            bad("top_k", "an integer >= 0 (0 = no top-k filter)")
        if not number(self.top_p) or not 0 < self.top_p <= 1:
            bad("top_p", "a value in (0, 1]")
        if not integer(self.seed):
            bad("seed", "an integer")
        if not isinstance(self.stop, tuple) or not all(
                (isinstance(s, str) and s) or (integer(s) and s >= 0) for s in self.stop):
            bad("stop", "a list of stop strings (non-empty str) and/or token ids (int >= 0)")


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """``logits [B, V]`` with the tokens outside the ``top_k`` highest (0: no filter) and outside the nucleus
    set to -inf: the nucleus is the fewest highest-ranked tokens whose probability (softmax of the logits left
    by top-k) sums to at least ``top_p`` (1: no filter), transformers' ``TopPLogitsWarper``. A token tied with
    the last one kept is kept too."""
    if not top_k and top_p >= 1:
        return logits
    top_k = min(top_k, logits.shape[-1])
    ranked = jax.lax.top_k(logits, top_k)[0] if top_k else -jnp.sort(-logits, axis=-1)  # [B, k or V], descending
    keep = jnp.ones(ranked.shape, bool)
    if top_p < 1:
        probs = jax.nn.softmax(ranked, axis=-1)
        keep = jnp.cumsum(probs, axis=-1) - probs < top_p  # the mass ranked above a token is short of top_p
    threshold = jnp.min(jnp.where(keep, ranked, jnp.inf), axis=-1, keepdims=True)  # [B, 1]
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def _choose(logits, keys, step, sampler):
    """The next token ``[B]`` from ``logits [B, V]``: argmax, or a draw from each row's key folded with
    ``step``; ``sampler`` = (temperature, top_k, top_p)."""
    temperature, top_k, top_p = sampler
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits / temperature, top_k, top_p)
    step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, step)
    return jax.vmap(jax.random.categorical)(step_keys, logits).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "new", "sampler", "rules"))
def _program(graphdef, state, ids, mask, rows, limit, stops, seed, *, new: int, sampler: tuple, rules):
    """The new tokens ``[B, new]`` after the left-padded prompts ``ids``/``mask [B, P]``: row ``r`` is prompt
    ``rows[r]`` (-1: a filler row, stopped from the start); ``limit`` (<= new) tokens at most, a row stopping
    after its first token in ``stops [M]``. Slots after a row stopped hold whatever it went on to draw."""
    with axis_rules(rules):
        model = nnx.merge(graphdef, state)
        info = model_info(model)
        backbone = info.backbone(model)
        virtual = backbone.prompt().shape[0] if hasattr(backbone, "prompt") else 0  # prompt tuning's tokens
        b, p = ids.shape
        cache = kv_cache.KVCache.create(info.dims.num_layers, b, virtual + p + new, info.family.kv_shape(model.cfg),
                                        jnp.dtype(model.cfg.dtype), stacked=info.stacked)
        lengths = mask.sum(axis=1)  # [B]
        positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)  # [B, P]: real tokens from 0
        keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), jnp.maximum(rows, 0))  # [B]
        token = _choose(model(ids, mask, positions, cache=cache)[:, -1], keys, 0, sampler)  # [B]
        out = jnp.zeros((b, new), jnp.int32).at[:, 0].set(token)
        done = (rows < 0) | jnp.isin(token, stops)

        def body(carry):
            step, token, cache, done, out = carry
            model = nnx.merge(graphdef, state, copy=True)  # variables of this trace level: a scan splits them
            logits = model(token[:, None], jnp.ones((b, 1), mask.dtype), (lengths + step - 1)[:, None], cache=cache)
            token = _choose(logits[:, -1], keys, step, sampler)
            out = jax.lax.dynamic_update_slice(out, token[:, None], (0, step))
            return step + 1, token, cache, done | jnp.isin(token, stops), out

        def more(carry):
            step, _, _, done, _ = carry
            return (step < limit) & ~jnp.all(done)

        return jax.lax.while_loop(more, body, (jnp.int32(1), token, cache, done, out))[4]


def _bucket(n: int, least: int = 1) -> int:
    """The power of two at or above ``max(n, least)``: few distinct shapes, few compilations."""
    return 1 << (max(n, least) - 1).bit_length()


def _mesh(state: nnx.State):
    """The mesh the parameters are placed on, or None."""
    for leaf in jax.tree.leaves(state):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding):
            return sharding.mesh
    return None


def _check(model, prompts, config: GenerationConfig, batch_size: int, max_length: int | None):
    """One-line :class:`ConfigError` for a model that cannot generate or a prompt that cannot fit."""
    if not isinstance(config, GenerationConfig):
        raise ConfigError(f"generation config: expected a GenerationConfig, got {type(config).__name__}")
    info = model_info(model)
    if info.head != "causal_lm":
        raise ConfigError(f"generation needs a causal LM (task='causal_lm'); this model is {info.head!r}")
    if not info.family.kv_cache:
        raise ConfigError(f"model family {info.family.name!r} declares no KV-cache path (Family.kv_cache)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}: expected an integer >= 1")
    limits = [(max_length, f"max_length={max_length}")] if max_length is not None else []
    if info.family.max_positions is not None:
        limits.append((info.family.max_positions(model.cfg), "the model's maximum positions"))
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ConfigError(f"prompts[{i}] is empty: generation needs at least one prompt token")
        for limit, what in limits:
            if len(prompt) + config.max_new_tokens > limit:
                raise ConfigError(f"prompts[{i}] has {len(prompt)} tokens: with generation.max_new_tokens="
                                  f"{config.max_new_tokens} that exceeds {what} ({limit})")


def _sampler(config: GenerationConfig) -> tuple:
    return float(config.temperature), int(config.top_k), float(config.top_p)


def lower(model: nnx.Module, rows: int, prompt_length: int, config: GenerationConfig) -> jax.stages.Lowered:
    """The program :func:`generate_ids` runs for a batch of ``rows`` prompts of ``prompt_length`` tokens, lowered,
    not run: the rows and length bucketed as it buckets them, on the model's mesh and the axis rules in force. The
    model's parameters may be abstract, ``ShapeDtypeStruct`` values with shardings (:mod:`adapt.plan` compiles this
    for a slice)."""
    _check(model, [[0] * prompt_length], config, rows, None)
    graphdef, state = nnx.split(model)
    mesh = _mesh(state)
    b, p = _bucket(rows), _bucket(prompt_length, 16)
    replicated = {"sharding": jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())} if mesh else {}

    def arg(shape, dtype=jnp.int32):
        return jax.ShapeDtypeStruct(shape, dtype, **replicated)

    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        return _program.lower(graphdef, state, arg((b, p)), arg((b, p)), arg((b,)), arg(()), arg((STOP_SLOTS,)),
                              arg((), jnp.uint32), new=_bucket(config.max_new_tokens, 16), sampler=_sampler(config),
                              rules=current_rules())


def generate_ids(model: nnx.Module, prompts: list[list[int]], config: GenerationConfig, *, eos_ids=(),
                 pad_id: int = 0, batch_size: int = 8, max_length: int | None = None) -> list[list[int]]:
    """The new token ids of each prompt (the prompt excluded), cut before its first stop token (``eos_ids`` and
    the integer items of ``config.stop``). ``pad_id`` fills the padding (never attended); ``max_length``: a
    prompt + ``max_new_tokens`` above it is an error, as above the family's maximum positions (GPT-2)."""
    _check(model, prompts, config, batch_size, max_length)
    stop_ids = sorted({int(i) for i in eos_ids if i is not None} | {s for s in config.stop if not isinstance(s, str)})
    stops = np.full(_bucket(len(stop_ids), STOP_SLOTS), -1, np.int32)  # [M]: -1 never matches a token
    stops[:len(stop_ids)] = stop_ids
    sampler = _sampler(config)
    new = _bucket(config.max_new_tokens, 16)
    graphdef, state = nnx.split(model)
    mesh = _mesh(state)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        b, p = min(_bucket(len(batch)), batch_size), _bucket(max(len(prompts[i]) for i in batch), 16)
        ids, mask, rows = np.full((b, p), pad_id, np.int32), np.zeros((b, p), np.int32), np.full(b, -1, np.int32)
        for r, i in enumerate(batch):
            ids[r, p - len(prompts[i]):], mask[r, p - len(prompts[i]):], rows[r] = prompts[i], 1, i
        with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
            out = _program(graphdef, state, ids, mask, rows, np.int32(config.max_new_tokens), stops,
                           np.uint32(config.seed), new=new, sampler=sampler, rules=current_rules())
        for r, i in enumerate(batch):
            tokens = np.asarray(out[r, :config.max_new_tokens]).tolist()
            ends = [n for n, t in enumerate(tokens) if t in stop_ids]
            results[i] = tokens[:ends[0]] if ends else tokens
    return results


def generate(model: nnx.Module, tokenizer, prompts: list[str], config: GenerationConfig, *, chat: bool = False,
             batch_size: int = 8) -> list[str]:
    """The decoded new text of each prompt (special tokens skipped), cut before the first of the stop strings in
    ``config.stop``; the tokenizer's EOS ends a row. ``chat``: each prompt is a user message put through the
    tokenizer's chat template (with the assistant turn opened) first."""
    if chat:
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                               tokenize=False) for p in prompts]
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]  # the template has them
    else:
        ids = [tokenizer(p)["input_ids"] for p in prompts]
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos if eos is not None else 0
    new = generate_ids(model, ids, config, eos_ids=(eos,), pad_id=pad, batch_size=batch_size)
    return [cut_at_stops(tokenizer.decode(t, skip_special_tokens=True), config.stop) for t in new]


def cut_at_stops(text: str, stop) -> str:
    """``text`` before the first occurrence of any stop string in ``stop`` (its integer items are ignored)."""
    return min((text[:text.index(s)] for s in stop if isinstance(s, str) and s in text), key=len, default=text)
