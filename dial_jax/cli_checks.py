"""Argument checks shared by the command-line tools, run before any model loads; errors are one line."""
from __future__ import annotations

import json
import os
from pathlib import Path

from dial_jax import paths


class UsageError(ValueError):
  """A bad flag value or model directory, found before the model loads (one line)."""


def check_positive(name: str, value: int) -> None:
  if value is None or value < 1:
    raise UsageError(f"--{name}={value}: must be at least 1")


def check_input_file(flag: str, path: str) -> None:
  """A local file or an object in a bucket (``gs://...``)."""
  p = paths.path(path)
  if p.is_dir():
    raise UsageError(f"--{flag}={path} is a directory, not a file")
  if not p.is_file():
    raise UsageError(f"--{flag}={path}: no such file")


def check_output_file(output: str, input_path: str) -> None:
  """The output can be written (its directory exists, it is not a directory) and is not the input. In a bucket
  (``gs://...``) the bucket must exist and the output must not be a "directory" (a prefix holding objects); the
  output and the input are compared as written (see :func:`dial_jax.paths.bucket_key`)."""
  if paths.is_uri(output):
    if not paths.bucket_exists(output):
      raise UsageError(f"--output={output}: the bucket does not exist or cannot be read")
    if paths.path(output).is_dir():
      raise UsageError(f"--output={output} is a directory; give a file path")
    if paths.is_uri(input_path):
      if paths.bucket_key(output) == paths.bucket_key(input_path):
        raise UsageError(f"--output={output} is the --input file; write the scores to another file")
      if paths.bucket_key(output + ".tmp") == paths.bucket_key(input_path):
        raise UsageError(f"--output={output}: its temporary file {output}.tmp is the --input file; choose another "
                         "output")
    return
  out = Path(output)
  if out.is_dir():
    raise UsageError(f"--output={output} is a directory; give a file path")
  parent = out.parent
  if not parent.is_dir():
    raise UsageError(f"--output={output}: directory {parent} does not exist")
  if not os.access(parent, os.W_OK):
    raise UsageError(f"--output={output}: directory {parent} is not writable")
  if paths.is_uri(input_path):  # a local output is never a bucket input
    return
  inp = Path(input_path)
  if out.resolve() == inp.resolve() or (out.exists() and inp.exists() and out.samefile(inp)):
    raise UsageError(f"--output={output} is the --input file; write the scores to another file")
  tmp = Path(str(out) + ".tmp")  # written first, then renamed onto the output
  if tmp.resolve() == inp.resolve() or (tmp.exists() and inp.exists() and tmp.samefile(inp)):
    raise UsageError(f"--output={output}: its temporary file {tmp} is the --input file; choose another output")


def check_model(model: str) -> None:
  """Checks a local model directory's files (weights complete, tokenizer present) without loading them.

  A training workdir is checked through its backbone (``model.name`` in its config.json) when that is a
  local directory; bundled names and hub ids are left to the loader.
  """
  from dial_jax import paths
  from dial_jax.hf import load
  if paths.is_uri(model):  # a bucket path can only be a training workdir (its backbone is checked when loaded)
    if not (paths.path(model) / "config.json").is_file() or not paths.finished_steps(paths.path(model) / "checkpoints"):
      raise UsageError(f"--model={model}: not a training workdir with a finished checkpoint")
    return
  path = Path(model).expanduser()
  if not path.exists():
    if str(model).startswith((".", "/", "~")):
      raise UsageError(f"--model={model}: no such directory")
    return  # a bundled name or a hub id
  if not path.is_dir():
    raise UsageError(f"--model={model} is a file; give a model directory")
  if (path / "checkpoints").is_dir() and (path / "config.json").is_file():
    try:
      backbone = json.loads((path / "config.json").read_text())["model"]["name"]
    except (ValueError, KeyError, TypeError):
      raise UsageError(f"{path / 'config.json'}: not a training config (no model.name)") from None
    if not any(p.name.isdigit() for p in (path / "checkpoints").iterdir()):
      raise UsageError(f"--model={model}: training workdir without a checkpoint in {path / 'checkpoints'}")
    path = Path(backbone).expanduser()
    if not path.is_dir():
      return
  if not (path / "config.json").is_file():
    raise UsageError(f"{path} has no config.json: not a Hugging Face model directory or training workdir")
  try:
    index = path / load.WEIGHTS_INDEX
    if index.is_file():
      try:
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
      except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UsageError(f"{index}: unreadable weight index ({type(e).__name__}: {e})") from None
    else:
      files = ["model.safetensors"] if (path / "model.safetensors").is_file() else []
    for name in files:
      if not (path / name).is_file():
        raise UsageError(f"{path / name}: missing (named by {index.name})")
      load.safetensors_header(path / name)
    load.check_tokenizer_files(path)
  except (ValueError, OSError) as e:
    if isinstance(e, UsageError):
      raise
    raise UsageError(str(e)) from None


def checkpoint_steps(workdir) -> list[int]:
  """Steps of the finished checkpoints in ``workdir/checkpoints`` (local or ``gs://``; see dial_jax.paths)."""
  return paths.finished_steps(paths.path(workdir) / "checkpoints")


def check_export_args(workdir, output, step: int | None, overwrite: bool) -> None:
  """``dial_jax.export``'s arguments: raises :class:`UsageError` (one line) for arguments that would fail or destroy
  data; loads nothing. (Here, not in the CLI module, so it can be called without registering the CLI's flags.)
  ``workdir`` and ``output`` may each be local or in a bucket (``gs://...``); two bucket paths are compared as
  :func:`dial_jax.paths.bucket_key` normalizes them."""
  remote, out_remote = paths.is_uri(workdir), paths.is_uri(output)
  if out_remote:
    if not paths.bucket_key(output).partition("://")[2].partition("/")[2]:
      raise UsageError(f"--output={output}: name a directory in the bucket (gs://bucket/dir), not the bucket itself")
    if not paths.bucket_exists(output):
      raise UsageError(f"--output={output}: the bucket does not exist or cannot be read; create it first")
  wd = paths.path(workdir) if remote else Path(workdir)
  if not (wd / "config.json").is_file() or not (wd / "checkpoints").is_dir():
    raise UsageError(f"--workdir={workdir} is not a training workdir (needs config.json and checkpoints/)")
  if remote == out_remote:  # a local output can never be, hold or lie in a bucket workdir, nor the other way round
    if remote:
      wd_key, out_key = paths.bucket_key(workdir), paths.bucket_key(output)
      same, inside, contains = out_key == wd_key, out_key.startswith(wd_key + "/"), wd_key.startswith(out_key + "/")
    else:
      wd_real, out_real = wd.resolve(), Path(output).resolve()
      same, inside, contains = out_real == wd_real, wd_real in out_real.parents, out_real in wd_real.parents
    if same:
      raise UsageError(f"--output={output} is the workdir: exporting there would replace the training run")
    if inside:
      raise UsageError(f"--output={output} is inside --workdir={workdir}; write the export outside the run")
    if contains:
      raise UsageError(f"--output={output} contains --workdir={workdir}; replacing it would delete the run")
  try:
    model_name = json.loads((wd / "config.json").read_text())["model"]["name"]
  except (ValueError, KeyError, TypeError):
    model_name = None
  if (model_name and not out_remote and not paths.is_uri(model_name) and Path(model_name).expanduser().is_dir()
      and Path(model_name).expanduser().resolve() == Path(output).resolve()):
    raise UsageError(f"--output={output} is the run's backbone directory (model.name); choose another")
  steps = checkpoint_steps(wd)
  if not steps:
    raise UsageError(f"--workdir={workdir}: no checkpoint in {wd / 'checkpoints'}")
  if step is not None and step not in steps:
    raise UsageError(f"--step={step}: no such checkpoint in {wd / 'checkpoints'} "
                     f"(available steps: {', '.join(map(str, steps))})")
  from dial_jax.hf import export  # jax, flax: only once the cheap checks passed
  try:
    export.check_output_dir(output, overwrite)
  except FileExistsError as e:
    raise UsageError(str(e)) from None
