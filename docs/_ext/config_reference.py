"""A Sphinx extension: ``reference/config.md`` is generated when it is read, from the trial config's schema
(:data:`adapt.experiment.base.SCHEMA`, with the ``active`` section that :mod:`adapt.study.active` declares and every
method's knobs) by :func:`adapt.core.schema.reference`; the file in the source tree holds only its introduction
and the marker line that the tables replace. ``tests/core/test_config_reference.py`` holds every key to an entry."""

MARKER = "<!-- the tables: generated from the schema at build time -->"


def tables() -> str:
    import adapt.study.active as active  # declares the active section (base.add_section)
    from adapt import methods
    from adapt.core import schema
    from adapt.experiment import base

    config = active.with_section(base.base_config()).to_dict()

    def default(entry):
        if entry.variant:  # a method's knob
            return methods.METHODS[entry.variant].defaults[entry.key.split(".", 1)[1]]
        value = config
        for part in entry.key.split("."):
            value = value[part]  # "<name>": KeyError, no default
        return value

    bare = ", ".join(f"`{name}`" for name, cls in methods.METHODS.items() if not cls.schema)
    intro = dict(INTRO, method=INTRO["method"] + f" Methods without knobs: {bare}.")
    return schema.reference(base.SCHEMA, default, intro=intro)


INTRO = {
    "mesh": "The device mesh (`adapt.core.sharding`): its shape and the logical-axis rules.",
    "optimizer": "The optimizer and its learning-rate schedule (`adapt.training.optim`).",
    "train": "The train loop (`adapt.training.loop`): steps, evaluation, checkpoints, early stopping.",
    "privacy": "DP-SGD (`adapt.features.privacy`, [guide](../guides/privacy.md)).",
    "method": "The adaptation method: `name` picks it, and the keys beside it are its knobs, one table per method "
              "below ([guide](../guides/methods.md)).",
    "model": "The pretrained model a trial starts from (`adapt.models`).",
    "data": "The data section (`adapt.data.section`, [guide](../guides/data.md)); `data.mixture.<name>` and "
            "`eval.sets.<name>` take the same keys.",
    "objective": "Settings of the task's objective (`adapt.training.objectives`).",
    "eval": "Evaluation splits and named evaluation sets (`adapt.evaluation.evalsets`).",
    "generation": "Generation at evaluation for `sft` trials (`adapt.evaluation.generation`).",
    "export": "What a trial writes for a later stage.",
    "init_from": "Starting from a previous stage.",
    "multitask": "Multi-task fine-tuning (`adapt.features.multitask`, [guide](../guides/multitask.md)).",
    "distill": "Distillation (`adapt.features.distill`, [guide](../guides/methods.md#distillation)).",
    "meta": "Free-form labels a sweep puts on its trials (table rows and columns).",
    "active": "Active learning (`adapt.study.active`, [guide](../guides/active_learning.md)); only the configs "
              "that `scripts/active.py` runs have it.",
}


def _fill(app, docname, source):
    if docname == "reference/config":
        source[0] = source[0].replace(MARKER, tables())


def setup(app):
    app.connect("source-read", _fill)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
