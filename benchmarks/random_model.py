"""The benchmark's models: an HF directory per model spec, writing random-weight ones on demand."""
from __future__ import annotations

from pathlib import Path

GEMMA3_270M = dict(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                   query_pre_attn_scalar=256, hidden_activation="gelu_pytorch_tanh", pad_token_id=0, bos_token_id=2,
                   eos_token_id=1, rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                                    "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})


def resolve_model(spec: str, workdir: Path, tokenizer: str | None = None) -> Path:
  """An HF directory for ``spec``: ``quick`` (tiny random Gemma 3), ``random:gemma-3-270m[:LAYERS]``, a bundled
  name or a directory. Random models are written once per spec into ``workdir``, with the tokenizer of
  ``tokenizer`` (a directory; default the bundled gemma-3-270m's)."""
  from dial_jax.hf import load

  if spec == "quick":
    path = workdir / "quick-gemma3"
    if not path.exists():
      from tests.helpers import make_tiny_model_dir
      make_tiny_model_dir(path)
    return path
  if spec.startswith("random:"):
    name, _, layers = spec[len("random:"):].partition(":")
    if name != "gemma-3-270m":
      raise ValueError(f"random models: only random:gemma-3-270m[:LAYERS] is known, got {spec!r}")
    path = workdir / spec.replace(":", "_")
    if not path.exists():
      write_random_gemma3(path, int(layers or GEMMA3_270M["num_hidden_layers"]), tokenizer)
    return path
  return load.resolve_model_dir(spec)


def write_random_gemma3(path: Path, layers: int, tokenizer: str | None = None) -> None:
  """A random ``Gemma3TextForSequenceClassification`` of the Gemma-3-270M shape (first ``layers`` layers), plus the
  Gemma tokenizer (``tokenizer`` or the bundled model's), saved with ``save_pretrained``."""
  import torch
  import transformers
  from dial_jax.hf import load

  tok_dir = tokenizer or load.resolve_model_dir("gemma-3-270m")
  types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)]
  config = transformers.Gemma3TextConfig(**{**GEMMA3_270M, "num_hidden_layers": layers, "layer_types": types})
  config.num_labels = 1
  torch.manual_seed(0)
  model = transformers.AutoModelForSequenceClassification.from_config(config)
  model.save_pretrained(path)
  transformers.AutoTokenizer.from_pretrained(str(tok_dir)).save_pretrained(path)


def model_label(spec: str) -> str:
  """The model's name in tables and plots."""
  if spec == "quick":
    return "tiny random gemma3"
  if spec.startswith("random:"):
    name, _, layers = spec[len("random:"):].partition(":")
    return f"{name}-shaped, random" + (f", {layers} layers" if layers else "")
  return Path(spec).name
