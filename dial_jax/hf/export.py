"""dial_jax reward model -> a Hugging Face ``*ForSequenceClassification`` directory.

``merge_lora`` folds LoRA adapters into their base kernels; ``export_hf`` writes ``config.json`` (the source
model's config with the sequence-classification architecture, ``num_labels=1`` and the pad id),
``model.safetensors`` (or shards + ``model.safetensors.index.json``, split exactly as transformers splits
them) and the tokenizer files, so that ``AutoModelForSequenceClassification.from_pretrained`` loads it with
no missing or unexpected weights. Tensor names and layouts come from ``dial_jax.hf.mapping``.

The directory is written next to ``output_dir`` under a temporary name and renamed onto it at the end: an
export that fails half-way leaves nothing behind (and an ``overwrite``d directory untouched).

``output_dir`` may be in a bucket (``gs://bucket/dir``): the export is then built in a local temporary directory
(``$TMPDIR``: it needs the export's size on local disk) and published by :func:`_publish_to_bucket`. Cloud Storage
makes each object upload or server-side copy atomic (an object appears whole or not at all) and reads and listings
strongly consistent, but has no rename of a "directory" (a prefix) and no multi-object transaction: a prefix cannot
appear all at once. So the files are uploaded under a temporary sibling prefix first (the slow part; a failure there
leaves ``output_dir`` untouched), then copied server-side into ``output_dir`` with ``config.json`` last: whoever
sees ``config.json`` (what every loader reads first) sees every other file of the export.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from absl import logging

from dial_jax import paths
from dial_jax.hf import mapping
from dial_jax.hf.load import load_hf_config
from dial_jax.models.decoder import DecoderConfig
from dial_jax.models.families import decoder_config_from_hf, hf_architecture

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
DEFAULT_MAX_SHARD_SIZE = "2GB"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# Parameters with no place in *ForSequenceClassification (it has no LM head): dropped from the export.
_DROPPED = ("backbone/lm_head/kernel",)


def _flatten(tree) -> dict[str, Any]:
  return {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(tree).items()}


def _unflatten(flat: dict[str, Any]):
  return flax.traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def merge_lora(variables, model) -> dict:
  """``params`` with every LoRA adapter folded into its base kernel.

  For a projection with kernel ``K`` (``in_shape + out_shape``), ``lora_a`` (``in_shape + (r,)``) and
  ``lora_b`` (``(r,) + out_shape``) the merged kernel is ``K + (alpha / r) * tensordot(A, B, axes=1)``
  (the rank axis is A's last and B's first, so this holds for o_proj's ``(heads, head_dim)`` input too).
  Computed in float32 at highest precision and cast back to the kernel's dtype. The result is a plain
  ``params`` tree for a model built with ``LoraConfig()`` (rank 0); without a ``lora`` collection the
  params are returned as they are.
  """
  params = variables["params"]
  lora = variables.get("lora")
  if not lora:
    return params
  if mapping.is_stacked(_flatten(params)):  # scan_layers: merge per layer, return stacked again
    merged = merge_lora(mapping.unstack_layer_variables({"params": params, "lora": lora}), model)
    return mapping.stack_layer_variables({"params": merged})["params"]
  alpha = float(model.lora.alpha)
  flat = dict(_flatten(params))
  adapters = _flatten(lora)
  modules = sorted({path.rsplit("/", 1)[0] for path in adapters})
  for module in modules:
    a, b = adapters.get(f"{module}/lora_a"), adapters.get(f"{module}/lora_b")
    if a is None or b is None or f"{module}/kernel" not in flat:
      raise ValueError(f"LoRA adapter {module}: needs lora_a, lora_b and a base kernel in params")
    kernel = flat[f"{module}/kernel"]
    rank = a.shape[-1]
    if b.shape[0] != rank or tuple(a.shape[:-1]) + tuple(b.shape[1:]) != tuple(kernel.shape):
      raise ValueError(f"LoRA adapter {module}: shapes {a.shape} x {b.shape} do not fit kernel {kernel.shape}")
    delta = jnp.tensordot(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), axes=1,
                          precision=jax.lax.Precision.HIGHEST)
    flat[f"{module}/kernel"] = (jnp.asarray(kernel, jnp.float32) + (alpha / rank) * delta).astype(kernel.dtype)
  return _unflatten(flat)


@dataclasses.dataclass
class ExportInfo:
  """What :func:`export_hf` wrote."""

  output_dir: Path              # an etils.epath.Path for a bucket output (gs://...)
  files: list[str]              # every file in output_dir, sorted
  weight_files: list[str]       # model.safetensors or the shards
  num_tensors: int
  total_size: int               # bytes of tensor data (the index's metadata.total_size)
  dtype: str
  dropped: list[str]            # dial_jax param paths not written (lm_head)
  sizes: dict[str, int] = dataclasses.field(default_factory=dict)  # bytes of each file


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """A tensor to write, converted only when its shard is written."""

  path: str
  kind: str
  shape: tuple[int, ...]
  nbytes: int


def _hf_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
  if kind.startswith("kernel"):
    n_in = int(kind[-1])
    return (int(np.prod(shape[n_in:])), int(np.prod(shape[:n_in])))
  if kind == "bias":
    return (int(np.prod(shape)),)
  return tuple(shape)


def _natural_key(name: str):
  return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _parse_size(size: int | str) -> int:
  if isinstance(size, int):
    return size
  from huggingface_hub.serialization._base import parse_size_to_int
  return parse_size_to_int(size)


def export_config(decoder_config: DecoderConfig, source_model_dir, pad_token_id: int | None, dtype: str):
  """The transformers config to write: the source's (text) config, as a 1-label sequence classifier."""
  hf_config = load_hf_config(source_model_dir)
  text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
  expected = decoder_config_from_hf(text)
  if expected.replace(pad_token_id=None) != decoder_config.replace(pad_token_id=None):
    diff = {f.name: (getattr(expected, f.name), getattr(decoder_config, f.name))
            for f in dataclasses.fields(DecoderConfig)
            if f.name != "pad_token_id" and getattr(expected, f.name) != getattr(decoder_config, f.name)}
    raise ValueError(f"the model's architecture does not match {source_model_dir}'s config.json "
                     f"(field: (config.json, model)): {diff}")
  config = copy.deepcopy(text)
  config.architectures = [hf_architecture(config.model_type)]
  config.num_labels = 1
  config.pad_token_id = pad_token_id
  config.dtype = dtype
  return config


def _expected_hf_shapes(config) -> dict[str, tuple[int, ...]] | None:
  """Tensor names and shapes transformers' class expects (the model is built on the meta device, so nothing is
  allocated), or None without torch."""
  try:
    import torch
    from transformers import AutoModelForSequenceClassification
  except ImportError:
    logging.info("torch is not installed: skipping the check of tensor names against transformers")
    return None
  with torch.device("meta"):
    model = AutoModelForSequenceClassification.from_config(copy.deepcopy(config))
  return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def export_hf(params, decoder_config_or_model, source_model_dir, tokenizer, output_dir, *, dtype: str = "float32",
              max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, overwrite: bool = False,
              check_transformers: bool = True) -> ExportInfo:
  """Write ``params`` (LoRA already merged, see :func:`merge_lora`) as a HF sequence-classification directory.

  Args:
    params: the reward model's ``params`` tree (``backbone/...`` and ``score/kernel``).
    decoder_config_or_model: the ``DecoderConfig`` or the ``RewardModel`` (then its pooling must be ``last``:
      transformers' classifiers read the last token).
    source_model_dir: the HF directory the backbone came from; its ``config.json`` is the base of the new one.
    tokenizer: saved with ``save_pretrained`` next to the weights.
    output_dir: created; an existing one is refused unless ``overwrite`` (then replaced only at the end).
    dtype: ``float32`` or ``bfloat16`` (round-to-nearest-even, as torch's ``.to(torch.bfloat16)``).
    max_shard_size: bytes or a string like ``"2GB"``; above it the weights are split into
      ``model-0000i-of-0000n.safetensors`` with ``model.safetensors.index.json`` (huggingface_hub's splitter,
      the one transformers' ``save_pretrained`` uses).
    check_transformers: when torch is importable, compare names and shapes with the transformers class built
      on the meta device before writing anything.

  A bucket ``output_dir`` (``gs://bucket/dir``) is built locally and then published (see the module docstring);
  ``overwrite`` there too replaces only a previous export.
  """
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
  if paths.is_uri(output_dir):
    check_output_dir(output_dir, overwrite)  # before the work
    local_root = Path(tempfile.mkdtemp(prefix="dial_export_"))
    try:
      info = export_hf(params, decoder_config_or_model, source_model_dir, tokenizer, local_root / "export", dtype=dtype,
                       max_shard_size=max_shard_size, check_transformers=check_transformers)
      _publish_to_bucket(info.output_dir, output_dir, overwrite)
    finally:
      shutil.rmtree(local_root, ignore_errors=True)
    return dataclasses.replace(info, output_dir=paths.path(output_dir))
  if isinstance(decoder_config_or_model, DecoderConfig):
    decoder_config = decoder_config_or_model
  else:
    model = decoder_config_or_model
    decoder_config = model.config
    if getattr(model, "pooling", "last") != "last":
      raise ValueError(f"pooling={model.pooling!r} cannot be exported: transformers' *ForSequenceClassification "
                       "scores the last token (pooling='last')")
  output_dir = Path(output_dir).absolute()
  source_model_dir = Path(source_model_dir)
  check_output_dir(output_dir, overwrite)
  if output_dir.exists() and output_dir.resolve() == source_model_dir.resolve():
    raise ValueError(f"output_dir {output_dir} is the source model directory")

  pad_id = decoder_config.pad_token_id if decoder_config.pad_token_id is not None else tokenizer.pad_token_id
  config = export_config(decoder_config, source_model_dir, pad_id, dtype)

  # Names, layouts and sizes (nothing converted yet); a scan_layers model's stacked layers are written per layer.
  flat = mapping.unstack_layers(_flatten(params))
  itemsize = np.dtype(DTYPES[dtype]).itemsize
  dropped = [p for p in flat if p in _DROPPED]
  if dropped:
    logging.info("not exported (no LM head in *ForSequenceClassification): %s", dropped)
  tensors: dict[str, _Tensor] = {}
  for path in flat:
    if path in _DROPPED:
      continue
    name = mapping.path_to_hf_name(path)
    kind = mapping.kind_of_path(path)
    shape = _hf_shape(tuple(flat[path].shape), kind)
    tensors[name] = _Tensor(path, kind, shape, int(np.prod(shape)) * itemsize)
  if "score.weight" not in tensors:
    raise ValueError("params have no score head (score/kernel)")
  expected = _expected_hf_shapes(config) if check_transformers else None
  _check_names(tensors, expected)
  # Shards are filled in natural name order (layers.2 before layers.10), as transformers' save_pretrained does
  # for models with weight conversions (others keep module order; either loads the same).
  tensors = {name: tensors[name] for name in sorted(tensors, key=_natural_key)}

  from huggingface_hub.serialization import split_state_dict_into_shards_factory
  split = split_state_dict_into_shards_factory(
      tensors, get_storage_size=lambda t: t.nbytes, filename_pattern="model{suffix}.safetensors",
      max_shard_size=_parse_size(max_shard_size))

  output_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = paths.new_sibling_dir(output_dir, "partial")
  try:
    for filename, names in split.filename_to_tensors.items():
      shard = {}
      for name in names:
        t = tensors[name]
        array = mapping.to_hf(np.asarray(flat[t.path], dtype=np.float32), t.kind).astype(DTYPES[dtype])
        assert array.shape == t.shape, (name, array.shape, t.shape)
        shard[name] = np.ascontiguousarray(array)
      _save_shard(shard, tmp / filename)
      del shard
    if split.is_sharded:
      n_params = sum(int(np.prod(t.shape)) for t in tensors.values())
      index = {"metadata": {"total_parameters": n_params, **split.metadata}, "weight_map": split.tensor_to_filename}
      (tmp / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    config_dict = json.loads(config.to_json_string(use_diff=True))
    config_dict["torch_dtype"] = dtype  # transformers < 4.56 reads this key; newer ones read "dtype"
    (tmp / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(str(tmp))
    files = sorted(p.name for p in tmp.iterdir())
    sizes = {name: (tmp / name).stat().st_size for name in files}
    _move_into_place(tmp, output_dir, overwrite)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return ExportInfo(output_dir=output_dir, files=files, weight_files=list(split.filename_to_tensors),
                    num_tensors=len(tensors), total_size=int(split.metadata["total_size"]), dtype=dtype,
                    dropped=dropped, sizes=sizes)


def _save_shard(tensors: dict[str, np.ndarray], path: Path) -> None:
  # safetensors' numpy backend writes ml_dtypes.bfloat16 as BF16 (it maps dtype names), so torch is not needed.
  # "format": "pt" is the metadata transformers writes and expects.
  from safetensors.numpy import save_file
  save_file(tensors, str(path), metadata={"format": "pt"})


def _check_names(tensors: dict[str, _Tensor], expected: dict[str, tuple[int, ...]] | None) -> None:
  if expected is None:
    return
  missing, unexpected = mapping.missing_and_unexpected(expected, tensors)
  wrong = {n: (tensors[n].shape, expected[n]) for n in tensors if n in expected and tensors[n].shape != expected[n]}
  if missing or unexpected or wrong:
    raise ValueError(f"export would not load cleanly into transformers: missing {missing[:10]}, unexpected "
                     f"{unexpected[:10]}, shape mismatches (ours, transformers') {dict(list(wrong.items())[:10])}")


def _as_path(path):
  """A local path as :class:`pathlib.Path`, a bucket path as :class:`etils.epath.Path`."""
  return paths.path(path) if paths.is_uri(path) else Path(path)


def _is_symlink(path) -> bool:
  return not paths.is_uri(path) and Path(path).is_symlink()  # a bucket has no symlinks


def looks_like_export(path) -> bool:
  """Whether directory ``path`` (local, or a prefix in a bucket) looks like a previous export: only plain files (no
  subdirectory, e.g. no ``checkpoints/``, no symlink), among them ``config.json`` and ``model.safetensors`` or its
  index."""
  entries = list(_as_path(path).iterdir())
  names = {p.name for p in entries}
  return ("config.json" in names and bool(names & {WEIGHTS_NAME, WEIGHTS_INDEX_NAME})
          and all(p.is_file() and not _is_symlink(p) for p in entries))


def check_output_dir(output_dir, overwrite: bool) -> None:
  """Raise ``FileExistsError`` unless ``output_dir`` may be written: absent, or (with ``overwrite``) an empty
  directory or one that :func:`looks_like_export` (never a file, a symlink, or any other directory). In a bucket a
  "directory" is a prefix holding objects, and an object named ``output_dir`` itself is a file."""
  output_dir = _as_path(output_dir)
  if not output_dir.exists() and not _is_symlink(output_dir):
    return
  if not overwrite:
    raise FileExistsError(f"{output_dir} exists; pass overwrite=True (--overwrite) to replace it")
  if output_dir.is_file() or not output_dir.is_dir() or _is_symlink(output_dir):
    raise FileExistsError(f"{output_dir} exists and is not a directory; refusing to replace it")
  if any(output_dir.iterdir()) and not looks_like_export(output_dir):
    raise FileExistsError(f"{output_dir} does not look like a previous export (not a model directory: only "
                          f"files, with config.json and {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}); "
                          "refusing to replace it")


def _move_into_place(tmp: Path, output_dir: Path, overwrite: bool) -> None:
  """Rename ``tmp`` onto ``output_dir``; an existing directory is replaced in one step and deleted last."""
  check_output_dir(output_dir, overwrite)
  paths.replace_dir(tmp, output_dir)


def _publish_to_bucket(local_dir: Path, output_dir, overwrite: bool) -> None:
  """Upload the finished export ``local_dir`` to ``output_dir`` (``gs://bucket/dir``) so that the final prefix is
  complete whenever it holds ``config.json``.

  1. Every file is uploaded under a new temporary sibling prefix ``.<dir>.partial-<random>/`` (each upload is atomic;
     a failure here leaves ``output_dir`` as it was).
  2. ``output_dir`` is checked again (:func:`check_output_dir`), as locally right before the rename.
  3. A previous export's ``config.json`` is deleted first, so from then on the prefix is not a loadable export.
  4. The new files are copied server-side into ``output_dir`` (each copy replaces its object atomically), a previous
     export's files that the new one lacks are deleted, and ``config.json`` is copied last.
  5. The temporary prefix is deleted (also on failure).

  Cloud Storage cannot do better: there is no rename of a prefix. A failure in step 4 deletes what is left of
  ``output_dir`` (only the previous export's files and this export's, by name), so a rerun starts afresh; should that
  cleanup fail too, ``output_dir`` is left without ``config.json`` (not a loadable export, and not one that
  ``overwrite`` would replace: delete it, then export again).
  """
  fs, key = paths.fs_and_key(output_dir)
  parent, _, name = key.rpartition("/")
  if not parent or not name:
    raise ValueError(f"{output_dir}: name a directory in the bucket (gs://bucket/dir), not the bucket itself")
  files = sorted(p.name for p in Path(local_dir).iterdir())
  if "config.json" not in files:
    raise ValueError(f"{local_dir} has no config.json: not an export")
  staging = f"{parent}/.{name}.partial-{uuid.uuid4().hex[:8]}"
  old, replacing = [], False
  try:
    for f in files:
      fs.put_file(str(Path(local_dir) / f), f"{staging}/{f}")
    check_output_dir(output_dir, overwrite)
    old = sorted(p.name for p in paths.path(output_dir).iterdir()) if fs.isdir(key) else []
    if "config.json" in old:
      fs.rm_file(f"{key}/config.json")
    replacing = True  # from here on output_dir is no loadable export until config.json is copied
    for f in files:
      if f != "config.json":
        fs.copy(f"{staging}/{f}", f"{key}/{f}")
    for f in old:
      if f not in files:
        fs.rm_file(f"{key}/{f}")
    fs.copy(f"{staging}/config.json", f"{key}/config.json")
  except BaseException:
    if replacing:
      for f in sorted(set(files) | set(old)):
        _remove_quietly(fs, f"{key}/{f}")
    raise
  finally:
    _remove_quietly(fs, staging, recursive=True)


def _remove_quietly(fs, key: str, recursive: bool = False) -> None:
  """Best-effort delete (never hides the error that led here)."""
  try:
    fs.rm(key, recursive=recursive)
  except FileNotFoundError:
    pass
  except Exception as e:  # noqa: BLE001
    logging.warning("could not delete %s from the bucket: %s", key, e)
