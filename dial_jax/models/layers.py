"""Building blocks shared by every decoder family: projections (with LoRA), RMSNorm, RoPE, attention, MLP.

Every parameter carries logical axis names (``embed``, ``heads``, ``kv_heads``, ``head_dim``, ``mlp``,
``vocab``, ``norm``, ``lora_rank``); ``dial_jax.parallel`` maps them onto mesh axes.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

LORA_COLLECTION = "lora"
# Attention layer types (the HF config's names); MIXED: scanned layers of both types, where a per-layer flag picks
# the mask and RoPE inside the scan.
FULL = "full_attention"
SLIDING = "sliding_attention"
MIXED = "mixed"


def _param_init(std: float = 0.02):
  return nn.initializers.normal(stddev=std)


class Projection(nn.Module):
  """A linear map contracting the trailing ``len(in_shape)`` axes of x into ``out_shape``.

  The kernel has shape ``in_shape + out_shape`` (HF ``Linear.weight`` transposed and reshaped). When
  ``lora_rank > 0`` a low-rank delta ``(alpha / rank) * (x A) B`` is added, with A and B in the separate
  ``lora`` variable collection so that the frozen base weights and the trainable adapter stay apart.
  """

  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  in_axes: tuple[str, ...]
  out_axes: tuple[str, ...]
  use_bias: bool = False
  lora_rank: int = 0
  lora_alpha: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    n_in = len(self.in_shape)
    kernel = self.param(
        "kernel",
        nn.with_logical_partitioning(_param_init(), self.in_axes + self.out_axes),
        self.in_shape + self.out_shape,
        self.param_dtype,
    )
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    x = x.astype(self.dtype)
    y = jax.lax.dot_general(x, kernel.astype(self.dtype), (contract, ((), ())))
    if self.use_bias:
      bias = self.param(
          "bias", nn.with_logical_partitioning(nn.initializers.zeros, self.out_axes), self.out_shape,
          self.param_dtype)
      y = y + bias.astype(self.dtype)
    if self.lora_rank > 0:
      lora_a = self.variable(
          LORA_COLLECTION, "lora_a",
          lambda: nn.with_logical_partitioning(
              nn.initializers.he_uniform(in_axis=tuple(range(n_in)), out_axis=-1),
              self.in_axes + ("lora_rank",))(self.make_rng("params"), self.in_shape + (self.lora_rank,),
                                             self.param_dtype))
      lora_b = self.variable(
          LORA_COLLECTION, "lora_b",
          lambda: nn.with_logical_partitioning(nn.initializers.zeros, ("lora_rank",) + self.out_axes)(
              self.make_rng("params"), (self.lora_rank,) + self.out_shape, self.param_dtype))
      a = nn.unbox(lora_a.value).astype(self.dtype)
      b = nn.unbox(lora_b.value).astype(self.dtype)
      xa = jax.lax.dot_general(x, a, (contract, ((), ())))
      delta = jax.lax.dot_general(xa, b, (((xa.ndim - 1,), (0,)), ((), ())))
      y = y + (self.lora_alpha / self.lora_rank) * delta
    return y


class RMSNorm(nn.Module):
  """RMSNorm computed in float32. ``offset=True`` is Gemma's ``x * (1 + w)`` (weights start at 0),
  otherwise Llama's ``w * x`` (weights start at 1), each cast back the way transformers does."""

  dim: int
  eps: float = 1e-6
  offset: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.zeros if self.offset else nn.initializers.ones
    scale = self.param("scale", nn.with_logical_partitioning(init, ("norm",)), (self.dim,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    if self.offset:  # Gemma: (x * (1 + w)) in float32, then cast.
      return (normed * (1.0 + scale.astype(jnp.float32))).astype(self.dtype)
    # Llama: cast first, then multiply by the weight.
    return scale.astype(self.dtype) * normed.astype(self.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> jnp.ndarray:
  """Inverse frequencies for RoPE, with transformers' ``linear`` and ``llama3`` scaling types."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  rope_type = (scaling or {}).get("rope_type", "default")
  if rope_type == "default":
    return inv_freq
  if rope_type == "linear":
    return inv_freq / scaling["factor"]
  if rope_type == "llama3":
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return jnp.where(medium, smoothed, scaled)
  raise NotImplementedError(f"RoPE type {rope_type!r} is not supported (default, linear, llama3 are).")


def apply_rope(x, positions, inv_freq):
  """Rotary embedding, transformers' rotate-half layout. x: [B, T, N, H], positions: [B, T]."""
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin


def last_token_index(attention_mask):
  """[B] index of each row's last real token (from the mask, never from the pad id)."""
  t = attention_mask.shape[-1]
  return jnp.max(jnp.where(attention_mask > 0, jnp.arange(t)[None, :], 0), axis=-1)


def attention_mask(attention_mask, sliding_window: int | None = None, query_index=None):
  """Boolean [B, 1, T, T] mask: causal, keys restricted to real tokens, and to the last
  ``sliding_window`` positions when given (distance counted in token slots, as transformers does).
  With ``query_index`` [B, Q] only those query rows: [B, 1, Q, T]."""
  t = attention_mask.shape[-1]
  q_idx = jnp.arange(t)[None, :, None] if query_index is None else query_index[:, :, None]
  k_idx = jnp.arange(t)[None, None, :]
  allowed = k_idx <= q_idx
  if sliding_window is not None:
    allowed = allowed & (q_idx - k_idx < sliding_window)
  return allowed[:, None] & attention_mask.astype(bool)[:, None, None, :]


def packed_attention_mask(segment_ids, positions, branch_ids, sliding_window: int | None = None, query_index=None):
  """Boolean [R, 1, T, T] mask of packed rows (``dial_jax.data.packing``): a query sees keys of its own sequence
  (same segment; a continuation also the shared prefix, branch 0) at positions up to its own, within the last
  ``sliding_window`` positions when given. Padding queries see only themselves (no empty softmax rows).
  With ``query_index`` [R, Q] only those query rows: [R, 1, Q, T]."""
  t = segment_ids.shape[-1]
  q_col = jnp.arange(t)[None, :] if query_index is None else query_index
  q = lambda a: jnp.take_along_axis(a, q_col, axis=1)[:, :, None] if query_index is not None else a[:, :, None]
  seg_q, seg_k = q(segment_ids), segment_ids[:, None, :]
  pos_q, pos_k = q(positions), positions[:, None, :]
  br_q, br_k = q(branch_ids), branch_ids[:, None, :]
  allowed = (seg_q == seg_k) & (seg_k > 0) & (pos_k <= pos_q) & ((br_k == 0) | (br_k == br_q))
  if sliding_window is not None:
    allowed = allowed & (pos_q - pos_k < sliding_window)
  allowed = allowed | ((seg_q == 0) & (q_col[:, :, None] == jnp.arange(t)[None, None, :]))
  return allowed[:, None]


def dot_product_attention(q, k, v, mask, scale: float, softcap: float | None = None):
  """Grouped-query attention. q: [B, T, N, H], k/v: [B, S, K, H], mask: [B, 1, T, S] bool.

  Uses ``jax.nn.dot_product_attention`` (fused by XLA, cuDNN on GPU) unless logits are soft-capped,
  which it does not support; then an explicit einsum path with float32 softmax.
  """
  if softcap is None:
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale)
  b, t, n, h = q.shape
  groups = n // k.shape[2]
  qg = q.reshape(b, t, k.shape[2], groups, h)
  logits = jnp.einsum("btkgh,bskh->bkgts", qg, k).astype(jnp.float32) * scale
  logits = jnp.tanh(logits / softcap) * softcap
  logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
  return out.reshape(b, t, n, h)


ACTIVATIONS = {
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
}


class GatedMLP(nn.Module):
  """``down(act(gate(x)) * up(x))``: GeGLU for Gemma, SwiGLU for Llama."""

  hidden_size: int
  intermediate_size: int
  activation: str
  use_bias: bool = False
  lora_rank: int = 0
  lora_alpha: float = 0.0
  lora_targets: Sequence[str] = ()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    def proj(name, n_in, n_out, in_axes, out_axes):
      rank = self.lora_rank if name in self.lora_targets else 0
      return Projection((n_in,), (n_out,), in_axes, out_axes, use_bias=self.use_bias, lora_rank=rank,
                        lora_alpha=self.lora_alpha, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    d, f = self.hidden_size, self.intermediate_size
    gate = proj("gate_proj", d, f, ("embed",), ("mlp",))(x)
    up = proj("up_proj", d, f, ("embed",), ("mlp",))(x)
    return proj("down_proj", f, d, ("mlp",), ("embed",))(ACTIVATIONS[self.activation](gate) * up)
