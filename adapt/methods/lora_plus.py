"""LoRA+ (Hayou, Ghosh & Yu, 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models", arXiv:2402.12354): LoRA
whose ``B`` factors train at ``ratio`` times the learning rate of the ``A`` factors (and of everything else that
trains, the task head), the paper's and PEFT's (``create_loraplus_optimizer``, ``loraplus_lr_ratio``) default 16.
The model is LoRA's: it merges, exports and reads PEFT folders as LoRA (PEFT keeps the ratio in the optimizer, not in
the adapter); an adapter PEFT saved loads as ``lora``.
"""

from adapt.core.schema import Float
from adapt.methods.lora import LoRA
from adapt.methods.registry import register


@register
class LoRAPlus(LoRA):
    name = "lora_plus"
    defaults = dict(LoRA.defaults, ratio=16.0)
    schema = dict(LoRA.schema, ratio=Float(gt=0, doc="the B factors' learning rate over the A factors' (LoRA+'s "
                                                     "lambda)"))

    def lr_scale(self, path, depth, top):
        return self.ratio if str(path[-1]) == "lora_b" else 1.0

    @classmethod
    def knobs_from_peft(cls, config):
        return None  # PEFT's file is LoRA's
