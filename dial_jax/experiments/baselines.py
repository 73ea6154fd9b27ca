"""Frozen-feature baseline: a linear reward on the frozen backbone's last-token features, fitted by L2-regularised
pairwise logistic regression (Bradley-Terry on ``h_chosen - h_rejected``). It is the floor any fine-tuned reward
model must clear. Pure numpy; Newton's method (the features are a few hundred wide)."""
from __future__ import annotations

import numpy as np

L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)


def fit_pairwise_logreg(diffs: np.ndarray, weights: np.ndarray | None = None, l2: float = 1e-2,
                        iters: int = 30) -> np.ndarray:
  """``w`` minimising ``mean_i weight_i * softplus(-diff_i . w) + l2 / 2 * |w|^2`` (no intercept: a pair's order is
  the label, so the problem is symmetric). ``diffs`` [N, D] = chosen - rejected features."""
  x = np.asarray(diffs, np.float64)
  n, d = x.shape
  weights = np.ones(n) if weights is None else np.asarray(weights, np.float64)
  weights = weights / max(weights.sum(), 1e-12)
  w = np.zeros(d)
  for _ in range(iters):
    p = 1.0 / (1.0 + np.exp(np.clip(x @ w, -50, 50)))   # sigma(-x.w)
    grad = -(weights * p) @ x + l2 * w
    hess = (x * (weights * p * (1 - p))[:, None]).T @ x + l2 * np.eye(d)
    step = np.linalg.solve(hess, grad)
    w -= step
    if np.abs(step).max() < 1e-10:
      break
  return w


def pairwise_accuracy(margins: np.ndarray) -> float:
  margins = np.asarray(margins)
  return float(np.mean((margins > 0) + 0.5 * (margins == 0)))


def scored_pairs(scores: np.ndarray, num_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Random (higher, lower, weight) index pairs of scored texts, as the train step pairs them (ties weight 0)."""
  rng = np.random.default_rng(seed)
  a, b = rng.integers(0, len(scores), num_pairs), rng.integers(0, len(scores), num_pairs)
  swap = scores[a] < scores[b]
  return np.where(swap, b, a), np.where(swap, a, b), (scores[a] != scores[b]).astype(np.float64)


def choose_l2(train_diffs, train_weights, val_diffs) -> float:
  """The L2 weight of :data:`L2_GRID` with the best validation pairwise accuracy (ties: the stronger penalty)."""
  scores = []
  for l2 in L2_GRID:
    w = fit_pairwise_logreg(train_diffs, train_weights, l2)
    scores.append((pairwise_accuracy(val_diffs @ w), l2))
  return max(scores)[1]
