"""Gemma (1): the paper's gemma-2b. RMSNorm with (1 + w), embeddings scaled by sqrt(hidden), GeGLU, MQA/GQA."""
from __future__ import annotations

from dial_jax.models.decoder import DecoderConfig
from dial_jax.models.rope import rope_from_hf

MODEL_TYPES = ("gemma",)
HF_CAUSAL_LM = "GemmaForCausalLM"
HF_SEQUENCE_CLASSIFICATION = "GemmaForSequenceClassification"


def config_from_hf(hf) -> DecoderConfig:
  """DecoderConfig from a transformers ``GemmaConfig``."""
  theta, scaling = rope_from_hf(hf.rope_parameters)
  return DecoderConfig(
      family="gemma", vocab_size=hf.vocab_size, hidden_size=hf.hidden_size,
      intermediate_size=hf.intermediate_size, num_layers=hf.num_hidden_layers,
      num_heads=hf.num_attention_heads, num_kv_heads=hf.num_key_value_heads, head_dim=hf.head_dim,
      rms_norm_eps=hf.rms_norm_eps, activation=hf.hidden_act, norm_offset=True, embed_scale=True,
      rope_theta=theta, rope_scaling=scaling, qkv_bias=hf.attention_bias, o_bias=hf.attention_bias,
      tie_word_embeddings=True, pad_token_id=hf.pad_token_id, bos_token_id=hf.bos_token_id,
      eos_token_id=_first(hf.eos_token_id))


def _first(x):
  return x[0] if isinstance(x, (list, tuple)) else x
