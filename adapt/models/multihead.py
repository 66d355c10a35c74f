"""One shared backbone under one head per task: the model of multi-task fine-tuning (:mod:`adapt.features.multitask`).

    multi = MultiHead.combine({"chemprot": chemprot_model, "bc5cdr": ner_model})   # each from from_pretrained
    logits = multi(input_ids=ids, attention_mask=mask)   # {"chemprot": [B, C1], "bc5cdr": [B, T, C2]}
    single = multi.task_model("chemprot")                 # that task's plain family model (export, evaluation)

The backbone sits under the family's ``base_prefix`` (``bert``), where it sits in a single-task model, so LoRA's
targets, layer-wise learning rates and checkpoint names find it as they do there; task ``n``'s head is its family
head class with the backbone taken out, under ``tasks.<n>``, called through the class's ``head(x, backbone, rngs)``
(:mod:`adapt.models.registry`). Every head runs on every batch: a head is a few small matrices beside the
backbone, and one compiled step then serves batches of every task.
"""

from __future__ import annotations

from flax import nnx

from adapt.core.errors import ConfigError
from adapt.models.loading import FRESH_ATTR, fresh_paths
from adapt.models.registry import ModelInfo, head_of, model_info


def _like(abstract, source):
    """``source`` (a nested dict) restricted to the keys of ``abstract``, recursively."""
    if not isinstance(abstract, dict):
        return source
    return {k: _like(v, source[k]) for k, v in abstract.items()}


class MultiHead(nnx.Module):
    """``backbone`` (under attribute ``prefix``) and ``heads`` (task name -> a head-class instance without its
    backbone). Calling it gives each task's logits: ``{name: [B, C] or [B, T, C]}``."""

    def __init__(self, prefix: str, backbone: nnx.Module, heads: dict[str, nnx.Module]):
        self.cfg, self.prefix = backbone.cfg, prefix
        setattr(self, prefix, backbone)
        self.tasks = nnx.Dict(heads)

    @property
    def backbone(self) -> nnx.Module:
        return getattr(self, self.prefix)

    def model_info(self) -> ModelInfo:
        """Its family's facts (:func:`adapt.models.registry.model_info`): the backbone's family, under a head per
        task, whose heads are the tasks' heads."""
        family = model_info(self.backbone).family
        return ModelInfo(family, "multi_task", family.dims(self.cfg), family.base_prefix, self.head_prefixes())

    @classmethod
    def combine(cls, models: dict[str, nnx.Module]) -> MultiHead:
        """One model per task, all of one family and checkpoint, into one: the backbone of the model whose backbone
        has the most parameters (a pooler that a sequence classifier reads) is kept, the others' are dropped.
        The models are consumed (their backbones detached)."""
        infos = {name: model_info(m) for name, m in models.items()}
        families = sorted({i.family.name for i in infos.values()})
        if len(families) != 1:
            raise ConfigError(f"multitask.tasks: the tasks' models are of different families ({', '.join(families)})")
        for name, m in models.items():
            if not hasattr(type(m), "head") or not infos[name].backbone_path:
                raise ConfigError(f"multitask.tasks.{name}: the {families[0]} {infos[name].head} head cannot share a "
                                  f"backbone (its class has no head(x, backbone, rngs))")
        prefix = next(iter(infos.values())).family.base_prefix

        def size(m):
            return len(nnx.to_flat_state(nnx.state(getattr(m, prefix))))

        donor = max(models.values(), key=size)
        backbone = getattr(donor, prefix)
        fresh = [p for p in fresh_paths(donor) if p[0] == prefix]
        fresh += [("tasks", name, *p) for name, m in models.items() for p in fresh_paths(m) if p[0] != prefix]
        for m in models.values():
            delattr(m, prefix)
        multi = cls(prefix, backbone, models)
        setattr(multi, FRESH_ATTR, tuple(fresh))  # static: part of the graphdef
        return multi

    def __call__(self, *, rngs: nnx.Rngs | None = None, **inputs) -> dict:
        """``inputs``: the backbone's (``input_ids [B, T]``, ``attention_mask [B, T]``, ...)."""
        x = self.backbone(**inputs, rngs=rngs)  # [B, T, D]
        return {name: head.head(x, self.backbone, rngs) for name, head in self.tasks.items()}

    def head_prefixes(self) -> tuple[str, ...]:
        """Dotted path prefixes of every task's head (the family's ``head_paths``; those inside the backbone, BERT's
        pooler, once)."""
        out = []
        for name, head in self.tasks.items():
            family, kind = head_of(type(head))
            for path in family.head_paths.get(kind, ()):
                inner = path if path.startswith(self.prefix + ".") else f"tasks.{name}.{path}"
                if inner not in out:
                    out.append(inner)
        return tuple(out)

    def task_model(self, name: str) -> nnx.Module:
        """Task ``name``'s model as its family builds it (backbone and head, the backbone's parameters shared with
        this model's): what export writes and what evaluating that head alone runs."""
        head = self.tasks[name]
        model = nnx.eval_shape(lambda: type(head)(head.cfg, rngs=nnx.Rngs(0)))
        abstract = nnx.to_pure_dict(nnx.state(model))
        values = {**nnx.to_pure_dict(nnx.state(head)), self.prefix: nnx.to_pure_dict(nnx.state(self.backbone))}
        nnx.update(model, nnx.State(_like(abstract, values)))
        return model
