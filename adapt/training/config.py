"""Defaults for the ``mesh``, ``optimizer``, ``train``, ``privacy`` and ``method`` sections of an experiment config.

Experiment configs (``configs/*.py``) start from :func:`defaults` and override what they need; the
sections are locked, so a misspelt key is an error instead of a silent no-op. The ``method`` section
(the adaptation method, :mod:`adapt.methods`) holds ``name`` and that method's knobs: replace it with
``adapt.methods.method_config("lora", rank=8)`` (every knob present, so command-line overrides are
checked), or set keys on it; :func:`adapt.methods.build` refuses a knob the method does not have.
"""

from __future__ import annotations

import ml_collections

from adapt import privacy
from adapt.sharding import DEFAULT_RULES


def defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.mesh = ml_collections.ConfigDict(dict(
        shape=(1, -1, 1),  # (data, fsdp, tensor); -1 takes the remaining devices
        rules=tuple(DEFAULT_RULES),  # logical axis -> mesh axes
    ))
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw",  # adamw | adafactor | sgd
        learning_rate=2e-5,
        weight_decay=0.01,
        decay_exclude=("bias", "norm"),  # parameter kinds without weight decay: bias, norm, embedding
        b1=0.9, b2=0.999, eps=1e-8,  # adamw
        momentum=0.0,  # sgd
        schedule="linear",  # constant | linear | cosine (after warmup)
        warmup_steps=0,
        warmup_ratio=0.0,  # fraction of the run; set this or warmup_steps
        end_lr_ratio=0.0,  # final learning rate / peak
        clip_norm=1.0,  # global-norm clipping; 0 = off
    ))
    c.train = ml_collections.ConfigDict(dict(
        seed=0,
        batch_size=32,  # global, over all processes and devices
        grad_accum=1,  # micro-batches per step (batch_size must divide by it)
        steps=0,  # optimizer steps; 0 = use epochs
        epochs=1.0,
        remat="none",  # none | full | dots: rematerialise each transformer layer
        # The first N steps (of train.steps: the schedule spans both phases) train only the parameters loading
        # initialised fresh (a missing MLM head or classifier), then everything the method trains; 0 = off.
        head_warmup_steps=0,
        log_every=10,
        eval_every=0,  # steps; 0 = once per epoch
        checkpoint_every=0,  # steps; 0 = only at the end
        keep_checkpoints=2,
        early_stopping=ml_collections.ConfigDict(dict(
            metric="",  # e.g. "dev/macro_f1"; "" = no early stopping and no best checkpoint
            mode="max",  # max | min
            patience=0,  # evaluations without improvement before stopping; 0 = never stop early
        )),
    ))
    c.privacy = privacy.defaults()  # DP-SGD: see adapt/privacy.py
    c.method = ml_collections.ConfigDict(dict(name="full"))
    c.lock()
    c.method.unlock()  # its keys depend on the method; adapt.methods.build checks them
    return c
