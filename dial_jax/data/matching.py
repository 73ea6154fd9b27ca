"""Length-matched target pairs (``dial.match_target_lengths``): the target's training pairs redrawn, with
replacement, so that their response lengths follow the source's.

Label-free importance resampling (covariate-shift style): a logistic regression tells source pairs from target pairs
by their response lengths alone (the longer and the shorter response of a pair, so the order of a pair, which for the
source is its label, does not enter), and each target pair is drawn with probability proportional to its odds of
being a source pair, the estimated density ratio p_source / p_target. Pure numpy; Newton's method (six features).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from dial_jax.data import pipeline


def length_features(lengths: np.ndarray) -> np.ndarray:
  """[n, 5] features of [n, 2] response lengths in words: log(1 + longer), log(1 + shorter), their squares and
  product (quadratic, so a difference in spread is visible, not only a difference in means)."""
  lengths = np.asarray(lengths, np.float64)
  a, b = np.log1p(lengths.max(1)), np.log1p(lengths.min(1))
  return np.stack([a, b, a * a, b * b, a * b], 1)


def density_ratio(source_lengths: np.ndarray, target_lengths: np.ndarray, l2: float = 1e-2,
                  iters: int = 100) -> np.ndarray:
  """p_source / p_target (up to a constant) at each target pair, from an L2-regularised logistic regression of
  source (1) against target (0) on :func:`length_features` (standardised; each domain weighs half, whatever its
  size; the intercept is not penalised)."""
  feats = length_features(np.concatenate([source_lengths, target_lengths]))
  feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-12)
  x = np.concatenate([np.ones((len(feats), 1)), feats], 1)
  n_s, n_t = len(source_lengths), len(target_lengths)
  y = np.r_[np.ones(n_s), np.zeros(n_t)]
  weight = np.r_[np.full(n_s, 0.5 / n_s), np.full(n_t, 0.5 / n_t)]
  penalty = l2 * np.eye(x.shape[1])
  penalty[0, 0] = 0.0
  theta = np.zeros(x.shape[1])
  for _ in range(iters):
    p = 1.0 / (1.0 + np.exp(-np.clip(x @ theta, -50, 50)))
    grad = x.T @ (weight * (p - y)) + penalty @ theta
    hess = (x * (weight * p * (1 - p))[:, None]).T @ x + penalty
    step = np.linalg.solve(hess, grad)
    theta -= step
    if np.abs(step).max() < 1e-10:
      break
  return np.exp(np.clip(x[n_s:] @ theta, -50, 50))


def match_lengths(target: pipeline.Domain, source: pipeline.Domain, seed: int) -> tuple[pipeline.Domain, dict]:
  """``target`` redrawn (as many pairs as it has, with replacement, seeded) with probability proportional to
  :func:`density_ratio`, and what the draw did: the effective sample size of the weights (1 / sum p^2), the
  distinct pairs drawn, and the median absolute length difference within a pair in source, target and the draw."""
  for d in (source, target):
    if d.kind != "pairs":
      raise ValueError(f"dial.match_target_lengths needs preference pairs in both domains; {d.name!r} holds scored "
                       "texts")
    if d.lengths is None:
      raise ValueError(f"dial.match_target_lengths needs each response's length in words; domain {d.name!r} has "
                       "none (domains from pipeline.load_domain have them)")
  ratio = density_ratio(source.lengths, target.lengths)
  p = ratio / ratio.sum()
  idx = np.random.default_rng([seed, 0x6C656E]).choice(len(target), size=len(target), p=p)
  matched = dataclasses.replace(target, chosen=[target.chosen[i] for i in idx],
                                rejected=[target.rejected[i] for i in idx], lengths=target.lengths[idx])
  spread = lambda lengths: float(np.median(np.abs(lengths[:, 0] - lengths[:, 1])))
  info = {"effective_pairs": float(1.0 / np.sum(p * p)), "distinct_pairs": int(len(np.unique(idx))),
          "median_length_gap_source": spread(source.lengths), "median_length_gap_target": spread(target.lengths),
          "median_length_gap_matched": spread(matched.lengths)}
  return matched, info
