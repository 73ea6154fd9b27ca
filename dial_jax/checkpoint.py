"""Orbax checkpoints of the train state (everything but the frozen base weights, which reload from the model)."""
from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from dial_jax.train.state import TrainState


class Checkpointer:
  """Saves every ``every`` steps (and when forced), keeps the last ``keep``; saves are asynchronous and atomic
  (orbax writes to a temporary directory and renames it when complete)."""

  def __init__(self, workdir: str | Path, every: int, keep: int):
    self.every = every
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True, create=True,
                                           cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def maybe_save(self, step: int, state: TrainState, force: bool = False) -> bool:
    if not force and (self.every <= 0 or step % self.every):
      return False
    if step in self.manager.all_steps():
      return False
    return self.manager.save(step, args=ocp.args.StandardSave(state.replace(frozen={})), force=True)

  def restore(self, template: TrainState, step: int | None = None) -> TrainState:
    """Restore ``step`` (default: latest) into the structure and shardings of ``template``."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template.replace(frozen={}))
    restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return restored.replace(frozen=template.frozen)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
