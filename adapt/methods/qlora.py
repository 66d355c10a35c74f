"""QLoRA: LoRA on quantised frozen base weights.

QLoRA (Dettmers et al., 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314): the frozen
weights of the targeted linear layers are stored quantised and dequantised on the fly in the forward pass;
a LoRA update (:mod:`adapt.methods.lora`: same factors, initialisation, scaling, dropout) trains on top,
``y = x deq(W) + b + s * dropout(x) A B``. The gradient reaches only ``A`` and ``B`` (and the task head).

Storage, per targeted ``[in, out]`` kernel, in blocks of ``block_size`` (64) consecutive input elements of
one output column, each block with its absmax ``a`` as a float32 scale (``scales [ceil(in/bs), out]``; a
last, shorter block when ``bs`` does not divide ``in``):

* ``bits=8``: symmetric int8, ``q = round(w / a * 127)``, ``codes [in, out] int8``; error <= ``a / 254``.
* ``bits=4``: NF4, the paper's 16-level NormalFloat codebook (the exact values of bitsandbytes),
  ``q = argmin_k |w / a - NF4[k]|``, two codes per byte (row ``2i`` in the low nibble, ``2i+1`` in the
  high one), ``codes [ceil(in/2), out] uint8``; error <= half the widest gap between levels (0.152) * ``a``
  (mean absolute error 0.073 on N(0, 1) weights).

So storage is 1/4 (int8) or 1/8 (NF4) of the float32 kernel plus 1/64 for the scales. Double quantisation
of the scales (section 3 of the paper) is not done. The codes and scales are :class:`Quantized` variables,
not ``nnx.Param``: no optimizer, trainable filter, checkpoint of the trained state or export sees them;
they carry the kernel's logical axes (``[in, out]``), so the mesh rules shard them like the kernel.

Targets: as LoRA's; empty means every linear layer inside the family's numbered transformer layers
(q/k/v/o/gate/up/down for Llama, query/key/value/dense for BERT, c_attn/c_proj/c_fc for GPT-2), never the
embeddings or the task head. ``merge`` gives plain layers holding ``deq(W) + s A B`` (the base kernel's dtype).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adapt.core.schema import Choice, Int
from adapt.methods.lora import LoRA, LoRALinear
from adapt.methods.registry import register
from adapt.models.registry import model_info

# bitsandbytes' NF4 table (functional.py, get_4bit_type("nf4")), the paper's NormalFloat levels. numpy, so
# importing the module does not start a JAX backend (before jax.distributed.initialize).
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0], np.float32)
_NF4_MIDPOINTS = (NF4[1:] + NF4[:-1]) / 2  # [15]: x rounds to level k when midpoint k-1 < x <= midpoint k


def _per_row(scales, block_size: int, d_in: int):  # [blocks, out] -> [in, out], each block's scale repeated
    return jnp.repeat(scales, block_size, axis=0, total_repeat_length=scales.shape[0] * block_size)[:d_in]


@functools.partial(jax.jit, static_argnames=("bits", "block_size"))  # one program per shape, not ~15 eager ops
def quantize(w, bits: int = 4, block_size: int = 64):
    """``w [in, out]`` -> ``(codes, scales)``: codes ``[in, out] int8`` (bits 8) or ``[ceil(in/2), out]
    uint8`` (bits 4, two NF4 codes a byte), scales ``[ceil(in/block_size), out] float32`` (block absmax)."""
    d_in, d_out = w.shape
    blocks = -(-d_in // block_size)
    w = w.astype(jnp.float32)
    padded = jnp.pad(w, ((0, blocks * block_size - d_in), (0, 0))).reshape(blocks, block_size, d_out)
    scales = jnp.max(jnp.abs(padded), axis=1)  # [blocks, out]
    x = w / _per_row(jnp.where(scales > 0, scales, 1.0), block_size, d_in)  # [in, out], in [-1, 1]
    if bits == 8:
        return jnp.round(x * 127).astype(jnp.int8), scales
    codes = jnp.searchsorted(_NF4_MIDPOINTS, x, side="left").astype(jnp.uint8)  # [in, out], 0..15
    pairs = jnp.pad(codes, ((0, d_in % 2), (0, 0))).reshape(-1, 2, d_out)  # [ceil(in/2), 2, out]
    return pairs[:, 0] | (pairs[:, 1] << 4), scales


@functools.partial(jax.jit, static_argnames=("shape", "bits", "block_size"))
def dequantize(codes, scales, shape: tuple[int, int], bits: int = 4, block_size: int = 64):
    """The float32 ``[in, out]`` weight that :func:`quantize` stored as ``codes`` and ``scales``."""
    d_in, d_out = shape
    if bits == 8:
        levels = codes.astype(jnp.float32) / 127  # [in, out]
    else:
        nibbles = jnp.stack([codes & 0xF, codes >> 4], axis=1).reshape(-1, d_out)[:d_in]  # [in, out]
        levels = jnp.asarray(NF4)[nibbles.astype(jnp.int32)]
    return levels * _per_row(scales, block_size, d_in)


class Quantized(nnx.Variable):
    """Frozen quantised weights (codes and block scales). Not an ``nnx.Param``: nothing trains or exports it."""


class QLoRALinear(LoRALinear):
    """A LoRA layer whose frozen kernel is stored as :class:`Quantized` ``codes`` and ``scales``.

    ``kernel`` is not stored: reading it dequantises (an ``nnx.Param`` with the base kernel's dtype and
    logical axes, made on each read), so LoRA's forward pass, ``delta`` and ``merged`` run unchanged on it;
    assigning it, as ``LoRALinear.__init__`` does with the base kernel, quantises. ``bias`` stays a frozen
    ``nnx.Param``."""

    def __init__(self, base: nnx.Linear, name: str, *, bits: int, block_size: int, rank: int, scaling: float,
                 dropout: float, keys: list[jax.Array]):
        self.bits, self.block_size = bits, block_size
        super().__init__(base, name, rank=rank, scaling=scaling, dropout=dropout, dora=False, keys=keys)

    @property
    def kernel(self) -> nnx.Param:  # [(L,) in, out]
        deq = functools.partial(dequantize, shape=self.shape, bits=self.bits, block_size=self.block_size)
        codes, scales = self.codes[...], self.scales[...]
        w = deq(codes, scales) if codes.ndim == 2 else jax.vmap(deq)(codes, scales)  # a layer's in a scan, or all
        return nnx.Param(w.astype(self.param_dtype), logical_axes=self.axes[-w.ndim:])

    @kernel.setter
    def kernel(self, kernel: nnx.Param):  # [(L,) in, out]: in stacked layers, each layer's quantised alike
        self.shape, self.param_dtype = tuple(kernel.shape[-2:]), kernel.dtype
        self.axes = tuple(kernel.get_metadata().get("logical_axes") or (None,) * kernel.ndim)
        q = functools.partial(quantize, bits=self.bits, block_size=self.block_size)
        codes, scales = q(kernel[...]) if kernel.ndim == 2 else jax.vmap(q)(kernel[...])
        self.codes = Quantized(codes, logical_axes=self.axes)  # [(L,) in, out] int8 | [(L,) ceil(in/2), out] uint8
        self.scales = Quantized(scales, logical_axes=self.axes)  # [(L,) ceil(in/block_size), out] float32


@register
class QLoRA(LoRA):
    """LoRA (all of its knobs) on quantised base weights: ``bits`` 4 (NF4) or 8 (int8), ``block_size``."""

    name = "qlora"
    stacked_layers_ok = True  # a stacked kernel [L, in, out] is quantised layer by layer: codes, scales [L, ...]
    defaults = dict(LoRA.defaults, bits=4, block_size=64)
    schema = dict(LoRA.schema, bits=Choice(4, 8, doc="bits per quantised weight: 4 (NF4) or 8 (int8)"),
                  block_size=Int(min=1, doc="weights per quantisation block (one scale each)"))

    def targets_of(self, model) -> tuple | str:
        return self.targets or model_info(model).layer_linears()

    def wrap(self, layer, name, keys):
        return QLoRALinear(layer, name, bits=self.bits, block_size=self.block_size, rank=self.rank,
                           scaling=self.scaling(), dropout=self.dropout, keys=keys)

    # apply, trainable (the LoRA factors and the head) and merge (QLoRALinear is a LoRALinear) are LoRA's.
