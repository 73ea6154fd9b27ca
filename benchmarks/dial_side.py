"""The dial_jax side of the benchmark: its settings, its config, and the jitted step built as the training loop
builds it."""
from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Settings:
  """The benchmark's knobs of the dial_jax step and its batches (``train_step.py``'s flags of the same names)."""
  lora_rank: int = 64  # 0 = full fine-tuning
  lora_alpha: float = 64.0
  min_bucket: int = 64
  remat_policy: str = "none"
  seed: int = 0
  pack_row_multiple: int = 1
  pack_row_length: int = 0  # 0 = max_length


def dial_config(settings: Settings, model_dir: Path, max_length: int, pairs: int, dtype: str,
                packing_mode: str = "none"):
  """The base config with the benchmark's model, lengths, batch and LoRA; a constant learning rate."""
  from configs import base

  c = base.get_base_config()
  c.data.packing = packing_mode
  c.data.pack_rows_multiple = settings.pack_row_multiple
  c.data.pack_row_length = settings.pack_row_length
  c.model.name = str(model_dir)
  c.model.dtype = dtype
  c.model.remat_policy = settings.remat_policy
  c.data.max_length = max_length
  c.data.min_bucket = min(settings.min_bucket, max_length)
  c.train.batch_size = pairs
  c.train.seed = settings.seed
  c.train.lr_schedule = "constant"  # the reference's AdamW has a constant learning rate
  if settings.lora_rank > 0:
    c.lora.rank, c.lora.alpha = settings.lora_rank, settings.lora_alpha
  else:
    c.train.trainable = "full"
  return c


def build_dial_jax(config, example_batch: dict, *, donate: bool = True) -> dict:
  """Model, state, jitted step and batch shardings (for batches shaped like ``example_batch``), built as
  ``dial_jax.train.loop`` builds them."""
  from dial_jax import parallel
  from dial_jax.hf import load
  from dial_jax.train import loop, state as state_lib, step as step_lib

  mesh = parallel.make_mesh(config.mesh)
  model, variables, tokenizer, _ = load.build_model(config)
  tx, critic_tx = state_lib.make_optimizer(config), state_lib.make_critic_optimizer(config)
  critic = state_lib.make_critic(config)
  shardings = parallel.variable_shardings(loop.abstract_variables(model), mesh)
  state, state_shardings = state_lib.create_train_state(
      variables, config, model.config.num_layers, model.config.hidden_size, tx, critic_tx, shardings, mesh)
  del variables
  batch_shardings = parallel.batch_shardings({k: v.shape for k, v in example_batch.items()}, mesh)
  step = step_lib.make_train_step(model, critic, tx, critic_tx, config, state_shardings=state_shardings,
                                  batch_sharding=batch_shardings, donate=donate)
  return {"model": model, "state": state, "step": step, "batch_shardings": batch_shardings, "tokenizer": tokenizer}
