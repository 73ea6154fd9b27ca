"""A grid's rows summarized per setting: the runs of each method, each rule's λ and the paired bootstrap Δ against
source-only (what the report's tables, verdicts and figures are built from). Pure functions of the rows and the
data files' target_test scores."""
from __future__ import annotations

from pathlib import Path

import ml_collections
import numpy as np

from dial_jax import metrics
from dial_jax.data import io as dio
from dial_jax.data import pipeline
from dial_jax.experiments import rows as row_format
from dial_jax.experiments import runner, selection

# The paper's target metric (Wu & Choudhury, 2025), source-only -> DIAL, for reference only.
PAPER = {
    "cross_lingual": (0.621, 0.661),
    "clean_to_noisy": (0.671, 0.703),
    "few_shot": (0.845, 0.920),
    "simple_to_complex": (0.508, 0.556),
}
TITLES = {
    "cross_lingual": "cross-lingual (HH EN -> KO)",
    "clean_to_noisy": "clean-to-noisy (CNN/DM -> TL;DR)",
    "few_shot": "few-shot-to-full (TL;DR)",
    "simple_to_complex": "simple-to-complex (UKPConvArg -> ASAP)",
}
RULES = ("label_free", "label_free_heldout", "target_val")
RULE_NAMES = {"label_free": "label-free", "label_free_heldout": "label-free (held-out gap)", "target_val": "target_val"}
GUARDS = {"label_free": "source check or falling W", "label_free_heldout": "source check or held-out gap",
          "target_val": "no target_val runs"}
ORACLE_MARGIN = {"accuracy": 0.05, "pearson": 0.10}   # issue 13: oracle >= source-only + this
CONSISTENCY_TOL = 1e-3   # a run's test_scores must reproduce its recorded test metric to this
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0

def grid_rows(exp: ml_collections.ConfigDict, rows: list[dict]) -> list[dict]:
  """The rows of the runs ``exp`` declares (its settings, seeds, λs and variants) made under its grid (same
  fingerprint); the rest of the file is ignored, including runs of other presets that share the fingerprint (more
  seeds, a control)."""
  fingerprint = runner.grid_fingerprint(exp)
  declared = {spec.run_id for setting in exp.settings for spec in runner.grid(exp, setting)}
  return [r for r in rows if r.get("grid") == fingerprint and r["run_id"] in declared]


def target_test_rows(exp: ml_collections.ConfigDict, setting: str) -> tuple[str, list[dict]] | None:
  """(file kind, rows) of a setting's target_test examples in the order the runner evaluated them: the seeded
  group-stratified subset ``pipeline.load_domain(limit=exp.limits.target_test, seed=exp.data_seed)`` draws,
  recomputed from the file without tokenizing. None when the file is missing."""
  path = Path(exp.data_dir) / setting / "target_test.jsonl"
  if not path.exists():
    return None
  kind = pipeline.file_kind(path)
  rows, _ = dio.read_rows(path, kind)
  limit = exp.limits["target_test"]
  if limit and limit < len(rows):
    groups = [r["group"] if r.get("group") is not None else r["id"] for r in rows]
    rows = [rows[i] for i in pipeline.subset_indices(groups, limit, exp.data_seed)]
  return kind, rows


def target_test_truth(exp: ml_collections.ConfigDict, setting: str) -> np.ndarray | None:
  """The true scores of a scored setting's target_test examples (``target_test_rows``' order). None for pair
  settings or when the file is missing."""
  found = target_test_rows(exp, setting)
  if found is None or found[0] != "scored":
    return None
  return np.asarray([r["score"] for r in found[1]], np.float32)


def target_metric(row: dict) -> float:
  return selection.metric_of(row["eval"]["target_test"])


def mean_of(rows, fn) -> float:
  values = [v for v in (fn(r) for r in rows) if v is not None and np.isfinite(v)]
  return float(np.mean(values)) if values else float("nan")


def stats(values) -> tuple[float, float, int]:
  """(mean, sample std (0 for one value), n)."""
  a = np.asarray(list(values), np.float64)
  if not len(a):
    return float("nan"), float("nan"), 0
  return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, len(a)


def scores_ok(row: dict, truth) -> bool:
  """Whether the row's per-example test scores reproduce its recorded test metric (same examples, same order)."""
  scores = row_format.scores_of(row)
  if not scores:
    return False
  if "accuracy" in row["eval"]["target_test"]:
    return abs(selection.accuracy_of_margins(scores) - target_metric(row)) <= CONSISTENCY_TOL
  return (truth is not None and len(truth) == len(scores)
          and abs(metrics.pearson(scores, truth) - target_metric(row)) <= CONSISTENCY_TOL)


def delta_interval(source_only: list[dict], dial: list[dict], truth, *, metric=None, targets=None,
                   num_samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> dict | None:
  """Δ = DIAL − source-only on target_test, runs paired by seed (seeds present in both with usable test scores),
  examples resampled (``lo``, ``hi``; issue 13's interval) and, from the same draws, seeds resampled too
  (``lo_seeds``, ``hi_seeds``; ``selection.interval``): accuracy of margins for pairs, Pearson with ``truth`` for
  scored texts, or ``metric(scores, targets)`` when given (e.g. a correlation with the texts' length). None when
  no seed pairs up."""
  a = {r["seed"]: r for r in source_only if scores_ok(r, truth)}
  b = {r["seed"]: r for r in dial if scores_ok(r, truth)}
  seeds = sorted(set(a) & set(b))
  if not seeds:
    return None
  if metric is None:
    pairs = "accuracy" in a[seeds[0]]["eval"]["target_test"]
    metric, targets = (selection.accuracy_of_margins, None) if pairs else (metrics.pearson, truth)
  full, draws = selection.per_run_draws([row_format.scores_of(a[s]) for s in seeds],
                                        [row_format.scores_of(b[s]) for s in seeds],
                                        metric, targets, num_samples=num_samples, seed=seed)
  mean, lo, hi = selection.interval(full, draws, seed=seed)
  _, lo_seeds, hi_seeds = selection.interval(full, draws, resample_runs=True, seed=seed)
  return {"delta": mean, "lo": lo, "hi": hi, "lo_seeds": lo_seeds, "hi_seeds": hi_seeds, "seeds": seeds,
          "per_seed": full.tolist()}


def choices(source_only: list[dict], dial: dict[float, list[dict]]) -> dict[str, float | None]:
  """Each rule's λ (None: none qualifies), in ``RULES`` order; the held-out-gap rule only where every run it reads
  measured the gap (rows made before it have none)."""
  out = {"label_free": selection.label_free_lambda(source_only, dial)}
  if selection.has_heldout_gap(source_only, dial):
    out["label_free_heldout"] = selection.label_free_heldout_lambda(source_only, dial)
  out["target_val"] = selection.target_val_lambda(dial)
  return out


def rules_in(summary: dict) -> list[str]:
  """The rules any setting of ``summary`` applied, in ``RULES`` order."""
  return [r for r in RULES if any(r in s["choice"] for s in summary.values())]


def summarize(exp: ml_collections.ConfigDict, rows: list[dict], truths: dict | None = None, *,
              num_samples: int = BOOTSTRAP_SAMPLES) -> dict:
  """Per setting with rows: the runs of each method (grid seeds and lambdas only), both lambda choices, the paired
  bootstrap Δ under each, the variants and the per-lambda view. ``rows`` must already be this grid's."""
  truths = truths or {}
  out = {}
  for setting in exp.settings:
    mine = [r for r in rows if r["setting"] == setting]
    if not mine:
      continue
    plain = [r for r in mine if not r.get("variant")]
    by_mode = lambda m: sorted((r for r in plain if r["mode"] == m and (m.startswith("frozen_") or r["seed"] in
                                                                         exp.seeds)), key=lambda r: r["seed"])
    dial = {lam: [r for r in by_mode("dial") if r["lambda"] == lam] for lam in exp.lambdas}
    dial = {lam: v for lam, v in dial.items() if v}
    so = by_mode("source_only")
    choice = choices(so, dial)
    truth = truths.get(setting)
    deltas = {}
    for lam in set(choice.values()) - {None}:
      deltas[lam] = delta_interval(so, dial[lam], truth, num_samples=num_samples)
    variants = {}
    declared = {(v, lam) for v, lam in exp.variants}
    for r in sorted((r for r in mine if (r.get("variant"), r["lambda"]) in declared and r["seed"] in exp.variant_seeds),
                    key=lambda r: (r["variant"], r["lambda"], r["seed"])):
      variants.setdefault((r["variant"], r["lambda"]), []).append(r)
    variant_deltas = {k: delta_interval(so, v, truth, num_samples=num_samples) for k, v in variants.items()}
    # Against plain DIAL at the same lambda and seeds: what the variant changes in DIAL itself.
    variant_vs_dial = {(v, lam): delta_interval(dial[lam], runs, truth, num_samples=num_samples)
                       for (v, lam), runs in variants.items() if lam in dial}
    families = {}
    for (variant, lam), runs in variants.items():
      families.setdefault(variant, {})[lam] = runs
    # A variant run at every seed and lambda of the grid is a DIAL method of its own: both rules choose its lambda.
    variant_methods = {}
    for variant, runs_by_lam in families.items():
      if set(runs_by_lam) == set(exp.lambdas) and tuple(exp.variant_seeds) == tuple(exp.seeds):
        ch = choices(so, runs_by_lam)
        chosen = set(ch.values()) - {None}
        variant_methods[variant] = {"dial": runs_by_lam, "choice": ch,
                                    "deltas": {lam: variant_deltas[(variant, lam)] for lam in chosen}}
    max_length, truncation = runner.setting_options(exp, setting)
    done = {r["run_id"] for r in mine}
    expected = [s.run_id for s in runner.grid(exp, setting)]
    cache = [r["cache_seconds"] for r in mine if r.get("cache_seconds") is not None]
    out[setting] = {
        "metric": "accuracy" if "accuracy" in mine[0]["eval"]["target_test"] else "pearson",
        "frozen_source": by_mode("frozen_source"), "frozen_oracle": by_mode("frozen_oracle"),
        "source_only": so, "oracle": by_mode("oracle"), "dial": dial, "choice": choice, "deltas": deltas,
        "variants": variants, "variant_deltas": variant_deltas, "variant_vs_dial": variant_vs_dial,
        "variant_methods": variant_methods,
        "sizes": mine[0]["data_sizes"],
        "max_length": max_length, "truncation": truncation, "truth": truth,
        "done": sum(1 for r in expected if r in done), "expected": len(expected),
        "cache_seconds": max(cache) if cache else None, "rows": mine,
        "bad_scores": sorted(r["run_id"] for r in mine if r.get("test_scores") and not scores_ok(r, truth)),
    }
  return out

def dial_runs(s: dict, rule: str) -> list[dict]:
  lam = s["choice"][rule]
  return [] if lam is None else s["dial"][lam]


def summarize_grid(exp: ml_collections.ConfigDict, rows: list[dict], *,
                   num_samples: int = BOOTSTRAP_SAMPLES) -> dict:
  """``summarize`` of a grid's rows, with the true target_test scores of the settings that have rows."""
  settings = {r["setting"] for r in rows}
  truths = {s: target_test_truth(exp, s) for s in exp.settings if s in settings}
  return summarize(exp, rows, truths, num_samples=num_samples)
