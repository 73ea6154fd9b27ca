"""Linear probe on frozen features: a reward linear in the model's last-token embeddings, fitted by L2-regularised
pairwise logistic regression (Bradley-Terry on ``h_chosen - h_rejected``). Two uses: the experiments' frozen-feature
baseline (the floor a fine-tuned reward model must clear) and ``model.head_init='probe'``, where the reward head
starts at the probe before fine-tuning (linear probing then fine-tuning, LP-FT: Kumar et al., ICLR 2022). Also the
frozen features' length direction that ``dial.length_blind`` hides from the domain loss. Pure numpy; Newton's method
(the features are a few hundred wide)."""
from __future__ import annotations

import numpy as np

L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)
DEFAULT_L2 = 1e-2  # without a validation split to choose on


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


def embeddings(scorer, domain) -> tuple[np.ndarray, np.ndarray | None]:
  """(chosen, rejected) last-token embeddings of a pairs domain; (texts, None) of a scored one."""
  if domain.kind == "pairs":
    _, h = scorer.score_tokens(list(domain.chosen) + list(domain.rejected), return_embeddings=True)
    return h[:len(domain)], h[len(domain):]
  return scorer.score_tokens(domain.texts, return_embeddings=True)[1], None


def pair_differences(domain, features, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(chosen - rejected features, weights) of a domain: its pairs, or 4 random pairs per text of a scored domain."""
  h, h_rejected = features
  if h_rejected is not None:
    return h - h_rejected, np.ones(len(h))
  hi, lo, w = scored_pairs(np.asarray(domain.scores), 4 * len(domain), seed=seed)
  return h[hi] - h[lo], w


def fit(fit_diffs: tuple[np.ndarray, np.ndarray], val_diffs: np.ndarray | None = None,
        l2: float | None = None) -> tuple[np.ndarray, float]:
  """(coefficients [D], L2): the probe on ``fit_diffs`` (differences, weights) at the given ``l2``, else with its L2
  chosen on ``val_diffs`` when given, else :data:`DEFAULT_L2`. Features are scaled by their RMS norm for the fit, so
  L2 means the same at any embedding scale; the coefficients apply to unscaled features."""
  x, w = fit_diffs
  scale = float(np.sqrt(np.mean(np.sum(x * x, axis=1)))) or 1.0
  if l2 is None:
    l2 = choose_l2(x / scale, w, val_diffs / scale) if val_diffs is not None else DEFAULT_L2
  return fit_pairwise_logreg(x / scale, w, l2) / scale, l2


def length_direction(parts) -> tuple[np.ndarray, float]:
  """(unit vector [D], r): the direction along which frozen embeddings change with the text's length in words, for
  ``dial.length_blind``. ``parts``: ``(features, lengths)`` per domain, features as :func:`embeddings` gives them and
  lengths as ``Domain.lengths``. The least-squares slope of the features on length, within pairs (chosen − rejected
  against their length difference, so the shared prompt cancels; swapping a pair flips both, so a target's labels do
  not enter) or, for scored texts, within the domain (both centred), pooled over the domains. ``r``: the correlation
  (through 0, as the fit) of the features' projections on it with the length (differences), how much of the length
  it carries."""
  xs, ls = [], []
  for (h, h_rejected), lengths in parts:
    h, lengths = np.asarray(h, np.float64), np.asarray(lengths, np.float64)
    if h_rejected is not None:
      xs.append(h - np.asarray(h_rejected, np.float64))
      ls.append(lengths[:, 0] - lengths[:, 1])
    else:
      xs.append(h - h.mean(axis=0))
      ls.append(lengths - lengths.mean())
  x, length = np.concatenate(xs), np.concatenate(ls)
  slope = length @ x / max(float(length @ length), 1e-12)
  norm = float(np.linalg.norm(slope))
  if norm == 0.0:
    raise ValueError("no length direction to fit: every pair's texts have equal length or the features are constant")
  u = slope / norm
  proj = x @ u
  return u, float(proj @ length / max(float(np.linalg.norm(proj) * np.linalg.norm(length)), 1e-12))
