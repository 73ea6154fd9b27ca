"""Load the trained reward model of a training workdir (its config.json plus a checkpoint)."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from dial_jax.train import state as state_lib


def is_workdir(path) -> bool:
  path = Path(path)
  return (path / "config.json").exists() and (path / "checkpoints").is_dir()


def load_config(workdir) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads((Path(workdir) / "config.json").read_text()))


def load_trained(workdir, step: int | None = None):
  """(model, variables, tokenizer, model_dir, config, step) with the checkpoint's trained weights merged in."""
  from dial_jax.train.loop import build_model  # local: loop imports the data pipeline
  config = load_config(workdir)
  model, variables, tokenizer, model_dir = build_model(config)
  manager = ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints")
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{workdir}: no checkpoint to load")
  restored = manager.restore(step, args=ocp.args.StandardRestore())
  manager.close()
  trained = jax.tree.map(jnp.asarray, restored["trainable"])
  return model, state_lib.merge(trained, variables), tokenizer, model_dir, config, step
