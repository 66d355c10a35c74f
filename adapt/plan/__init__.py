"""Plan a trial for an accelerator slice without the accelerator: its steps compiled for the slice (a TPU topology
through libtpu's compiler on this CPU), memory per chip against HBM, and a cost-model prediction of the step's time
(:mod:`adapt.plan.planner`); the fastest variant that fits, over meshes, remat and micro-batching
(:mod:`adapt.plan.variants`); the chips' specifications and topology names (:mod:`adapt.plan.chips`); the collectives
of a compiled program and their time on the ICI (:mod:`adapt.plan.hlo`)."""

from adapt.plan.chips import CHIPS, Topology, parse
from adapt.plan.planner import Plan, plan
from adapt.plan.variants import SearchResult, search

__all__ = ["CHIPS", "Plan", "SearchResult", "Topology", "parse", "plan", "search"]
