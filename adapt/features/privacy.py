"""Differentially private fine-tuning (DP-SGD): per-example clipping, Gaussian noise once per logical batch,
Poisson sampling and a privacy accountant (``dp_accounting``), turned on by the ``privacy`` config section.

    dp = plan(config, examples=n, multiple=8)   # the run's DPSGD: clip, noise, batch sizes, steps, delta
    report(dp, steps)                            # {"epsilon": ..., "delta": ..., ...}: results.json's "privacy"

The feature (:class:`Privacy`) declares the section, plans the run's DP-SGD (:func:`plan`), whose
:class:`~adapt.training.dp.DPSGD` is the train step's extension, trains on Poisson batches and writes
:func:`report` into the results; the trial itself knows nothing of DP.

What a step does (:mod:`adapt.training.dp`, the step extension :func:`adapt.training.steps.make_train_step` takes):
each example of the batch gets its own gradient (``jax.vmap`` over the rows, of the TRAINABLE parameters only:
under LoRA or adapters the frozen base gets none), is clipped to global L2 norm <= C (``privacy.clip_norm``), the
clipped gradients are summed over the logical batch (over every micro-batch of gradient accumulation too), Gaussian
noise N(0, (sigma C)^2) is added once per logical batch (its key ``fold_in(fold_in(rng, step), NOISE)``) and the
sum is divided by the EXPECTED batch size B (``train.batch_size``), not by the rows drawn. An example's loss is
its summed token loss over its token count (token-level objectives: the mean over its targets; sequence
classification: its loss). Padding rows (``batch["real"] == 0``) add nothing; with gradient accumulation the real
rows fill the first micro-batches (:func:`~adapt.training.dp.real_first`) and a micro-batch of padding alone
computes nothing. The
adaptation method's penalty (L2-SP) does not read data: it is added after the noise.

Sampling (:class:`adapt.data.batches.PoissonBatches`, as jax_privacy 2.0's ``CyclicPoissonSampling`` with one
group and ``truncated_batch_size``): at each step every train example is in the batch independently with
probability q = B / n; a draw of more than ``max_batch_size`` rows keeps a uniformly random ``max_batch_size`` of
them (truncation); the batch is padded to ``max_batch_size`` rows, the step's fixed shape. ``max_batch_size`` 0
picks the smallest multiple of the step's row divisor that makes truncation rare (below).

Accounting, add/remove-one adjacency on the train split the trainer reads (n = its size): "pld" (default) composes
``TruncatedSubsampledGaussianDpEvent(n, q, max_batch_size, sigma)`` over the steps (exact for the truncated
sampler; ``PoissonSampledDpEvent`` when ``max_batch_size`` >= n, which never truncates); "rdp" composes
``PoissonSampledDpEvent(q, Gaussian(sigma))`` (which knows no truncation) and adds the truncation's probability to
delta: delta' = delta + (1 + e^eps) T P[Binomial(n + 1, q) > max_batch_size] (the truncated and untruncated runs
differ only when a step truncates). Auto ``max_batch_size``: per-step truncation probability <= 1e-6 (pld) or
delta' <= 1.01 delta (rdp). ``noise_multiplier`` 0 calibrates sigma for ``target_epsilon`` at ``delta``
(``dp_accounting.calibrate_dp_mechanism``). The epsilon reported is for the steps the run did.

Refused, each a one-line ConfigError naming the key (jax_privacy's sharp edges, as they apply here; those naming
another feature are :attr:`Privacy.refuses`, the pair rule's, :mod:`adapt.features.base`):

- early stopping or the best checkpoint chosen on dev (``train.early_stopping.metric``): non-private model
  selection on data that may be private, unless ``privacy.public_dev`` says the dev data is public;
- ``data.mixture`` / ``data.mixture_stages`` / ``multitask.tasks``: sampling other than the Poisson sampling
  accounted;
- ``distill.teacher``: the teacher's outputs carry its own training data (the same private data, perhaps), which
  the student's epsilon does not count;
- ``data.augment``: copies of an example are separate rows, each clipped alone, so one example moves the sum by
  more than C (augmentation would have to happen inside the per-example gradient);
- ``data.pack`` for language-model data: a packed row holds parts of several documents and a document spans rows,
  so a row is not an example;
- ``data.quality`` "drop" by a check that compares train examples with each other (duplicates, near duplicates,
  label errors): adding one example can drop others, so neighbouring data sets give train splits differing by
  more than one example (empty, too long and leakage judge each train example alone against fixed dev/test);
- ``optimizer.clip_norm`` > 0: clipping the noisy mean again does not protect anything (the per-example bound is
  ``privacy.clip_norm``) and distorts the calibrated update; set it to 0;
- populations (:func:`adapt.study.populations.run_population`): not supported, run DP trials alone;
- ``noise_multiplier`` 0 with no ``target_epsilon`` (no noise is not private), or both set.

Not refused, and outside the guarantee: choosing among trials by a dev metric (a sweep's best hyperparameters, an
adaptive search) spends privacy no trial's epsilon counts; the splits carved by ``data.split_ratios`` or sampled
by ``data.train_examples`` are the data the guarantee is about (one record more in the source reshuffles them).
A statistic over the batch (batch norm) cannot arise: each example's forward pass is its own.
"""

from __future__ import annotations

import functools
import math

import jax
import ml_collections

from adapt.core import schema
from adapt.core.errors import ConfigError
from adapt.core.schema import Bool, Choice, Float, Int
from adapt.data.batches import PoissonBatches, epoch_steps
from adapt.features.base import Feature, Refusal, register
from adapt.training.dp import DPSGD
from adapt.training.state import batch_ways

ACCOUNTANTS = ("pld", "rdp")
TRUNCATION = 1e-6  # pld, auto max_batch_size: the largest probability that a step truncates its draw
RDP_DELTA_SHARE = 0.01  # rdp, auto max_batch_size: truncation's largest share of delta
SIGMA_MIN = 0.3  # calibration searches noise multipliers from here up
CROSS_EXAMPLE_CHECKS = ("duplicates", "near_duplicates", "label_errors")  # data.quality checks comparing examples


def defaults() -> ml_collections.ConfigDict:
    """The ``privacy`` section: off."""
    return ml_collections.ConfigDict(dict(
        enabled=False,
        noise_multiplier=0.0,  # sigma; 0: calibrated for target_epsilon
        target_epsilon=0.0,
        delta=0.0,  # 0: 1 / n, n the train examples
        clip_norm=1.0,  # C: each example's gradient is clipped to this global L2 norm
        accountant="pld",  # pld | rdp
        max_batch_size=0,  # rows of a step (draws truncated, batches padded to it); 0: auto
        public_dev=False,  # the dev data is public: early stopping and the best checkpoint on it are allowed
    ))


SCHEMA = dict(  # of defaults()
    enabled=Bool(doc="train with DP-SGD"),
    noise_multiplier=Float(ge=0, hint="0: calibrated for target_epsilon", doc="sigma of the Gaussian noise"),
    target_epsilon=Float(ge=0, doc="the epsilon to calibrate sigma for"),
    delta=Float(ge=0, lt=1, hint="0: 1 / train examples", doc="delta of the guarantee"),
    clip_norm=Float(gt=0, doc="C: each example's gradient is clipped to this global L2 norm"),
    accountant=Choice(*ACCOUNTANTS, doc="the privacy accountant"),
    max_batch_size=Int(min=0, hint="0: auto", doc="rows of a step (draws truncated, batches padded to it)"),
    public_dev=Bool(doc="the dev data is public: early stopping on it is allowed"),
)


def check(config) -> None:
    """The refusals of the module docstring for a trial's ``config`` with privacy on that name no other feature (those
    are :attr:`Privacy.refuses`); the section's own values too."""
    p = config.privacy
    schema.check(SCHEMA, p, "privacy")
    if (p.noise_multiplier > 0) == (p.target_epsilon > 0):
        raise ConfigError(f"privacy.noise_multiplier={p.noise_multiplier} and privacy.target_epsilon="
                          f"{p.target_epsilon}; expected exactly one of them > 0 (no noise is not private)")
    if config.train.early_stopping.metric and not p.public_dev:
        raise ConfigError(f"train.early_stopping.metric={config.train.early_stopping.metric!r} picks the checkpoint "
                          f"on dev data, outside the privacy guarantee; set it to '' or privacy.public_dev=True")
    if config.optimizer.clip_norm:
        raise ConfigError(f"optimizer.clip_norm={config.optimizer.clip_norm} would clip the noisy mean gradient, "
                          f"which protects nothing under privacy (privacy.clip_norm bounds each example); set it to 0")
    d = config.data
    if d.format in ("lm", "sft") and d.pack:
        raise ConfigError("data.pack=True: a packed row mixes documents and a document spans rows, so a row is not "
                          "the example privacy protects; set data.pack=False")


def _drops_by_others(config) -> str:
    """The first ``data.quality`` check that drops train examples because of others, as its setting ("" if none)."""
    quality = config.data.get("quality", {})
    return next((f"data.quality.{name}='drop'" for name in CROSS_EXAMPLE_CHECKS if quality.get(name) == "drop"), "")


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _tail(examples: int, rate: float, size: int) -> float:
    """P[Binomial(examples + 1, rate) > size]: a neighbouring data set (one example more) truncating a step."""
    from scipy.stats import binom

    return float(binom.sf(size, examples + 1, rate))


def _truncation_delta(eps: float, steps: int, examples: int, rate: float, size: int) -> float:
    """rdp: what truncation adds to delta, (1 + e^eps) T P[truncation] (at most 1)."""
    tail = _tail(examples, rate, size)
    return 0.0 if tail == 0 else min(1.0, (1 + math.exp(min(eps, 700.0))) * steps * tail)


def _event(sigma: float, rate: float, examples: int, size: int, accountant: str):
    import dp_accounting

    if accountant == "pld" and size < examples:  # a batch as large as the data never truncates: plain Poisson
        return dp_accounting.TruncatedSubsampledGaussianDpEvent(examples, rate, size, sigma)
    return dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(sigma))


def _fresh(accountant: str):
    from dp_accounting import pld, rdp

    return pld.PLDAccountant() if accountant == "pld" else rdp.RdpAccountant()


@functools.lru_cache(maxsize=64)
def _epsilon(sigma: float, rate: float, examples: int, size: int, steps: int, delta: float, accountant: str):
    acc = _fresh(accountant)
    acc.compose(_event(sigma, rate, examples, size, accountant), steps)
    return acc.get_epsilon(delta)


@functools.lru_cache(maxsize=16)
def _calibrate(target: float, rate: float, examples: int, size: int, steps: int, delta: float, accountant: str):
    import dp_accounting

    least = _epsilon(SIGMA_MIN, rate, examples, size, steps, delta, accountant)
    if least <= target:  # the search starts at SIGMA_MIN
        raise ConfigError(f"privacy.target_epsilon={target} is met with noise_multiplier {SIGMA_MIN} already "
                          f"(epsilon {least:.3g}); set privacy.noise_multiplier instead")
    return float(dp_accounting.calibrate_dp_mechanism(
        lambda: _fresh(accountant),
        lambda sigma: dp_accounting.SelfComposedDpEvent(_event(sigma, rate, examples, size, accountant), steps),
        target, delta, bracket_interval=dp_accounting.LowerEndpointAndGuess(SIGMA_MIN, 1.0), tol=1e-3))


def plan(config, examples: int, multiple: int = 1) -> DPSGD:
    """The DP-SGD of a trial whose train split has ``examples`` examples and whose step's rows must divide by
    ``multiple`` (gradient accumulation, the batch's shards): checks (:func:`check`), the rows, the steps
    (``train.steps``, else ``train.epochs`` of n / B steps) and sigma (given, or calibrated)."""
    check(config)
    p, t = config.privacy, config.train
    batch = t.batch_size
    if batch > examples:
        raise ConfigError(f"train.batch_size={batch} is the expected Poisson batch; it exceeds the {examples} train "
                          f"examples")
    if p.max_batch_size and p.max_batch_size % multiple:
        raise ConfigError(f"privacy.max_batch_size={p.max_batch_size} is not a multiple of {multiple} (gradient "
                          f"accumulation x the batch's shards)")
    rate, delta = batch / examples, p.delta or 1.0 / examples
    steps = int(t.steps or math.ceil(t.epochs * epoch_steps(examples, batch)))
    size = p.max_batch_size or _round_up(batch, multiple)
    sigma = p.noise_multiplier
    if p.accountant == "pld":
        while not p.max_batch_size and _tail(examples, rate, size) > TRUNCATION:
            size += multiple
        sigma = sigma or _calibrate(p.target_epsilon, rate, examples, size, steps, delta, "pld")
    else:
        sigma = sigma or _calibrate(p.target_epsilon, rate, examples, size, steps, delta, "rdp")
        eps = _epsilon(sigma, rate, examples, size, steps, delta, "rdp")
        while not p.max_batch_size and _truncation_delta(eps, steps, examples, rate, size) > RDP_DELTA_SHARE * delta:
            size += multiple
    return DPSGD(p.clip_norm, sigma, batch, size, examples, steps, delta, p.accountant)


def report(dp: DPSGD, steps: int) -> dict:
    """The guarantee after ``steps`` steps, as results.json's ``privacy`` entry (numbers only): epsilon at delta
    (rdp: delta with truncation's share added) and the parameters that gave it."""
    eps = _epsilon(dp.noise_multiplier, dp.sampling_rate, dp.examples, dp.max_batch_size, steps, dp.delta,
                   dp.accountant) if steps else 0.0
    delta = dp.delta
    if dp.accountant == "rdp":
        delta += _truncation_delta(eps, steps, dp.examples, dp.sampling_rate, dp.max_batch_size)
    return {"epsilon": eps, "delta": delta, "noise_multiplier": dp.noise_multiplier, "clip_norm": dp.clip_norm,
            "sampling_rate": dp.sampling_rate, "steps": steps, "examples": dp.examples,
            "expected_batch_size": dp.expected_batch_size, "max_batch_size": dp.max_batch_size}


class Privacy(Feature):
    """DP-SGD as a trial feature: the ``privacy`` section, its refusals, the run's :class:`DPSGD` as the train step's
    extension, Poisson batches as the train stream and the guarantee spent in the results."""

    name, key, section, schema = "privacy", "privacy.enabled", "privacy", SCHEMA
    provides = ("step", "train_stream")
    stacked_layers_ok = True  # per-example gradients through the scan: a stacked parameter's norm is its layers'
    refuses = (
        Refusal("multitask", "a multi-task trial draws its batches per task, not by the Poisson sampling privacy "
                             "accounts; train one task"),
        Refusal("distill", "the teacher's outputs carry what it learned from its own training data, which the "
                           "student's epsilon does not count; not supported"),
        Refusal("mixture", "a mixture samples batches other than by the Poisson sampling privacy accounts; train one "
                           "source"),
        Refusal("augment", "an example's copies are rows clipped apart, so it moves a batch by more than "
                           "privacy.clip_norm; set it to 0"),
        Refusal("quality", "removes train examples because of others, so one example can change several; use "
                           "'report' under privacy", when=_drops_by_others),
    )
    solo = "DP-SGD trials do not train as a population (not supported); run them alone (pack 1)"

    def defaults(self):
        return defaults()

    def enabled(self, config) -> bool:
        return bool(config.get("privacy", {}).get("enabled", False))

    def check(self, config) -> None:
        if self.enabled(config):
            check(config)

    def step(self, build) -> None:
        if "train" not in build.splits:
            raise ConfigError("privacy.enabled=True needs a train split to sample from")
        t = build.config.train
        multiple = math.lcm(t.grad_accum, batch_ways(build.mesh, build.rules), jax.process_count())
        examples = len(next(iter(build.splits["train"].values())))
        build.extension = build.parts[self.name] = plan(build.config, examples, multiple)

    def train_stream(self, trial):
        dp = trial.parts[self.name]
        return PoissonBatches(trial.splits["train"], dp.expected_batch_size, dp.max_batch_size,
                              seed=trial.config.train.seed)

    def results(self, started, fit) -> dict:  # epsilon and delta of the steps done
        return {"privacy": report(started.trial.parts[self.name], fit.steps)}


register(Privacy())
