"""Choosing DIAL's lambda from finished runs, and the paired bootstrap of the gain over source-only (test examples
resampled; optionally the training seeds too).

Three rules, all over runs averaged across seeds, never reading ``target_test``:

* **label-free** (what a DIAL user can do, no target labels): the largest lambda whose mean source-validation
  accuracy stays within one standard error of source-only's while the domain gap W falls during training
  (mean W of the last logged window below that of the first). Few-shot has no source validation split, so
  there the check reads the source training pairs.
* **label-free, held-out gap** (a revision of the first, fixed in writing before the runs that test it: see
  ``experiments/smollm_fresh/NOTES.md``): the same source check, with "W falls" replaced by "the mean held-out domain
  gap is below source-only's". The gap (``inference.heldout_gap``) is measured once training ends, on the final
  embeddings of the source check split against target_val (labels unused), directly (``metrics.domain_gap``'s
  ``mean``: what a converged linear critic estimates), so it needs no critic to converge: the first rule compares a
  run's W with its own first window, while the critic is still learning, so W can rise in every run.
* **target_val** (a reference that needs target labels): the lambda with the best mean target_val metric.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dial_jax import probe
from dial_jax.experiments import rows as row_format


def metric_of(values: dict) -> float | None:
  """A split's headline metric: accuracy (pairs) or Pearson (scored texts)."""
  return values.get("accuracy", values.get("pearson"))


def source_check_split(row: dict) -> str:
  return "source_val" if "source_val" in row["eval"] else "source_train"


def _mean(values) -> float:
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else float("nan")


def _domain_loss_of(row: dict) -> str | None:
  """The run's domain loss: its variant's override, else the run spec's."""
  overrides = dict(o.partition("=")[::2] for o in filter(None, row.get("variant", "").split(",")))
  return overrides.get("dial.domain_loss", row.get("domain_loss"))


def domain_gap(row: dict, which: int = -1) -> float | None:
  """The domain gap the run's domain loss estimated (W for WDGRL, MMD² for MMD, ...) in its first (``which=0``) or
  last logged window; None when it had none (source-only, oracle, DANN).

  Rows made before ``domain_gap`` was logged keep only ``wasserstein``; those of MMD or CORAL runs keep neither,
  and their gap is ``(loss - source_loss) / lambda``: how the DIAL step forms its loss (no lambda warm-up and no
  auxiliary loss in the grids)."""
  for key in ("domain_gap", "wasserstein"):
    value = row_format.history_value(row, key, which)
    if value is not None:
      return value
  if row.get("mode") == "dial" and _domain_loss_of(row) in ("mmd", "coral") and row.get("lambda"):
    loss, source = row_format.history_value(row, "loss", which), row_format.history_value(row, "source_loss", which)
    if loss is not None and source is not None:
      return (loss - source) / row["lambda"]
  return None


def balance(row: dict) -> float | None:
  """‖∇ λ·domain loss‖ / ‖∇ Bradley–Terry loss‖ with respect to the batch's embeddings (the train step's
  ``balance/`` metrics) in the run's last logged window; above 1 the domain term sets the update. None for runs
  without a domain term or rows that did not log both."""
  domain = row_format.history_value(row, "balance/domain_grad_norm")
  source = row_format.history_value(row, "balance/source_grad_norm")
  return domain / source if domain is not None and source else None


def w_falls(row: dict) -> bool:
  """Whether the domain gap (the critic's W, or MMD²) of the run's last logged window is below that of its first."""
  first, last = domain_gap(row, 0), domain_gap(row)
  return first is not None and last is not None and last < first


def source_check(source_only: Sequence[dict]) -> tuple[str, float, float]:
  """(split, source-only's mean source-check metric, its standard error): the label-free rule keeps a lambda whose
  mean on that split is at least ``mean - se``. The SE is the larger of one run's binomial SE on the split and the
  SE of the mean over seeds."""
  split = source_check_split(source_only[0])
  so = [metric_of(r["eval"][split]) for r in source_only]
  n = source_only[0]["eval"][split]["n"]
  p = _mean(so)
  se = float(np.sqrt(max(p * (1 - p), 1e-12) / n))  # binomial SE of one run's accuracy on the split
  if len(so) > 1:
    se = max(se, float(np.std(so, ddof=1) / np.sqrt(len(so))))
  return split, p, se


def label_free_lambda(source_only: Sequence[dict], dial: dict[float, Sequence[dict]]) -> float | None:
  """The label-free choice (see the module docstring); None when no candidate qualifies or runs are missing."""
  if not source_only or not dial:
    return None
  split, p, se = source_check(source_only)
  ok = [lam for lam, rows in dial.items() if rows
        and _mean(metric_of(r["eval"][split]) for r in rows) >= p - se
        and np.mean([w_falls(r) for r in rows]) > 0.5]
  return max(ok) if ok else None


def heldout_gap(row: dict) -> float | None:
  """The run's held-out domain gap (``inference.heldout_gap``'s ``mean``); None for rows made before it was measured."""
  return (row.get("heldout_gap") or {}).get("mean")


def has_heldout_gap(source_only: Sequence[dict], dial: dict[float, Sequence[dict]]) -> bool:
  """Whether every run the held-out rule reads measured the gap (rows from before it did not)."""
  runs = [*source_only, *(r for rows in dial.values() for r in rows)]
  return bool(runs) and all(heldout_gap(r) is not None for r in runs)


def label_free_heldout_lambda(source_only: Sequence[dict], dial: dict[float, Sequence[dict]]) -> float | None:
  """The label-free rule with the held-out gap (see the module docstring): the largest lambda whose mean
  source-check metric is at least source-only's minus one SE and whose mean held-out gap is below source-only's;
  None when none qualifies or a run has no gap."""
  if not source_only or not dial or not has_heldout_gap(source_only, dial):
    return None
  split, p, se = source_check(source_only)
  so_gap = _mean(heldout_gap(r) for r in source_only)
  ok = [lam for lam, rows in dial.items() if rows
        and _mean(metric_of(r["eval"][split]) for r in rows) >= p - se
        and _mean(heldout_gap(r) for r in rows) < so_gap]
  return max(ok) if ok else None


def target_val_lambda(dial: dict[float, Sequence[dict]]) -> float | None:
  """The lambda with the best mean target_val metric (ties: the smaller lambda)."""
  scored = [(_mean(metric_of(r["eval"]["target_val"]) for r in rows), -lam, lam) for lam, rows in dial.items() if rows]
  return max(scored)[2] if scored else None


def per_run_draws(a_scores: Sequence[Sequence[float]], b_scores: Sequence[Sequence[float]], metric, targets=None,
                  *, num_samples: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Per-run ``metric(b) - metric(a)`` for runs paired by seed (``a_scores[i]``, ``b_scores[i]``: the per-example
  scores of seed i on the same examples): on every example ([runs]) and on ``num_samples`` resamples of the examples,
  the same indices for every run ([num_samples, runs]). ``metric(scores, targets)``: e.g. accuracy of margins, or
  Pearson of rewards with ``targets``."""
  a, b = np.asarray(a_scores, np.float64), np.asarray(b_scores, np.float64)
  if a.shape != b.shape or a.ndim != 2:
    raise ValueError(f"paired runs need equal [runs, examples] shapes, got {a.shape} and {b.shape}")
  t = None if targets is None else np.asarray(targets, np.float64)
  per_run = lambda idx: np.array([metric(b[i][idx], None if t is None else t[idx])
                                  - metric(a[i][idx], None if t is None else t[idx]) for i in range(len(a))])
  n = a.shape[1]
  rng = np.random.default_rng(seed)
  return per_run(np.arange(n)), np.stack([per_run(rng.integers(0, n, n)) for _ in range(num_samples)])


def interval(full: np.ndarray, draws: np.ndarray, *, resample_runs: bool = False,
             seed: int = 0) -> tuple[float, float, float]:
  """(mean over runs, 2.5 %, 97.5 %) from ``per_run_draws``. By default the runs are fixed and only the examples
  vary: how sure these runs' Δ is on other test examples. ``resample_runs`` also draws the runs with replacement in
  each resample (a two-level bootstrap), so the interval covers the spread between training seeds too."""
  means = draws.mean(axis=1)
  if resample_runs:
    k = draws.shape[1]
    pick = np.random.default_rng([seed, 1]).integers(0, k, draws.shape)
    means = np.take_along_axis(draws, pick, axis=1).mean(axis=1)
  return float(full.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_bootstrap(a_scores: Sequence[Sequence[float]], b_scores: Sequence[Sequence[float]], metric,
                     targets=None, *, num_samples: int = 2000, seed: int = 0,
                     resample_runs: bool = False) -> tuple[float, float, float]:
  """(mean difference, 2.5 %, 97.5 %) of ``metric(b) - metric(a)`` averaged over runs paired by seed; examples are
  resampled (the same indices for every run), and with ``resample_runs`` the runs too (``interval``)."""
  return interval(*per_run_draws(a_scores, b_scores, metric, targets, num_samples=num_samples, seed=seed),
                  resample_runs=resample_runs, seed=seed)


def accuracy_of_margins(margins, _targets=None) -> float:
  """:func:`dial_jax.probe.pairwise_accuracy` with the bootstrap's (scores, targets) signature."""
  return probe.pairwise_accuracy(margins)
