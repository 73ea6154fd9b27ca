"""One decoder-only transformer, configured per family (Gemma, Gemma 3 text, Llama/Qwen2).

The families differ only in switches of :class:`DecoderConfig` (norm offset, embedding scale, q/k norms,
sandwich norms, sliding-window layers, activation, biases); ``gemma.py``, ``gemma3.py`` and ``llama.py``
build that config from a Hugging Face ``config.json``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dial_jax.models import layers

FULL, SLIDING, MIXED = layers.FULL, layers.SLIDING, layers.MIXED
ATTENTIONS = ("xla", "splash")
SPLASH_MULTIPLE = 128  # splash runs on lengths that are multiples of this (its lane width); others take xla


def splash_active(attention: str, length: int, initializing: bool) -> bool:
  """Whether a full-sequence attention of this length runs the splash kernel: ``attention="splash"``, a length that
  is a multiple of 128 (shorter eval buckets, say 32 or 64 tokens, take the xla path: same values), not at init."""
  return attention == "splash" and length % SPLASH_MULTIPLE == 0 and not initializing

# The names LoRA may target; they match transformers/PEFT module names.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Architecture of a decoder. Frozen and hashable so it can be a static jit argument."""

  family: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  activation: str = "silu"
  norm_offset: bool = False          # Gemma: x * (1 + w)
  embed_scale: bool = False          # Gemma: embeddings * sqrt(hidden_size)
  qk_norm: bool = False              # Gemma 3
  sandwich_norm: bool = False        # Gemma 3: post-attention, pre/post-feed-forward norms
  layer_types: tuple[str, ...] = ()  # per layer FULL or SLIDING; empty means all FULL
  sliding_window: int | None = None
  rope_theta: float = 10_000.0
  rope_scaling: tuple[tuple[str, Any], ...] | None = None      # full-attention layers
  rope_local_theta: float | None = None                         # sliding layers (Gemma 3)
  rope_local_scaling: tuple[tuple[str, Any], ...] | None = None
  query_pre_attn_scalar: float | None = None  # attention scale = this ** -0.5 (default head_dim)
  attn_logit_softcapping: float | None = None
  final_logit_softcapping: float | None = None
  qkv_bias: bool = False
  o_bias: bool = False
  mlp_bias: bool = False
  tie_word_embeddings: bool = True
  pad_token_id: int | None = None
  bos_token_id: int | None = None
  eos_token_id: int | None = None

  def layer_type(self, i: int) -> str:
    return self.layer_types[i] if self.layer_types else FULL

  @property
  def attention_scale(self) -> float:
    return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

  def replace(self, **kwargs) -> "DecoderConfig":
    return dataclasses.replace(self, **kwargs)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int = 0
  alpha: float = 0.0
  targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

  def rank_for(self, name: str) -> int:
    return self.rank if name in self.targets else 0


class _LayerModule(nn.Module):
  """The fields a decoder layer and its attention share (a layer passes them on to its attention)."""
  config: DecoderConfig
  layer_type: str
  lora: LoraConfig = LoraConfig()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention: str = "xla"
  mesh: Any = None


class Attention(_LayerModule):
  @nn.compact
  def __call__(self, x, positions, mask, kv=None, sliding=None):
    """Self-attention of x; with ``kv=(x_kv, positions_kv)`` the queries come from x and the keys/values from
    x_kv (the last-token-only final layer, always the xla path). ``mask``: a boolean [B, 1, T, S] mask for xla, the
    [B, T] segment ids for splash. ``sliding``: the traced per-layer flag of a MIXED (scanned) layer."""
    cfg = self.config
    x_kv, positions_kv = (x, positions) if kv is None else kv
    n, k, h, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size

    def proj(name, in_shape, out_shape, in_axes, out_axes, bias):
      return layers.Projection(in_shape, out_shape, in_axes, out_axes, use_bias=bias,
                               lora_rank=self.lora.rank_for(name), lora_alpha=self.lora.alpha,
                               dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    q = proj("q_proj", (d,), (n, h), ("embed",), ("heads", "head_dim"), cfg.qkv_bias)(x)
    key = proj("k_proj", (d,), (k, h), ("embed",), ("kv_heads", "head_dim"), cfg.qkv_bias)(x_kv)
    v = proj("v_proj", (d,), (k, h), ("embed",), ("kv_heads", "head_dim"), cfg.qkv_bias)(x_kv)
    if cfg.qk_norm:
      norm = dict(eps=cfg.rms_norm_eps, offset=cfg.norm_offset, dtype=self.dtype, param_dtype=self.param_dtype)
      q = layers.RMSNorm(h, name="q_norm", **norm)(q)
      key = layers.RMSNorm(h, name="k_norm", **norm)(key)
    global_freq = layers.rope_inv_freq(h, cfg.rope_theta, dict(cfg.rope_scaling) if cfg.rope_scaling else None)
    local_freq = global_freq
    if cfg.rope_local_theta is not None:
      scaling = cfg.rope_local_scaling
      local_freq = layers.rope_inv_freq(h, cfg.rope_local_theta, dict(scaling) if scaling else None)
    if self.layer_type == MIXED:
      inv_freq = jnp.where(sliding, local_freq, global_freq)
    else:
      inv_freq = local_freq if self.layer_type == SLIDING else global_freq
    q = layers.apply_rope(q, positions, inv_freq)
    key = layers.apply_rope(key, positions_kv, inv_freq)
    if kv is None and splash_active(self.attention, x.shape[1], self.is_initializing()):
      from dial_jax.models import splash  # local import: Pallas is only needed for splash
      out = splash.attention(q, key, v, mask, cfg, self.layer_type, sliding=sliding, mesh=self.mesh)
    else:
      if self.layer_type == MIXED:
        mask = jnp.where(sliding, mask[SLIDING], mask[FULL])
      out = layers.dot_product_attention(q, key, v, mask, cfg.attention_scale, cfg.attn_logit_softcapping)
    return proj("o_proj", (n, h), (d,), ("heads", "head_dim"), ("embed",), cfg.o_bias)(out)


class DecoderLayer(_LayerModule):
  scanned: bool = False  # body of nn.scan: returns (x, None)

  @nn.compact
  def __call__(self, x, positions, masks, query_index=None, sliding=None):
    """One block. With ``query_index`` [B, Q] only those positions of each row are computed (their keys and
    values still come from every position; ``masks`` then hold the query rows [B, 1, Q, S]), and the output is
    [B, Q, D]. ``sliding``: this layer's flag when ``layer_type`` is MIXED."""
    cfg = self.config
    norm = dict(dim=cfg.hidden_size, eps=cfg.rms_norm_eps, offset=cfg.norm_offset, dtype=self.dtype,
                param_dtype=self.param_dtype)
    mask = masks if self.layer_type == MIXED else masks[self.layer_type]
    h = layers.RMSNorm(name="input_layernorm", **norm)(x)
    kv = None
    if query_index is not None:
      kv = (h, positions)
      x, h = (jnp.take_along_axis(a, query_index[:, :, None], axis=1) for a in (x, h))
      positions = jnp.take_along_axis(positions, query_index, axis=1)
    h = Attention(cfg, self.layer_type, self.lora, self.dtype, self.param_dtype, self.attention, self.mesh,
                  name="self_attn")(h, positions, mask, kv, sliding)
    if cfg.sandwich_norm:
      h = layers.RMSNorm(name="post_attention_layernorm", **norm)(h)
    x = x + h
    pre_mlp_norm = "pre_feedforward_layernorm" if cfg.sandwich_norm else "post_attention_layernorm"
    h = layers.RMSNorm(name=pre_mlp_norm, **norm)(x)
    h = layers.GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.activation, use_bias=cfg.mlp_bias,
                        lora_rank=self.lora.rank, lora_alpha=self.lora.alpha, lora_targets=self.lora.targets,
                        dtype=self.dtype, param_dtype=self.param_dtype, name="mlp")(h)
    if cfg.sandwich_norm:
      h = layers.RMSNorm(name="post_feedforward_layernorm", **norm)(h)
    return (x + h, None) if self.scanned else x + h


class Decoder(nn.Module):
  """Token ids -> final (normed) hidden states [B, T, D].

  Positions are ``cumsum(attention_mask) - 1``, so left- and right-padded copies of a text get the same
  hidden states at their real tokens. Packed rows (``dial_jax.data.packing``) pass ``packed=(segment_ids,
  positions, branch_ids)`` instead of an attention mask.

  ``scan_layers``: the layers' parameters are stacked under ``layers`` (leading axis = layer, logical axis name
  ``layers``) and run with ``nn.scan`` (remat inside the scan); Gemma 3's local/global layers are told apart by a
  scanned per-layer flag. ``attention="splash"``: the Pallas TPU splash kernel (``dial_jax.models.splash``) in
  every full-sequence layer, inside ``shard_map`` over ``mesh`` (or the context mesh), on lengths that are multiples
  of 128 (others, and the last-token-only final layer's few queries, take the xla path).
  """

  config: DecoderConfig
  lora: LoraConfig = LoraConfig()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat_policy: str = "none"
  scan_layers: bool = False
  attention: str = "xla"
  mesh: Any = None

  def setup(self):
    cfg = self.config
    if self.attention not in ATTENTIONS:
      raise ValueError(f"attention {self.attention!r}; choose from {ATTENTIONS}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy {self.remat_policy!r}; choose from {sorted(REMAT_POLICIES)}")
    self.embed_tokens = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")))
    common = dict(lora=self.lora, dtype=self.dtype, param_dtype=self.param_dtype, attention=self.attention,
                  mesh=self.mesh)
    if self.scan_layers:
      self.layers = nn.scan(
          self._layer_cls(), variable_axes={"params": 0, "lora": 0}, split_rngs={"params": True},
          in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0), length=cfg.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"})(cfg, self._scan_type(), scanned=True, name="layers", **common)
    else:
      self.layers = [self._layer_cls()(cfg, cfg.layer_type(i), name=f"layers_{i}", **common)
                     for i in range(cfg.num_layers)]
    self.norm = layers.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, offset=cfg.norm_offset, dtype=self.dtype,
                               param_dtype=self.param_dtype)
    if not cfg.tie_word_embeddings:
      self.lm_head = layers.Projection((cfg.hidden_size,), (cfg.vocab_size,), ("embed",), ("vocab",),
                                       dtype=self.dtype, param_dtype=self.param_dtype)

  def _layer_cls(self):
    if self.remat_policy == "none":
      return DecoderLayer
    # Inside nn.scan the loop already keeps the recomputation apart, so CSE prevention is not needed there.
    return nn.remat(DecoderLayer, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=not self.scan_layers)

  def _scan_type(self) -> str:
    types = {self.config.layer_type(i) for i in range(self.config.num_layers)}
    return types.pop() if len(types) == 1 else MIXED

  def __call__(self, input_ids, attention_mask=None, *, packed=None, return_all_hidden: bool = False,
               last_token_only: bool = False, query_index=None):
    """``last_token_only``: the final layer computes only each row's last real token (exact for last-token
    pooling; the output is then [B, 1, D]); ``query_index`` [B, Q]: only those positions (output [B, Q, D])."""
    cfg = self.config
    x = self.embed_tokens(input_ids)
    if cfg.embed_scale:
      x = x * jnp.asarray(cfg.hidden_size ** 0.5, dtype=x.dtype)
    types = {cfg.layer_type(i) for i in range(cfg.num_layers)}
    if self.scan_layers:
      types = {FULL, SLIDING} if self._scan_type() == MIXED else types
    window = lambda t: cfg.sliding_window if t == SLIDING else None
    if packed is None:
      positions = jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
      if last_token_only:
        query_index = layers.last_token_index(attention_mask)[:, None]
      make_mask = lambda t: layers.attention_mask(attention_mask, window(t))
      segment_ids = attention_mask.astype(jnp.int32)  # splash: padding is segment 0, every real token segment 1
    else:
      segment_ids, positions, branch_ids = packed
      make_mask = lambda t: layers.packed_attention_mask(segment_ids, positions, branch_ids, window(t))
    if splash_active(self.attention, input_ids.shape[1], self.is_initializing()):  # splash builds its own masks
      masks = {t: segment_ids if packed is None else tuple(packed) for t in types}
      final_masks = None
      if query_index is not None:  # the final layer's few queries take the xla path: only their mask rows
        if packed is None:
          rows = lambda t: layers.attention_mask(attention_mask, window(t), query_index)
        else:
          rows = lambda t: layers.packed_attention_mask(segment_ids, positions, branch_ids, window(t), query_index)
        final_masks = {t: rows(t) for t in types}
    else:
      masks = {t: make_mask(t) for t in types}
      final_masks = None if query_index is None else {
          t: jnp.take_along_axis(m, query_index[:, None, :, None], axis=2) for t, m in masks.items()}
    if self.scan_layers:
      x, all_hidden = self._run_scanned(x, positions, masks, final_masks, query_index, return_all_hidden)
    else:
      all_hidden = [x]
      for i, layer in enumerate(self.layers):
        final = i == len(self.layers) - 1 and query_index is not None
        x = layer(x, positions, final_masks if final else masks, query_index if final else None)
        all_hidden.append(x)
    x = self.norm(x)
    if self.is_initializing() and not cfg.tie_word_embeddings:
      self.lm_head(x[:, :1])  # create the untied LM head's parameters (setup() submodules are lazy)
    return (x, all_hidden) if return_all_hidden else x

  def _run_scanned(self, x, positions, masks, final_masks, query_index, return_all_hidden):
    """The stacked layers: ``nn.scan`` for a plain forward (and init); for a final layer on ``query_index`` or
    every layer's output, a ``lax.scan`` over the same stacked variables, the last layer applied on its own."""
    cfg = self.config
    flags = jnp.asarray([cfg.layer_type(i) == SLIDING for i in range(cfg.num_layers)])
    if self.is_initializing() or (query_index is None and not return_all_hidden):
      x, _ = self.layers(x, positions, masks, None, flags)
      return x, None
    stacked = {c: v["layers"] for c, v in self.variables.items() if "layers" in v}
    layer = DecoderLayer(cfg, self._scan_type(), self.lora, self.dtype, self.param_dtype, self.attention, self.mesh,
                         parent=None)  # applied functionally to slices of the stacked variables
    def body(h, inputs):
      variables, flag = inputs
      h = layer.apply(variables, h, positions, masks, None, flag)
      return h, (h if return_all_hidden else None)
    if self.remat_policy != "none":
      body = jax.checkpoint(body, policy=REMAT_POLICIES[self.remat_policy])
    n = cfg.num_layers - (query_index is not None)
    head = jax.tree.map(lambda a: a[:n], stacked)
    x0 = x
    x, ys = jax.lax.scan(body, x, (head, flags[:n]))
    all_hidden = [x0] + list(ys) if return_all_hidden else None
    if query_index is not None:
      last = jax.tree.map(lambda a: a[n], stacked)
      x = layer.apply(last, x, positions, final_masks, query_index, flags[n])
      if return_all_hidden:
        all_hidden.append(x)
    return x, all_hidden

  def logits(self, hidden):
    """Next-token logits from hidden states (tied embedding or ``lm_head``), float32, soft-capped if set."""
    if self.config.tie_word_embeddings:
      logits = self.embed_tokens.attend(hidden)
    else:
      logits = self.lm_head(hidden)
    logits = logits.astype(jnp.float32)
    cap = self.config.final_logit_softcapping
    return jnp.tanh(logits / cap) * cap if cap else logits
