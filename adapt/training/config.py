"""Defaults for the ``mesh``, ``optimizer``, ``train`` and ``method`` sections of an experiment config (a trial
feature's section, ``privacy`` for one, is the feature's: :mod:`adapt.features`).

Experiment configs (``configs/*.py``) start from :func:`defaults` and override what they need; the
sections are locked, so a misspelt key is an error instead of a silent no-op. The ``method`` section
(the adaptation method, :mod:`adapt.methods`) holds ``name`` and that method's knobs: replace it with
``adapt.methods.method_config("lora", rank=8)`` (every knob present, so command-line overrides are
checked), or set keys on it; :func:`adapt.methods.build` refuses a knob the method does not have.
"""

from __future__ import annotations

import ml_collections

from adapt import methods
from adapt.core.schema import Choice, Either, Float, Int, Str, Tuple
from adapt.core.sharding import DEFAULT_RULES, MESH_AXES
from adapt.models.layers import REMAT_POLICIES
from adapt.models.moe import DISPATCH
from adapt.models.splash import KERNELS
from adapt.training.optim import DECAY_KINDS, OPTIMIZERS, SCHEDULES


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
        loss_chunks=1,  # the vocabulary head and loss over this many chunks of the length (adapt/models/vocab.py)
        attention="auto",  # auto | xla | splash: TPU's flash kernel where it applies (adapt/models/splash.py)
        moe_dispatch="sorted",  # sorted | dense: how a mixture of experts reaches its experts (adapt/models/moe.py)
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
    c.method = ml_collections.ConfigDict(dict(name="full"))
    c.lock()
    c.method.unlock()  # its keys depend on the method; adapt.methods.build checks them
    return c


_AXES = Either(Choice(None), Str(empty=False), Tuple(of=Str(empty=False)), doc="mesh axes: none, one or several")
SCHEMA = dict(  # the sections of defaults(), as adapt.core.schema declares them
    mesh=dict(
        shape=Tuple(of=Either(Choice(-1), Int(min=1)), len=len(MESH_AXES),
                    doc=f"devices per mesh axis {MESH_AXES}; one -1 takes the remaining devices"),
        rules=Tuple(of=Tuple(items=(Str(empty=False), _AXES)), doc="(logical axis, mesh axes) pairs"),
    ),
    optimizer=dict(
        name=Choice(*OPTIMIZERS, doc="the optimizer"),
        learning_rate=Float(gt=0, doc="the peak learning rate"),
        weight_decay=Float(ge=0, doc="decoupled weight decay (adamw, adafactor, sgd)"),
        decay_exclude=Tuple(of=Choice(*DECAY_KINDS), doc="parameter kinds without weight decay"),
        b1=Float(ge=0, lt=1, doc="adamw's first-moment decay"),
        b2=Float(ge=0, lt=1, doc="adamw's second-moment decay"),
        eps=Float(gt=0, doc="adamw's denominator epsilon"),
        momentum=Float(ge=0, lt=1, doc="sgd's momentum (0: none)"),
        schedule=Choice(*SCHEDULES, doc="the learning rate after warmup"),
        warmup_steps=Int(min=0, doc="linear warmup steps (or warmup_ratio)"),
        warmup_ratio=Float(ge=0, le=1, doc="linear warmup as a fraction of the run's steps"),
        end_lr_ratio=Float(ge=0, le=1, doc="the final learning rate / the peak"),
        clip_norm=Float(ge=0, hint="0: off", doc="global gradient-norm clipping"),
    ),
    train=dict(
        seed=Int(min=0, doc="initialisation, dropout and data order"),
        batch_size=Int(min=1, doc="examples (rows) per optimizer step, over all devices and processes"),
        grad_accum=Int(min=1, doc="micro-batches per step"),
        steps=Int(min=0, hint="0: train.epochs", doc="optimizer steps"),
        epochs=Float(ge=0, doc="passes over the train split when train.steps is 0"),
        remat=Choice(*REMAT_POLICIES, doc="rematerialisation of each transformer layer"),
        loss_chunks=Int(min=1, hint="1: the whole logits", doc="chunks of the length the vocabulary head and loss "
                        "run over, one chunk's logits at a time"),
        attention=Choice(*KERNELS, doc="the attention kernel: auto (TPU's splash kernel on a TPU mesh, where it "
                         "applies), xla (ours), splash (off a TPU: interpreted, slow)"),
        moe_dispatch=Choice(*DISPATCH, doc="a mixture of experts' dispatch: sorted (tokens grouped by expert, "
                            "ragged matmuls) or dense (every expert on every token, unchosen ones weighted 0)"),
        head_warmup_steps=Int(min=0, hint="0: off", doc="steps training only freshly initialised parameters first"),
        log_every=Int(min=1, doc="steps between train-metric logs"),
        eval_every=Int(min=0, hint="0: once per epoch", doc="steps between evaluations"),
        checkpoint_every=Int(min=0, hint="0: only at the end", doc="steps between checkpoints"),
        keep_checkpoints=Int(min=1, doc="checkpoints kept"),
        early_stopping=dict(
            metric=Str(doc='the metric watched, e.g. "dev/macro_f1"; "": no early stopping or best checkpoint'),
            mode=Choice("max", "min", doc="whether the metric is better high or low"),
            patience=Int(min=0, hint="0: never stop early", doc="evaluations without improvement before stopping"),
        ),
    ),
    method=methods.SCHEMA,
)
