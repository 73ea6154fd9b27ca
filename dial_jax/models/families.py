"""Registry: transformers ``model_type`` -> the family module that knows its config and HF class names."""
from __future__ import annotations

from types import ModuleType

from dial_jax.models import gemma, gemma3, llama
from dial_jax.models.decoder import DecoderConfig

_FAMILIES: dict[str, ModuleType] = {t: m for m in (gemma, gemma3, llama) for t in m.MODEL_TYPES}
SUPPORTED_MODEL_TYPES = tuple(sorted(_FAMILIES))


def family_module(model_type: str) -> ModuleType:
  if model_type not in _FAMILIES:
    raise NotImplementedError(
        f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}.")
  return _FAMILIES[model_type]


def decoder_config_from_hf(hf_config) -> DecoderConfig:
  """DecoderConfig from any supported transformers config (the text config of a multimodal one)."""
  text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
  return family_module(text.model_type).config_from_hf(text)


def hf_architecture(model_type: str, kind: str = "sequence_classification") -> str:
  """The transformers class name to write into an exported ``config.json``."""
  module = family_module(model_type)
  names = module.HF_SEQUENCE_CLASSIFICATION if kind == "sequence_classification" else module.HF_CAUSAL_LM
  return names[model_type] if isinstance(names, dict) else names
