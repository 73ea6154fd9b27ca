"""Llama family (SmolLM2, Llama 2/3) and Qwen2 (q/k/v biases): SwiGLU, plain RMSNorm, RoPE (default/linear/llama3)."""
from __future__ import annotations

from dial_jax.models.decoder import FULL, DecoderConfig
from dial_jax.models.gemma import _first
from dial_jax.models.rope import rope_from_hf

MODEL_TYPES = ("llama", "qwen2")
HF_CAUSAL_LM = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
HF_SEQUENCE_CLASSIFICATION = {"llama": "LlamaForSequenceClassification", "qwen2": "Qwen2ForSequenceClassification"}


def config_from_hf(hf) -> DecoderConfig:
  """DecoderConfig from a transformers ``LlamaConfig`` or ``Qwen2Config``."""
  theta, scaling = rope_from_hf(hf.rope_parameters)
  qwen2 = hf.model_type == "qwen2"
  if qwen2 and any(t != FULL for t in (hf.layer_types or ())):
    raise NotImplementedError("Qwen2 with sliding-window layers is not supported.")
  return DecoderConfig(
      family=hf.model_type, vocab_size=hf.vocab_size, hidden_size=hf.hidden_size,
      intermediate_size=hf.intermediate_size, num_layers=hf.num_hidden_layers,
      num_heads=hf.num_attention_heads, num_kv_heads=hf.num_key_value_heads,
      head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
      rms_norm_eps=hf.rms_norm_eps, activation=hf.hidden_act, rope_theta=theta, rope_scaling=scaling,
      qkv_bias=True if qwen2 else hf.attention_bias, o_bias=False if qwen2 else hf.attention_bias,
      mlp_bias=False if qwen2 else hf.mlp_bias, tie_word_embeddings=hf.tie_word_embeddings,
      pad_token_id=hf.pad_token_id, bos_token_id=hf.bos_token_id, eos_token_id=_first(hf.eos_token_id))
