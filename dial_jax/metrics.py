"""Evaluation metrics (pairwise accuracy, Pearson, Spearman) and the metrics writer."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from dial_jax import losses


def pairwise_accuracy(r_chosen, r_rejected) -> float:
  """Fraction of pairs whose chosen response gets the higher reward (ties count one half)."""
  r_chosen, r_rejected = np.asarray(r_chosen, np.float64), np.asarray(r_rejected, np.float64)
  return float(np.mean((r_chosen > r_rejected) + 0.5 * (r_chosen == r_rejected)))


def pearson(x, y) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  x, y = x - x.mean(), y - y.mean()
  denom = np.sqrt((x * x).sum() * (y * y).sum())
  return float((x * y).sum() / denom) if denom > 0 else 0.0


def partial_pearson(x, y, z) -> float:
  """Pearson of x with y once z's least-squares line is removed from both (e.g. a reward with the human score given
  the text's length); 0 when x is, to rounding, a linear function of z."""
  x, y, z = (np.asarray(a, np.float64) for a in (x, y, z))
  z = z - z.mean()
  zz = float(z @ z)
  rest = lambda a: (a - a.mean()) - (z * (float(z @ (a - a.mean())) / zz) if zz > 0 else 0.0)
  rx = rest(x)
  if np.linalg.norm(rx) <= 1e-9 * np.linalg.norm(x - x.mean()):
    return 0.0
  return pearson(rx, rest(y))


def length_check(kind: str, lengths: np.ndarray, scores: np.ndarray, truth: np.ndarray | None = None) -> dict:
  """How a reward relates to the texts' length, beside what length alone does. Pairs (``lengths`` [n, 2]: chosen,
  rejected response; ``scores``: margins): ``longer_accuracy``, how often preferring the longer response is right
  (ties half), and ``margin_length_pearson``, the margins' Pearson with the length difference. Scored texts
  (``lengths`` [n], ``scores``: rewards, ``truth``: human scores): ``length_pearson`` (length alone against the
  score), ``reward_length_pearson`` and ``pearson_given_length`` (the reward's partial Pearson with the score given
  length: ranking among texts of similar length)."""
  lengths = np.asarray(lengths, np.float64)
  if kind == "pairs":
    diff = lengths[:, 0] - lengths[:, 1]
    return {"longer_accuracy": pairwise_accuracy(lengths[:, 0], lengths[:, 1]),
            "margin_length_pearson": pearson(scores, diff)}
  return {"length_pearson": pearson(lengths, truth), "reward_length_pearson": pearson(scores, lengths),
          "pearson_given_length": partial_pearson(scores, truth, lengths)}


def rankdata(x) -> np.ndarray:
  """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
  x = np.asarray(x)
  order = np.argsort(x, kind="stable")
  ranks = np.empty(len(x), np.float64)
  sorted_x = x[order]
  start = 0
  for end in range(1, len(x) + 1):
    if end == len(x) or sorted_x[end] != sorted_x[start]:
      ranks[order[start:end]] = (start + end + 1) / 2.0
      start = end
  return ranks


def spearman(x, y) -> float:
  return pearson(rankdata(x), rankdata(y))


def wilson_interval(p: float, n: int, z: float = 1.959964) -> tuple[float, float]:
  """Wilson score 95 % interval of a proportion ``p`` over ``n`` trials (ties counted as halves)."""
  if n <= 0:
    return (0.0, 1.0)
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return (float(max(centre - half, 0.0)), float(min(centre + half, 1.0)))


def fisher_interval(r: float, n: int, z: float = 1.959964) -> tuple[float, float]:
  """95 % interval of a correlation ``r`` over ``n`` pairs by Fisher's z transform (needs n > 3)."""
  if n <= 3:
    return (-1.0, 1.0)
  zr = np.arctanh(np.clip(r, -0.999999, 0.999999))
  half = z / np.sqrt(n - 3)
  return (float(np.tanh(zr - half)), float(np.tanh(zr + half)))


MMD_MAX_ROWS = 1000  # per domain: MMD² needs all pairwise distances, so larger splits are subsampled for it


def domain_gap(h_s, h_t) -> dict[str, float]:
  """How far apart two domains' embeddings (``[N_s, D]``, ``[N_t, D]``) are, in units of their pooled RMS norm, so
  it reads the same at any embedding scale (the grids' critic reads embeddings scaled the same way):

  * ``mean``: ``|mean(h_s) - mean(h_t)|``, the Wasserstein-1 estimate of a converged 1-Lipschitz linear critic
    (the grids' WDGRL critic is linear), measured directly instead of by training one; every row counts;
  * ``mmd``: multi-kernel Gaussian MMD² (``losses.mmd_loss``, bandwidths relative to the pooled distances), on at
    most ``MMD_MAX_ROWS`` rows per domain (a seeded draw), so its memory stays bounded on large evaluation splits.
  """
  h_s, h_t = np.asarray(h_s, np.float64), np.asarray(h_t, np.float64)
  pooled = np.concatenate([h_s, h_t])
  scale = float(np.sqrt(np.mean(np.sum(pooled * pooled, axis=1)))) or 1.0
  mean = float(np.linalg.norm(h_s.mean(axis=0) - h_t.mean(axis=0)) / scale)
  rng = np.random.default_rng(0)
  rows = lambda h: h if len(h) <= MMD_MAX_ROWS else h[np.sort(rng.choice(len(h), MMD_MAX_ROWS, replace=False))]
  return {"mean": mean, "mmd": float(losses.mmd_loss(rows(h_s) / scale, rows(h_t) / scale))}


class MetricWriter:
  """Appends one JSON object per line to ``<workdir>/metrics.jsonl`` (only where ``enabled``)."""

  def __init__(self, workdir: str | Path, enabled: bool = True):
    self.path = Path(workdir) / "metrics.jsonl"
    self.enabled = enabled

  def write(self, step: int, kind: str, values: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "kind": kind, "time": time.time(), **{k: _py(v) for k, v in values.items()}}
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")


def _py(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()
