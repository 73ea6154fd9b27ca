"""Read a training workdir: its own saved config (``config.json``) plus a checkpoint's trained weights.

Every reader of a workdir (``score``, ``evaluate``, ``export``) goes through here, so all of them use the run's
saved config, never the command line's. A workdir may be local or in a bucket (``gs://...``, see
:mod:`dial_jax.paths`).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from dial_jax import config as config_lib
from dial_jax import paths
from dial_jax.hf import load
from dial_jax.inference import Scorer
from dial_jax.train import state as state_lib


def is_workdir(path) -> bool:
  path = paths.path(path)
  return (path / "config.json").exists() and (path / "checkpoints").is_dir()


def load_config(workdir) -> ml_collections.ConfigDict:
  """The run's saved config (``config.json``). Keys that an older version did not have yet (e.g.
  ``model.attention``) take the base config's defaults, with a warning naming them; an unknown key is a
  :class:`dial_jax.config.ConfigError`."""
  path = paths.path(workdir) / "config.json"
  saved = json.loads(path.read_text())
  flat = config_lib.flatten(saved)
  unknown = sorted(k for k in flat if k not in config_lib.RULES)
  if unknown:
    raise config_lib.ConfigError(f"{path}: " + "; ".join(config_lib.unknown_key_message(k) for k in unknown))
  missing = [k for k in config_lib.RULES if k not in flat]
  if missing:
    defaults = _base_defaults()
    logging.warning("%s has no %s (saved by an older version of dial_jax); using the base config's defaults: %s",
                    path, ", ".join(missing), ", ".join(f"{k}={defaults[k]!r}" for k in missing))
    for key in missing:
      section, name = key.split(".")
      saved.setdefault(section, {})[name] = defaults[key]
  return ml_collections.ConfigDict(saved)


def _base_defaults() -> dict:
  """The flat defaults of ``configs/base.py`` beside the package, as config.json stores them (JSON types).
  Loaded from its file, so that it is this checkout's base config whatever the working directory."""
  base_py = Path(__file__).resolve().parents[1] / "configs" / "base.py"
  if not base_py.is_file():
    raise config_lib.ConfigError(f"{base_py} is missing: it holds the defaults of keys an older config.json lacks")
  spec = importlib.util.spec_from_file_location("dial_jax_base_config", base_py)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return config_lib.flatten(json.loads(module.get_base_config().to_json_best_effort()))


def checkpoint_steps(workdir) -> list[int]:
  """The steps of the workdir's finished checkpoints (see :func:`dial_jax.paths.finished_steps`)."""
  return paths.finished_steps(paths.path(workdir) / "checkpoints")


def load_trained(workdir, step: int | None = None):
  """(model, variables, tokenizer, model_dir, config, step) with the checkpoint's trained weights merged in: ``step``
  of ``checkpoints/``, or by default the run's result: the state ``train.keep_best`` kept (``checkpoints_best/``)
  for a run trained with it, else the latest checkpoint."""
  config = load_config(workdir)
  best_steps = paths.finished_steps(paths.path(workdir) / paths.BEST_CHECKPOINTS)
  best = step is None and config.train.keep_best and bool(best_steps)
  steps = best_steps if best else checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"{workdir}: no checkpoint to load")
  if step is not None and step not in steps:
    raise FileNotFoundError(f"{workdir}: no checkpoint at step {step}; available steps: {steps}")
  model, variables, tokenizer, model_dir = load.build_model(config)
  manager = ocp.CheckpointManager(paths.absolute(workdir) / (paths.BEST_CHECKPOINTS if best else "checkpoints"))
  step = (max(steps) if best else manager.latest_step()) if step is None else step
  if best:
    logging.info("%s: loading step %d, the best source check (train.keep_best)", workdir, step)
  restored = manager.restore(step, args=ocp.args.StandardRestore())
  manager.close()
  trained = jax.tree.map(jnp.asarray, restored["trainable"])
  return model, state_lib.merge(trained, variables), tokenizer, model_dir, config, step


def load_scorer(workdir, step: int | None = None, **kwargs) -> Scorer:
  """A :class:`Scorer` of a workdir's trained reward model (``kwargs``: batch_size, max_length, mesh)."""
  model, variables, tokenizer, *_ = load_trained(workdir, step)
  return Scorer(model, variables, tokenizer, **kwargs)


def scorer_for(name_or_path, *, dtype=jnp.float32, **kwargs) -> Scorer:
  """A training workdir, an HF directory, a bundled name or a hub id -> its :class:`Scorer`."""
  if is_workdir(name_or_path):
    return load_scorer(name_or_path, **kwargs)
  return Scorer.from_pretrained(name_or_path, dtype=dtype, **kwargs)
