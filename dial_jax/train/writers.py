"""Where metrics go: ``metrics.jsonl``, TensorBoard event files, optionally Weights & Biases, or a list in memory.

Every writer has ``write(step, kind, values)`` (``kind`` is ``train`` or ``eval/<split>``; scalars are logged as
``<kind>/<name>``), ``flush()`` and ``close()``. Only process 0 writes (``make_writers`` returns a no-op writer
elsewhere). The workdir may be in a bucket (``gs://...``): there an object cannot be appended to, so metrics.jsonl
and the event file are uploaded whole, at most every ``upload_every_s`` seconds and at every ``flush()``/``close()``
(the loop flushes before each checkpoint).
"""
from __future__ import annotations

import json
import math
import tempfile
import time

import numpy as np
from absl import logging

from dial_jax import paths

UPLOAD_EVERY_S = 30.0


def _py(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


def finite_or_none(v):
  """JSON has no NaN/Infinity: non-finite numbers are written as null."""
  if isinstance(v, float) and not math.isfinite(v):
    return None
  return v


class JsonlWriter:
  """Appends one JSON object per line to ``<workdir>/metrics.jsonl``; in a bucket the file's text (what a resumed
  run found there, plus the new rows) is kept here and uploaded whole (one atomic object write)."""

  def __init__(self, workdir, upload_every_s: float = UPLOAD_EVERY_S):
    self.path = paths.path(workdir) / "metrics.jsonl"
    self.remote = paths.is_uri(self.path)
    self.upload_every_s, self._uploaded, self._pending = upload_every_s, 0.0, False
    self._text = self.path.read_text() if self.remote and self.path.exists() else ""

  def write(self, step: int, kind: str, values: dict) -> None:
    row = {"step": int(step), "kind": kind, "time": time.time(),
           **{k: finite_or_none(_py(v)) for k, v in values.items()}}
    line = json.dumps(row, allow_nan=False) + "\n"
    if not self.remote:
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(line)
      return
    self._text += line
    self._pending = True
    if time.time() - self._uploaded >= self.upload_every_s:
      self.flush()

  def flush(self) -> None:
    if self._pending:
      self.path.write_text(self._text)
      self._uploaded, self._pending = time.time(), False

  def close(self) -> None:
    self.flush()


class TensorBoardWriter:
  """TensorBoard event files in ``<workdir>/tensorboard`` (tensorboardX), one scalar per metric. For ``gs://``
  tensorboardX's own writer (google-cloud-storage) uploads the event file whole at each flush."""

  def __init__(self, workdir, upload_every_s: float = UPLOAD_EVERY_S):
    from tensorboardX import SummaryWriter
    logdir = paths.path(workdir) / "tensorboard"
    self.remote = paths.is_uri(logdir)
    self.upload_every_s, self._uploaded = upload_every_s, 0.0
    self.writer = SummaryWriter(str(logdir))

  def write(self, step: int, kind: str, values: dict) -> None:
    for name, value in values.items():
      value = np.asarray(value)
      if value.ndim == 0 and np.issubdtype(value.dtype, np.number):
        self.writer.add_scalar(f"{kind}/{name}", float(value), int(step))
    if not self.remote or time.time() - self._uploaded >= self.upload_every_s:
      self.flush()

  def flush(self) -> None:
    self.writer.flush()
    self._uploaded = time.time()

  def close(self) -> None:
    self.writer.close()


class WandbWriter:
  """Weights & Biases run (``train.wandb_project``; works offline with ``WANDB_MODE=offline``)."""

  def __init__(self, workdir, project: str, config: dict):
    import wandb
    local = tempfile.mkdtemp(prefix="dial_wandb_") if paths.is_uri(workdir) else str(workdir)  # wandb's own files
    self.run = wandb.init(project=project, dir=local, config=config, name=paths.path(workdir).name, resume="allow")

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

  def flush(self) -> None:
    for w in self.writers:
      if hasattr(w, "flush"):
        w.flush()

  def close(self) -> None:
    for w in self.writers:
      w.close()


def make_writers(workdir, *, enabled: bool, wandb_project: str = "", config: dict | None = None):
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
