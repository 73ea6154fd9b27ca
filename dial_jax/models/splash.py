"""Splash attention (the Pallas TPU kernel of ``jax.experimental.pallas.ops.tpu.splash_attention``) for the decoder.

What it computes equals ``layers.dot_product_attention`` with the decoder's masks:
  * padded batches: a static causal mask (``LocalMask`` with window ``(sliding_window - 1, 0)`` on Gemma 3's local
    layers: the window counts token slots, as transformers does) with segment ids 1 for real tokens and 0 for
    padding, so real queries never see padding;
  * packed rows (``dial_jax.data.packing``, plain sequences or shared-prefix branches): the kernel's *dynamic* mask,
    the row's ``layers.packed_attention_mask`` (segments, positions, branch ids and the position window) given as a
    [heads, T, T] array, one kernel per row (``vmap``). A static mask cannot express it: where the prefix ends and a
    rejected continuation (which must skip the chosen one but see the prefix) begins differs per pair, and segment
    ids only say "same segment". Fully masked blocks are still skipped.
Queries are pre-scaled by ``config.attention_scale``; the kernel's ``attn_logits_soft_cap`` matches the xla path's
soft-capping of the scaled logits; grouped-query heads are the kernel's own (query heads a multiple of kv heads).

Mosaic kernels are not partitioned automatically, so the kernel runs inside ``jax.shard_map`` (``check_vma=False``)
over ``mesh`` (the model's, or the context mesh of ``jax.set_mesh``): rows over the data/fsdp axes that divide
them, heads over ``tensor`` when it divides both head counts. With neither mesh, or a one-device mesh, it is called
directly. Off TPU (the mesh's devices, else the default backend) it runs in Pallas interpret mode (CPU tests).
Sequence lengths must be multiples of 128 (the kernel's lane width).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as sa
from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import SplashAttentionKernel
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
HEAD_AXIS = "tensor"
LANES = 128


def block_sizes(q_len: int, kv_len: int) -> sa.BlockSizes:
  """The largest of 512 / 256 / 128 dividing each length, forward and backward."""
  for n in (q_len, kv_len):
    if n % LANES:
      raise ValueError(f"splash attention needs sequence lengths that are multiples of {LANES}, got {n}")
  bq = next(b for b in (512, 256, 128) if q_len % b == 0)
  bkv = next(b for b in (512, 256, 128) if kv_len % b == 0)
  return sa.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
                       block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)


def static_mask(q_len: int, kv_len: int, num_heads: int, window: int | None) -> sa.MultiHeadMask:
  """Causal, or causal within the last ``window`` slots."""
  if window is None:
    head = sa.CausalMask((q_len, kv_len))
  else:
    head = sa.LocalMask((q_len, kv_len), window_size=(window - 1, 0), offset=0)
  return sa.MultiHeadMask([head] * num_heads)


def _interpret(mesh) -> bool:
  devices = getattr(mesh, "devices", None)
  platform = np.asarray(devices).flat[0].platform if devices is not None else jax.default_backend()
  return platform != "tpu"


def _resolve_mesh(mesh):
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
      return None
  return mesh if math.prod(mesh.shape.values()) > 1 else None


def _specs(mesh, batch: int, num_heads: int, num_kv_heads: int):
  """(batch axes, head axis) of the shard_map: only axes that divide the rows / both head counts."""
  axes = tuple(a for a in BATCH_AXES if a in mesh.shape and mesh.shape[a] > 1)
  if batch % math.prod(mesh.shape[a] for a in axes):
    axes = ()
  head = None
  if HEAD_AXIS in mesh.shape and mesh.shape[HEAD_AXIS] > 1:
    t = mesh.shape[HEAD_AXIS]
    head = HEAD_AXIS if num_heads % t == 0 and num_kv_heads % t == 0 else None
  return (axes or None), head


def _local_attention(q, k, v, segment_ids, dense_mask, *, window, soft_cap, interpret):
  """Per-device splash attention. q [B, N, T, H], k/v [B, K, S, H] (q pre-scaled); either ``segment_ids`` [B, T]
  (static causal/local mask) or ``dense_mask`` [B, T, S] (dynamic mask, one kernel per row)."""
  _, n, t, _ = q.shape
  s = k.shape[2]
  sizes = block_sizes(t, s)
  if dense_mask is None:
    kernel = sa.make_splash_mha(static_mask(t, s, n, window), block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                attn_logits_soft_cap=soft_cap, interpret=interpret)
    one = lambda q, k, v, seg: kernel(q, k, v, segment_ids=sa.SegmentIds(q=seg, kv=seg))
    return jax.vmap(one)(q, k, v, segment_ids)

  def one(q, k, v, mask):
    kernel = sa.make_splash_mha(jnp.broadcast_to(mask[None], (n, t, s)), block_sizes=sizes, head_shards=1,
                                q_seq_shards=1, attn_logits_soft_cap=soft_cap, interpret=interpret)
    # make_splash_mha turns MaskInfo.is_dynamic_mask into an array, a tracer under jit that its __call__ then
    # tests as a bool (it only names a scope): drop it.
    infos = (kernel.fwd_mask_info, kernel.dq_mask_info, kernel.dkv_mask_info)
    kernel = SplashAttentionKernel(*(i if i is None else i._replace(is_dynamic_mask=None) for i in infos),
                                   **kernel.kwargs)
    return kernel(q, k, v)
  return jax.vmap(one)(q, k, v, dense_mask)


def splash_attention(q, k, v, *, segment_ids=None, dense_mask=None, window: int | None = None, scale: float = 1.0,
                     soft_cap: float | None = None, mesh=None, interpret: bool | None = None):
  """Attention of q [B, T, N, H] over k/v [B, S, K, H] -> [B, T, N, H], with a static causal (``window``: local)
  mask and ``segment_ids`` [B, T], or a per-row boolean ``dense_mask`` [B, T, S]."""
  if (segment_ids is None) == (dense_mask is None):
    raise ValueError("splash_attention: pass exactly one of segment_ids and dense_mask")
  mesh = _resolve_mesh(mesh)
  if interpret is None:
    interpret = _interpret(mesh)
  if isinstance(mesh, jax.sharding.Mesh):  # the devices come from the jitted arguments (an equal mesh may differ)
    mesh = mesh.abstract_mesh
  q = (q * jnp.asarray(scale, q.dtype)).transpose(0, 2, 1, 3)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  fn = functools.partial(_local_attention, window=window, soft_cap=soft_cap, interpret=interpret)
  if mesh is None:
    out = fn(q, k, v, segment_ids, dense_mask)
  else:
    rows, heads = _specs(mesh, q.shape[0], q.shape[1], k.shape[1])
    qkv = P(rows, heads, None, None)
    mask_spec = None if dense_mask is None else P(rows, None, None)
    seg_spec = None if segment_ids is None else P(rows, None)
    out = jax.shard_map(fn, mesh=mesh, in_specs=(qkv, qkv, qkv, seg_spec, mask_spec), out_specs=qkv,
                        check_vma=False)(q, k, v, segment_ids, dense_mask)
  return out.transpose(0, 2, 1, 3)


def attention(q, k, v, mask: Any, config, layer_type: str, *, sliding=None, mesh=None, interpret=None):
  """The decoder's splash attention for one layer. ``mask``: the [B, T] segment ids of a padded batch, or the
  ``(segment_ids, positions, branch_ids)`` of packed rows; a dict of those by layer type for a scanned MIXED layer,
  whose traced ``sliding`` flag then picks the local or global kernel with ``lax.cond``."""
  from dial_jax.models import layers
  if isinstance(mask, dict):
    mask = mask[layers.FULL]  # the same arrays for both types; the window is the kernel's
  common = dict(scale=config.attention_scale, soft_cap=config.attn_logit_softcapping, mesh=mesh,
                interpret=interpret)

  def run(window):
    if isinstance(mask, tuple):
      segment_ids, positions, branch_ids = mask
      dense = layers.packed_attention_mask(segment_ids, positions, branch_ids, window)[:, 0]
      return splash_attention(q, k, v, dense_mask=dense, **common)
    return splash_attention(q, k, v, segment_ids=mask, window=window, **common)

  if layer_type == layers.MIXED:
    return jax.lax.cond(sliding, lambda: run(config.sliding_window), lambda: run(None))
  return run(config.sliding_window if layer_type == layers.SLIDING else None)
