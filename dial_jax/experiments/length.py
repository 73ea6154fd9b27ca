r"""What the target_test scores of a grid's runs track besides the truth: the length of the texts. For scored
settings (simple-to-complex) per run the Pearson of the reward with the essay's length in words (r_rl), the partial
Pearson of the reward with the true score given length, and the partial Pearson with length given the true score
(a length bias beyond the truth). Since Pearson(reward, truth) = r_tl · r_rl + partial · √((1 − r_rl²)(1 − r_tl²))
with r_tl = Pearson(truth, length) fixed by the data, r_tl · Δr_rl is the *length term* of a method's ΔPearson; a
reward that sees length only through the truth (r_rl = r_tl · Pearson(reward, truth)) has a length term of r_tl²
of its ΔPearson, the baseline to read the term against. For pair settings the Pearson of the margin with the chosen
− rejected length difference, and the accuracy on the pairs whose chosen response is the longer and the shorter
one. Differences between methods are paired by seed with the report's bootstrap (``grid_summary.delta_interval``).
Reads only the results file and the data files.

  python -m dial_jax.experiments.length --out=experiments/length/REPORT.md
"""
from __future__ import annotations

from pathlib import Path

import ml_collections
import numpy as np
from absl import logging

from dial_jax import metrics
from dial_jax.data import tokenize
from dial_jax.experiments import grid_summary, intervals, runner, selection
from dial_jax.experiments import rows as row_format

TITLE = "# What the rewards track besides the truth: the texts' length"


def target_test_targets(exp: ml_collections.ConfigDict, setting: str) -> np.ndarray | None:
  """[examples, 2] in the runner's target_test order: (true score, length in words) for scored texts; (NaN, chosen
  − rejected response length) for pairs. None when the file is missing."""
  found = grid_summary.target_test_rows(exp, setting)
  if found is None:
    return None
  kind, rows = found
  if kind == "scored":
    return np.asarray([(r["score"], tokenize.words(r["text"])) for r in rows], np.float64)
  diff = [tokenize.words(r["response_chosen"]) - tokenize.words(r["response_rejected"]) for r in rows]
  return np.asarray([(np.nan, d) for d in diff], np.float64)


def length_pearson(scores, targets) -> float:
  """Pearson of the scores (rewards or margins) with the length column of ``target_test_targets``."""
  return metrics.pearson(scores, np.asarray(targets)[:, 1])


def partial_pearson(scores, targets) -> float:
  """The scores' partial Pearson with the true score given length: ranking among essays of similar length."""
  t = np.asarray(targets)
  return metrics.partial_pearson(scores, t[:, 0], t[:, 1])


def length_given_truth(scores, targets) -> float:
  """The scores' partial Pearson with length given the true score: a length bias beyond what the truth explains
  (0 for a reward that sees length only through the truth)."""
  t = np.asarray(targets)
  return metrics.partial_pearson(scores, t[:, 1], t[:, 0])


def accuracy_chosen_longer(margins, targets) -> float:
  """Accuracy on the pairs whose chosen response is the longer one (NaN when there are none)."""
  keep = np.asarray(targets)[:, 1] > 0
  return selection.accuracy_of_margins(np.asarray(margins)[keep]) if keep.any() else float("nan")


def accuracy_chosen_shorter(margins, targets) -> float:
  """Accuracy on the pairs whose chosen response is the shorter one (NaN when there are none)."""
  keep = np.asarray(targets)[:, 1] < 0
  return selection.accuracy_of_margins(np.asarray(margins)[keep]) if keep.any() else float("nan")


def _usable(runs: list[dict], targets: np.ndarray) -> list[dict]:
  """The runs whose test scores reproduce their recorded metric and cover these examples (a data file changed
  since a run leaves it out)."""
  truth = targets[:, 0] if np.isfinite(targets[0, 0]) else None
  return [r for r in runs if grid_summary.scores_ok(r, truth) and len(row_format.scores_of(r)) == len(targets)]


def method_stats(runs: list[dict], targets: np.ndarray) -> dict:
  """Mean over the usable runs of the target metric and r_rl; scored texts: both partial Pearsons; pairs: the
  accuracy on chosen-longer and chosen-shorter pairs."""
  runs = _usable(runs, targets)
  per = lambda fn: float(np.mean([fn(row_format.scores_of(r), targets) for r in runs])) if runs else float("nan")
  scored = np.isfinite(targets[0, 0])
  return {"n": len(runs), "metric": grid_summary.mean_of(runs, grid_summary.target_metric),
          "length": per(length_pearson), "partial": per(partial_pearson) if scored else None,
          "bias": per(length_given_truth) if scored else None,
          "longer": None if scored else per(accuracy_chosen_longer),
          "shorter": None if scored else per(accuracy_chosen_shorter)}


def comparison(a: list[dict], b: list[dict], targets: np.ndarray, *, num_samples: int) -> dict | None:
  """b − a paired by seed: the target metric's Δ and Δr_rl; scored texts: the length term and both partials' Δ;
  pairs: Δ accuracy on chosen-longer and chosen-shorter pairs; each with ``grid_summary.delta_interval``'s
  intervals. None when no seed pairs up."""
  scored = np.isfinite(targets[0, 0])
  truth = targets[:, 0] if scored else None
  a, b = _usable(a, targets), _usable(b, targets)
  delta = lambda **kw: grid_summary.delta_interval(a, b, truth, num_samples=num_samples, **kw)
  metric = delta()
  if metric is None:
    return None
  out = {"metric": metric, "length": delta(metric=length_pearson, targets=targets)}
  if scored:
    out["partial"] = delta(metric=partial_pearson, targets=targets)
    out["bias"] = delta(metric=length_given_truth, targets=targets)
    out["length_term"] = float(np.corrcoef(targets[:, 0], targets[:, 1])[0, 1]) * out["length"]["delta"]
  else:
    out["longer"] = delta(metric=accuracy_chosen_longer, targets=targets)
    out["shorter"] = delta(metric=accuracy_chosen_shorter, targets=targets)
  return out


# The variants the page shows besides the control (a grid's others, e.g. the authors' critic, are its report's).
VARIANT_NAMES = {"dial.length_blind=true": "length-blind DIAL", "dial.match_target_lengths=true": "length-matched DIAL"}


def variant_name(overrides: str) -> str:
  return VARIANT_NAMES[overrides]


def setting_cells(exp: ml_collections.ConfigDict, summary: dict, *, num_samples: int) -> list[dict]:
  """Per setting of a grid summary with its data file: each method's stats (source-only, DIAL and the
  shuffled-domains control at each λ, each variant of :data:`VARIANT_NAMES` at its λs, oracle) and the comparisons
  DIAL − source-only, DIAL − control, and each such variant − source-only and − DIAL."""
  cells = []
  for setting, s in summary.items():
    targets = target_test_targets(exp, setting)
    if targets is None or not s["source_only"]:
      continue
    control = {lam: s["variants"].get((intervals.CONTROL, lam), []) for lam in exp.lambdas}
    others = [(overrides, float(lam), s["variants"][overrides, lam]) for overrides, lam in exp.variants
              if overrides in VARIANT_NAMES and s["variants"].get((overrides, lam))]
    methods = [("source-only", s["source_only"])]
    methods += [(f"DIAL λ={lam:g}", s["dial"].get(lam, [])) for lam in exp.lambdas]
    methods += [(f"control λ={lam:g}", control[lam]) for lam in exp.lambdas if control[lam]]
    methods += [(f"{variant_name(v)} λ={lam:g}", runs) for v, lam, runs in others]
    methods += [("oracle", s["oracle"])]
    comparisons = [(f"DIAL − source-only, λ={lam:g}", "dial", lam, s["source_only"], s["dial"][lam])
                   for lam in exp.lambdas if s["dial"].get(lam)]
    comparisons += [(f"DIAL − control, λ={lam:g}", "control", lam, control[lam], s["dial"][lam])
                    for lam in exp.lambdas if control[lam] and s["dial"].get(lam)]
    for v, lam, runs in others:
      comparisons += [(f"{variant_name(v)} − source-only, λ={lam:g}", "variant", lam, s["source_only"], runs)]
      if s["dial"].get(lam):
        comparisons += [(f"{variant_name(v)} − DIAL, λ={lam:g}", "variant", lam, s["dial"][lam], runs)]
    cells.append({
        "grid": intervals.grid_name(exp), "model": exp.model, "setting": setting, "metric": s["metric"],
        "r_tl": float(np.corrcoef(targets[:, 0], targets[:, 1])[0, 1]) if s["metric"] == "pearson" else None,
        "longer": selection.accuracy_of_margins(targets[:, 1]) if s["metric"] == "accuracy" else None,
        "n": len(targets), "n_longer": int((targets[:, 1] > 0).sum()), "n_shorter": int((targets[:, 1] < 0).sum()),
        "left_out": sum(len(runs) - len(_usable(runs, targets)) for _, runs in methods),
        "methods": [(name, m) for name, m in ((name, method_stats(runs, targets)) for name, runs in methods)
                    if m["n"]],
        "comparisons": [{"name": name, "kind": kind, "lambda": lam,
                         "d": comparison(a, b, targets, num_samples=num_samples)}
                        for name, kind, lam, a, b in comparisons]})
  return cells


def sign_tally(cells: list[dict]) -> dict[str, tuple[int, int]]:
  """Per backbone, over scored settings' DIAL − source-only comparisons: (cells where Δr_rl has the sign of
  ΔPearson, cells)."""
  out: dict[str, tuple[int, int]] = {}
  for c in cells:
    if c["metric"] != "pearson":
      continue
    for comp in c["comparisons"]:
      if comp["kind"] == "dial" and comp["d"] is not None:
        agree = np.sign(comp["d"]["length"]["delta"]) == np.sign(comp["d"]["metric"]["delta"])
        k, n = out.get(c["model"], (0, 0))
        out[c["model"]] = (k + int(agree), n + 1)
  return out


def _interval(d: dict | None) -> str:
  if d is None:
    return "—"
  return f"{d['delta']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]; seeds too [{d['lo_seeds']:+.3f}, {d['hi_seeds']:+.3f}]"


def cell_lines(c: dict) -> list[str]:
  """One grid and setting: the methods' table, then the comparisons'."""
  scored = c["metric"] == "pearson"
  title = grid_summary.TITLES[c["setting"]]
  lines = [f"### {c['grid']}: {title}", ""]
  if scored:
    lines += [f"Pearson(true score, length) r_tl = {c['r_tl']:+.3f} on these essays, so a reward that sees length "
              f"only through the truth has a length term of r_tl² = {c['r_tl'] ** 2:.2f} of its ΔPearson. Length "
              f"alone, no model, has a Pearson of {c['r_tl']:+.3f} with the truth.", ""]
  else:
    lines += [f"Length alone, no model: preferring the longer response (a tie counts half) is right on "
              f"{c['longer']:.3f} of these {c['n']} pairs.", ""]
  if c["left_out"]:
    lines += [f"{c['left_out']} run(s) left out: their test scores do not reproduce their metric or do not cover "
              f"these {c['n']} examples (the data file changed since?).", ""]
  if not c["methods"]:
    return lines
  head = ["method", "runs", "Pearson with the truth" if scored else "accuracy",
          "Pearson with length" if scored else "Pearson of the margin with the length difference"]
  if scored:
    head += ["partial Pearson with the truth given length", "partial Pearson with length given the truth"]
  else:
    head += [f"accuracy, chosen longer ({c['n_longer']})", f"accuracy, chosen shorter ({c['n_shorter']})"]
  lines += intervals._table_head(head)
  for name, m in c["methods"]:
    row = [name, str(m["n"]), f"{m['metric']:+.3f}" if scored else f"{m['metric']:.3f}", f"{m['length']:+.3f}"]
    row += [f"{m['partial']:+.3f}", f"{m['bias']:+.3f}"] if scored else [f"{m['longer']:.3f}", f"{m['shorter']:.3f}"]
    lines.append("| " + " | ".join(row) + " |")
  lines.append("")
  comparisons = [comp for comp in c["comparisons"] if comp["d"] is not None]
  if not comparisons:
    return lines
  head = ["comparison", "Δ metric", "Δ Pearson with length"]
  if scored:
    head += ["length term r_tl · Δ", "Δ partial given length", "Δ partial with length given the truth"]
  else:
    head += ["Δ accuracy, chosen longer", "Δ accuracy, chosen shorter"]
  lines += intervals._table_head(head)
  for comp in comparisons:
    d = comp["d"]
    row = [comp["name"], _interval(d["metric"]), _interval(d["length"])]
    row += ([f"{d['length_term']:+.3f}", _interval(d["partial"]), _interval(d["bias"])] if scored
            else [_interval(d["longer"]), _interval(d["shorter"])])
    lines.append("| " + " | ".join(row) + " |")
  return lines + [""]


def not_repeated_line(shown_under: dict[str, str]) -> str:
  """The line that stands for settings an earlier section showed: {setting: the grid whose section shows it}."""
  by_grid = {}
  for setting, grid in shown_under.items():
    by_grid.setdefault(grid, []).append(grid_summary.TITLES[setting])
  return "Not repeated (shown above): " + "; ".join(f"{', '.join(t)} under {g}" for g, t in by_grid.items()) + "."


def render(grids: list[ml_collections.ConfigDict], *,
           num_samples: int = grid_summary.BOOTSTRAP_SAMPLES) -> str:
  lines = [TITLE, "",
           "Generated by `python -m dial_jax.experiments.length` from the results file and the data files (design "
           "and predictions: [NOTES.md](NOTES.md)). Length is in words (whitespace-separated) of the whole text; the "
           "model sees only its first or last `max_length` tokens. Scored settings: Pearson of each run's rewards "
           "with the essays' length, the partial Pearson with the true score given length (ranking among essays of "
           "similar length) and the partial Pearson with length given the true score (a length bias beyond the "
           "truth); the length term r_tl · Δ is the part of ΔPearson that the change in the length correlation "
           "accounts for (r_tl = Pearson(truth, length)); a reward that sees length only through the truth has a "
           "length term of r_tl² of its ΔPearson. Pair settings: Pearson of each pair's margin with the chosen − "
           "rejected length difference, and the accuracy on the pairs whose chosen response is the longer or the "
           "shorter one (ties in neither; each Δ reads the resampled pairs of its subset). Method columns are "
           "means over runs; comparisons are paired by seed, "
           f"examples resampled, with the seeds resampled too as the stricter reading ({num_samples} draws, seed "
           f"{grid_summary.BOOTSTRAP_SEED}). `control` is the shuffled-domains control (`{intervals.CONTROL}`); "
           "`length-blind DIAL` is DIAL with `dial.length_blind=true`, `length-matched DIAL` with "
           "`dial.match_target_lengths=true`. A setting of a grid whose runs an earlier section of the same grid "
           "fingerprint and seeds already shows is not repeated.",
           ""]
  cells, shown = [], {}
  for exp in grids:
    rows = grid_summary.grid_rows(exp, runner.read_results(exp.results))
    summary = grid_summary.summarize_grid(exp, rows, num_samples=num_samples)
    key = (runner.grid_fingerprint(exp), tuple(exp.seeds))
    mine = setting_cells(exp, summary, num_samples=num_samples)
    lines += [f"## {intervals.grid_name(exp)} (grid `{key[0]}`, seeds {', '.join(map(str, exp.seeds))})", ""]
    repeated = [c["setting"] for c in mine if (key, c["setting"]) in shown]
    if repeated:  # an earlier grid listed here (a superset of these runs, e.g. more variants) shows them
      lines += [not_repeated_line({s: shown[key, s] for s in repeated}), ""]
      mine = [c for c in mine if c["setting"] not in repeated]
    shown.update({(key, c["setting"]): intervals.grid_name(exp) for c in mine})
    if not mine and not repeated:
      lines += [f"No runs of this grid in `{exp.results}`.", ""]
    for c in mine:
      lines += cell_lines(c)
    cells += mine
  lines += ["## Does the length correlation move with the metric?", "",
            "Over every scored setting's DIAL − source-only comparisons above (one per grid and λ), how often Δ of "
            "the Pearson with length has the sign of ΔPearson with the truth:", ""]
  for model, (k, n) in sign_tally(cells).items():
    lines.append(f"- `{model}`: {k} of {n} cells.")
  return "\n".join(lines + [""])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    grids = intervals.load_grids(FLAGS.config_file, FLAGS.presets, "presets")
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  for exp in grids:
    if FLAGS.results:
      exp.results = FLAGS.results
  out = Path(FLAGS.out)
  if out.exists() and not FLAGS.overwrite and not out.read_text(encoding="utf-8").startswith(TITLE):
    raise app.UsageError(f"--out={out} exists and is not a page this tool wrote; pass --overwrite to replace it")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(render(grids), encoding="utf-8")
  logging.info("wrote %s (%d grids)", out, len(grids))


if __name__ == "__main__":
  from absl import app, flags
  FLAGS = flags.FLAGS
  flags.DEFINE_string("config_file", "configs/experiments.py", "Experiment grid config file.")
  # Grids with disjoint runs (a control preset stands for the plain grid it shares its rows with). A grid listed
  # after a superset of its runs (same fingerprint and seeds) adds only the settings the superset lacks: here
  # simple-to-complex, which the length-matched grids cannot run.
  flags.DEFINE_list("presets", ["lpft_sp_matched1", "lpft_sp_matched", "lpft_sp_blind", "lpft_sp_es_control",
                                "smollm_sp_control", "default", "lpft_control", "lpft_all_control",
                                "lpft_sp_matched_fresh", "lpft_sp_control_fresh", "lpft_sp_l2wd",
                                "lpft_sp_gapcurve", "lpft_sp2", "essays512", "smollm_fresh"],
                    "Presets of the config file ('default': the grid without a preset).")
  flags.DEFINE_string("results", None, "Results file (default: each preset's).")
  flags.DEFINE_string("out", "experiments/length/REPORT.md", "Where to write the page.")
  flags.DEFINE_bool("overwrite", False, "Replace --out even when it is not a page this tool wrote.")
  app.run(main)
