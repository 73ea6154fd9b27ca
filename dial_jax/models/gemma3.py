"""Gemma 3 text (gemma-3-270m ... 27b text towers): q/k norms, sandwich norms, local/global attention layers."""
from __future__ import annotations

from absl import logging

from dial_jax.models.decoder import DecoderConfig
from dial_jax.models.gemma import _first
from dial_jax.models.rope import rope_from_hf

MODEL_TYPES = ("gemma3_text",)
HF_CAUSAL_LM = "Gemma3ForCausalLM"
HF_SEQUENCE_CLASSIFICATION = "Gemma3TextForSequenceClassification"


def config_from_hf(hf) -> DecoderConfig:
  """DecoderConfig from a transformers ``Gemma3TextConfig``."""
  if getattr(hf, "use_bidirectional_attention", False):
    raise NotImplementedError("Gemma 3 with bidirectional attention (EmbeddingGemma) is not supported.")
  if hf.attn_logit_softcapping is not None:
    # transformers' Gemma3Attention stores this field but never applies it (released Gemma 3 checkpoints
    # set it to null); we follow transformers so that rewards and exports match it.
    logging.warning("Gemma 3 attn_logit_softcapping=%s is ignored, as transformers ignores it.",
                    hf.attn_logit_softcapping)
  theta, scaling = rope_from_hf(hf.rope_parameters["full_attention"])
  local_theta, local_scaling = rope_from_hf(hf.rope_parameters["sliding_attention"])
  return DecoderConfig(
      family="gemma3", vocab_size=hf.vocab_size, hidden_size=hf.hidden_size,
      intermediate_size=hf.intermediate_size, num_layers=hf.num_hidden_layers,
      num_heads=hf.num_attention_heads, num_kv_heads=hf.num_key_value_heads, head_dim=hf.head_dim,
      rms_norm_eps=hf.rms_norm_eps, activation=hf.hidden_activation, norm_offset=True, embed_scale=True,
      qk_norm=True, sandwich_norm=True, layer_types=tuple(hf.layer_types), sliding_window=hf.sliding_window,
      rope_theta=theta, rope_scaling=scaling, rope_local_theta=local_theta, rope_local_scaling=local_scaling,
      query_pre_attn_scalar=hf.query_pre_attn_scalar, attn_logit_softcapping=None,
      final_logit_softcapping=hf.final_logit_softcapping, qkv_bias=hf.attention_bias, o_bias=hf.attention_bias,
      tie_word_embeddings=True, pad_token_id=hf.pad_token_id, bos_token_id=hf.bos_token_id,
      eos_token_id=_first(hf.eos_token_id))
