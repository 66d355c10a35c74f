"""PiSSA and OLoRA: LoRA whose factors start from the base weight's principal directions instead of zero, the base
weight corrected so that the model is unchanged at step 0.

PiSSA (Meng, Wang & Zhang, 2024, "PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large Language
Models", arXiv:2404.02948): with ``W = U S V^T`` (PyTorch's ``[out, in]``), ``A = sqrt(S_r / s) V_r^T`` and
``B = U_r sqrt(S_r / s)`` for the r largest singular values, ``s`` LoRA's scale. OLoRA (Büyükakyüz, 2024, "OLoRA:
Orthonormal Low-Rank Adaptation of Large Language Models", arXiv:2406.01775): with ``W = Q R``, ``A = R_r`` (the first
r rows) and ``B = Q_r`` (the first r columns). Both then train ``W - s B A`` (the residual) + ``s B A`` as LoRA does.
PEFT's ``init_lora_weights="pissa"`` and ``"olora"`` (``pissa_init``, ``olora_init``) compute the same.

The residual base is not the checkpoint: exported as PEFT's conversion does
(``path_initial_model_for_weight_conversion``), the adapter becomes a LoRA of rank 2r on the original weight,
``A' = [A; A0]``, ``B' = [B, -B0]`` (the factors at step 0 kept frozen beside them), with ``lora_alpha`` doubled
(rsLoRA: times sqrt 2) so the scale stays; merged, the model is the residual plus ``s B A``, the original plus the
trained change.
"""

import math

import jax.numpy as jnp
import numpy as np
from flax import nnx

from adapt.methods.base import host
from adapt.methods.lora import LoRA, LoRALinear
from adapt.methods.registry import register


class LoRAInit(nnx.Variable):
    """A LoRA factor's value at step 0 (PiSSA, OLoRA): never trained; the PEFT export subtracts its product."""


class PrincipalLoRA(LoRA):
    """LoRA initialised from a factorisation of each target weight (:meth:`factors`)."""

    def factors(self, weight: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """``weight [(L,) out, in]`` (float32) -> PEFT's ``lora_A [(L,) r, in]`` and ``lora_B [(L,) out, r]``."""
        raise NotImplementedError

    def apply(self, model, rngs):
        model = super().apply(model, rngs)
        for _, layer in nnx.iter_modules(model):
            if isinstance(layer, LoRALinear):
                weight = layer.kernel[...].astype(jnp.float32).swapaxes(-1, -2)  # [(L,) out, in]
                a, b = self.factors(weight)
                s = layer.scaling[...][..., None, None]
                layer.kernel.set_value((weight - s * (b @ a)).swapaxes(-1, -2).astype(layer.kernel.dtype))
                layer.lora_a.set_value(a.swapaxes(-1, -2))  # ours: [(L,) in, r], [(L,) r, out]
                layer.lora_b.set_value(b.swapaxes(-1, -2))
                # copies, not the trained factors' buffers: the train step donates its state, and would free them twice
                layer.lora_a0 = LoRAInit(jnp.array(layer.lora_a[...], copy=True))
                layer.lora_b0 = LoRAInit(jnp.array(layer.lora_b[...], copy=True))
        return model

    def peft_tensors(self, layer):
        now = super().peft_tensors(layer)
        a0, b0 = host(layer.lora_a0[...]).swapaxes(-1, -2), host(layer.lora_b0[...]).swapaxes(-1, -2)
        return {"lora_A.weight": np.concatenate([now["lora_A.weight"], a0], axis=-2),  # [(L,) 2r, in]
                "lora_B.weight": np.concatenate([now["lora_B.weight"], -b0], axis=-1)}  # [(L,) out, 2r]

    def peft_config(self, layers):
        return {**super().peft_config(layers), "r": 2 * self.rank,
                "lora_alpha": self.alpha * (math.sqrt(2) if self.rslora else 2)}

    @classmethod
    def knobs_from_peft(cls, config):
        return None  # exported, the adapter is a plain LoRA on the original weight


@register
class PiSSA(PrincipalLoRA):
    name = "pissa"

    def factors(self, weight):
        u, s, vh = jnp.linalg.svd(weight, full_matrices=False)  # [(L,) out, k], [(L,) k], [(L,) k, in]
        root = jnp.sqrt(s[..., :self.rank] / self.scaling())  # [(L,) r]
        return root[..., :, None] * vh[..., :self.rank, :], u[..., :, :self.rank] * root[..., None, :]


@register
class OLoRA(PrincipalLoRA):
    name = "olora"

    def factors(self, weight):
        q, r = jnp.linalg.qr(weight)  # [(L,) out, k], [(L,) k, in]
        return r[..., :self.rank, :], q[..., :, :self.rank]
