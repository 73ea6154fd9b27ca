"""Orbax checkpoints of the train state (everything but the frozen base weights, which reload from the model)."""
from __future__ import annotations

import os
import shlex

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

from dial_jax import paths
from dial_jax.train.state import TrainState

BEST_METRIC = "source_check"


class Checkpointer:
  """Saves every ``every`` steps (and when forced), keeps the last ``keep``; saves are asynchronous and atomic
  (locally orbax writes to a temporary directory and renames it when complete; on a bucket, ``gs://...``, it
  writes into the step's directory and marks it finished with a ``commit_success.txt`` object, written last)."""

  def __init__(self, workdir, every: int, keep: int, keep_best: bool = False):
    self.every = every
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True, create=True,
                                           cleanup_tmp_directories=True)
    self.directory = paths.absolute(workdir) / "checkpoints"
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self.best = None
    if keep_best:  # train.keep_best: the state with the best source check, next to the latest ones
      best_options = ocp.CheckpointManagerOptions(
          max_to_keep=1, best_fn=lambda metrics: metrics[BEST_METRIC], best_mode="max",
          keep_checkpoints_without_metrics=False, enable_async_checkpointing=True, create=True,
          cleanup_tmp_directories=True)
      self.best = ocp.CheckpointManager(paths.absolute(workdir) / paths.BEST_CHECKPOINTS, options=best_options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def due(self, step: int, force: bool = False) -> bool:
    """Whether :meth:`maybe_save` would save ``step``."""
    if not force and (self.every <= 0 or step % self.every):
      return False
    return step not in self.manager.all_steps()

  def maybe_save(self, step: int, state: TrainState, force: bool = False) -> bool:
    if not self.due(step, force):
      return False
    return self.manager.save(step, args=ocp.args.StandardSave(state.replace(frozen={})), force=True)

  def best_record(self) -> tuple[int | None, float | None]:
    """(step, source-check metric) of the kept best state, or (None, None)."""
    step = self.best.best_step()
    return (None, None) if step is None else (step, float(self.best.metrics(step)[BEST_METRIC]))

  def save_best(self, step: int, state: TrainState, metric: float) -> None:
    """Keep ``state`` as the best (the previous best is removed once this one is written)."""
    if step in self.best.all_steps():  # the same step again after a resume from an older checkpoint
      self.best.delete(step)
    self.best.save(step, args=ocp.args.StandardSave(state.replace(frozen={})), metrics={BEST_METRIC: metric},
                   force=True)

  def restore_best(self, template: TrainState) -> TrainState:
    self.best.wait_until_finished()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template.replace(frozen={}))
    restored = self.best.restore(self.best.best_step(), args=ocp.args.StandardRestore(abstract))
    return restored.replace(frozen=template.frozen)

  def restore(self, template: TrainState, step: int | None = None) -> TrainState:
    """Restore ``step`` (default: the newest readable checkpoint) into the structure and shardings of
    ``template``. A checkpoint that cannot be read (truncated array file, missing metadata) is skipped with a
    warning naming it, and the next older one is tried."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template.replace(frozen={}))
    steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    for s in steps:
      try:
        restored = self.manager.restore(s, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # orbax/tensorstore raise many types for a damaged checkpoint
        if step is not None:
          raise
        bad = self.directory / str(s)
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        moved = self._set_aside(bad)
        if moved is not None:
          logging.warning("checkpoint %s is unreadable (%s); moved it to %s (nothing is deleted) and trying an "
                          "older one", bad, why, moved)
        else:
          logging.warning("checkpoint %s is unreadable (%s); trying an older one (it is left in place, so every "
                          "resume warns again until it is removed: %s)", bad, why, _remove_command(bad))
        continue
      if not _all_finite(restored.trainable):
        logging.warning("checkpoint %s holds non-finite parameters; trying an older one", self.directory / str(s))
        continue
      if s != steps[0]:
        logging.warning("resuming from step %d, the newest readable checkpoint", s)
      return restored.replace(frozen=template.frozen)
    raise FileNotFoundError(f"{self.directory}: no readable checkpoint among steps {steps}; move the directory "
                            "away to start afresh")

  def _set_aside(self, bad):
    """Move an unreadable local checkpoint out of the step directories (to ``<workdir>/checkpoints_unreadable/``),
    so that the step can be saved again and later resumes do not trip on it; returns where it went. Left in place
    (None) on a bucket, which has no rename, and with several processes, which would race."""
    if paths.is_uri(bad) or jax.process_count() > 1:
      return None
    dest_dir = self.directory.parent / "checkpoints_unreadable"
    dest_dir.mkdir(exist_ok=True)
    dest = dest_dir / bad.name
    n = 1
    while dest.exists():
      dest, n = dest_dir / f"{bad.name}.{n}", n + 1
    os.rename(bad, dest)
    self.manager.reload()
    return dest

  def wait_until_finished(self) -> None:
    """Block until every asynchronous save is written."""
    for manager in (self.manager, self.best):
      if manager is not None:
        manager.wait_until_finished()

  def close(self) -> None:
    self.wait_until_finished()
    for manager in (self.manager, self.best):
      if manager is not None:
        manager.close()


def _remove_command(path) -> str:
  """The shell command that deletes the checkpoint directory ``path`` (local or ``gs://``)."""
  if paths.is_uri(path):
    return f"gcloud storage rm -r {shlex.quote(os.fspath(path))}"
  return f"rm -r {shlex.quote(os.fspath(path))}"


@jax.jit
def _finite(tree):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)] or [jnp.array(True)]))


def _all_finite(tree) -> bool:
  """Works on sharded (multi-host) arrays: the reduction runs where the arrays live."""
  return bool(_finite(tree))
