"""Reward model: a decoder backbone plus a scalar head (no bias) on a pooled hidden state.

``pooling="last"`` takes the hidden state of the last real token, found from the attention mask (never
from the pad id: SmolLM2's pad id equals its eos id). ``pooling="mean"`` averages over real tokens. The
pooled embedding and the head are float32 whatever the compute dtype.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dial_jax.models.decoder import Decoder, DecoderConfig, LoraConfig
from dial_jax.models.layers import last_token_index

POOLINGS = ("last", "mean")


def pool(hidden, attention_mask, pooling: str = "last"):
  """[B, T, D] hidden states -> [B, D] float32 embeddings."""
  hidden = hidden.astype(jnp.float32)
  mask = attention_mask.astype(jnp.int32)
  if pooling == "last":
    return jnp.take_along_axis(hidden, last_token_index(mask)[:, None, None], axis=1)[:, 0]
  if pooling == "mean":
    m = mask[..., None].astype(jnp.float32)
    return jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
  raise ValueError(f"pooling {pooling!r}; choose from {POOLINGS}")


class RewardModel(nn.Module):
  """``apply(variables, input_ids, attention_mask)`` -> dict(rewards [B], embeddings [B, D]).

  ``variables`` holds ``params`` (backbone under ``backbone``, head under ``score``) and, when LoRA is
  on, the ``lora`` collection.
  """

  config: DecoderConfig
  pooling: str = "last"
  lora: LoraConfig = LoraConfig()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat_policy: str = "none"
  # Final layer on the last real token only (exact with pooling="last"; saves 1/num_layers of the compute).
  last_token_only: bool = False
  scan_layers: bool = False  # layers stacked under backbone/layers and run with nn.scan
  attention: str = "xla"     # xla | splash (Pallas TPU kernel; see dial_jax.models.splash)
  mesh: Any = None           # splash's shard_map mesh; None = the context mesh (jax.set_mesh), else one device

  def setup(self):
    self.backbone = Decoder(self.config, self.lora, self.dtype, self.param_dtype, self.remat_policy,
                            scan_layers=self.scan_layers, attention=self.attention, mesh=self.mesh)
    # The head's kernel is replicated on every device.
    self.score = nn.Dense(1, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32,
                          kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None)))

  def __call__(self, input_ids, attention_mask, *, return_hidden: bool = False):
    if self.last_token_only and self.pooling == "last" and not return_hidden:
      embeddings = self.backbone(input_ids, attention_mask, last_token_only=True)[:, 0].astype(jnp.float32)
      return {"rewards": self.score(embeddings)[:, 0], "embeddings": embeddings}
    hidden = self.backbone(input_ids, attention_mask)
    embeddings = pool(hidden, attention_mask, self.pooling)
    out = {"rewards": self.score(embeddings)[:, 0], "embeddings": embeddings}
    if return_hidden:
      out["hidden"] = hidden
    return out

  def packed(self, input_ids, segment_ids, positions, branch_ids, last_positions):
    """Rewards [R * S] and embeddings [R * S, D] of packed rows (``dial_jax.data.packing``): the sequence ending
    at ``last_positions[r, s]`` is entry ``r * S + s``. Last-token pooling only."""
    if self.pooling != "last":
      raise ValueError("packed sequences support pooling='last' only")
    packed = (segment_ids, positions, branch_ids)
    if self.last_token_only:
      hidden = self.backbone(input_ids, packed=packed, query_index=last_positions)
    else:
      hidden = jnp.take_along_axis(self.backbone(input_ids, packed=packed), last_positions[:, :, None], axis=1)
    embeddings = hidden.reshape(-1, hidden.shape[-1]).astype(jnp.float32)
    return {"rewards": self.score(embeddings)[:, 0], "embeddings": embeddings}

  def hidden_states(self, input_ids, attention_mask):
    """(final normed hidden, [embeddings, layer 1 out, ..., layer L out]) for parity checks."""
    return self.backbone(input_ids, attention_mask, return_all_hidden=True)

  def lm_logits(self, hidden):
    """Next-token logits through the backbone's (tied) LM head, for auxiliary LM losses."""
    return self.backbone.logits(hidden)
