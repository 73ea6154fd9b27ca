"""Where metrics go: ``metrics.jsonl``, TensorBoard event files, optionally Weights & Biases, or a list in memory.

Every writer has ``write(step, kind, values)`` (``kind`` is ``train`` or ``eval/<split>``; scalars are logged as
``<kind>/<name>``) and ``close()``. Only process 0 writes (``make_writers`` returns a no-op writer elsewhere).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from absl import logging


def _py(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


def finite_or_none(v):
  """JSON has no NaN/Infinity: non-finite numbers are written as null."""
  if isinstance(v, float) and not math.isfinite(v):
    return None
  return v


class JsonlWriter:
  """Appends one JSON object per line to ``<workdir>/metrics.jsonl``."""

  def __init__(self, workdir: str | Path):
    self.path = Path(workdir) / "metrics.jsonl"

  def write(self, step: int, kind: str, values: dict) -> None:
    row = {"step": int(step), "kind": kind, "time": time.time(),
           **{k: finite_or_none(_py(v)) for k, v in values.items()}}
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row, allow_nan=False) + "\n")

  def close(self) -> None:
    pass


class TensorBoardWriter:
  """TensorBoard event files in ``<workdir>/tensorboard`` (tensorboardX), one scalar per metric."""

  def __init__(self, workdir: str | Path):
    from tensorboardX import SummaryWriter
    self.writer = SummaryWriter(str(Path(workdir) / "tensorboard"))

  def write(self, step: int, kind: str, values: dict) -> None:
    for name, value in values.items():
      value = np.asarray(value)
      if value.ndim == 0 and np.issubdtype(value.dtype, np.number):
        self.writer.add_scalar(f"{kind}/{name}", float(value), int(step))
    self.writer.flush()

  def close(self) -> None:
    self.writer.close()


class WandbWriter:
  """Weights & Biases run (``train.wandb_project``; works offline with ``WANDB_MODE=offline``)."""

  def __init__(self, workdir: str | Path, project: str, config: dict):
    import wandb
    self.run = wandb.init(project=project, dir=str(workdir), config=config, name=Path(workdir).name, resume="allow")

  def write(self, step: int, kind: str, values: dict) -> None:
    self.run.log({f"{kind}/{k}": _py(v) for k, v in values.items()}, step=int(step))

  def close(self) -> None:
    self.run.finish()


class MemoryWriter:
  """Keeps every row in ``rows`` (the experiment runner's history)."""

  def __init__(self):
    self.rows: list[dict] = []

  def write(self, step: int, kind: str, values: dict) -> None:
    self.rows.append({"step": int(step), "kind": kind, **{k: _py(v) for k, v in values.items()}})

  def close(self) -> None:
    pass


class MultiWriter:
  def __init__(self, writers):
    self.writers = list(writers)

  def write(self, step: int, kind: str, values: dict) -> None:
    for w in self.writers:
      w.write(step, kind, values)

  def close(self) -> None:
    for w in self.writers:
      w.close()


def make_writers(workdir: str | Path, *, enabled: bool, wandb_project: str = "", config: dict | None = None):
  """The workdir's writers: metrics.jsonl and TensorBoard (and W&B when a project is named); no-op if disabled."""
  if not enabled:
    return MultiWriter([])
  writers = [JsonlWriter(workdir), TensorBoardWriter(workdir)]
  if wandb_project:
    try:
      writers.append(WandbWriter(workdir, wandb_project, config or {}))
    except ImportError:
      logging.warning("train.wandb_project=%r but wandb is not installed (pip install -e '.[wandb]'); not logging "
                      "to W&B", wandb_project)
  return MultiWriter(writers)
