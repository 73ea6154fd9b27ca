r"""Every grid's Δ = DIAL − source-only with two bootstrap intervals on one page: target_test examples resampled (issue
13's interval, the one each report's bars use) and the training seeds resampled too (the stricter reading); then
every grid's Δ beside how far its source-only runs ended from the frozen-feature probe; then, for the grids that ran
the shuffled-domains control, the control minus DIAL. Reads only the results file and the data files' target_test
scores, so it also covers grids whose saved embeddings (needed by their own reports' figures, not here) are gone.

  python -m dial_jax.experiments.intervals   # the grids of experiments/INTERVALS.md (the flags' defaults)
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections
import numpy as np
from absl import logging

from dial_jax import metrics
from dial_jax.experiments import grid_summary, report, runner, selection


def load_grid(config_file: str, preset: str) -> ml_collections.ConfigDict:
  """``get_config(preset)`` of the experiment config file (what ``--config=FILE:PRESET`` gives the other CLIs);
  ``default`` is the grid without a preset."""
  preset = "" if preset == "default" else preset
  spec = importlib.util.spec_from_file_location("experiment_grid_config", config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  exp = module.get_config(preset)
  exp.preset = preset
  return exp


def load_grids(config_file: str, presets, flag: str) -> list[ml_collections.ConfigDict]:
  """``load_grid`` of each preset a CLI flag names; a missing config file or an unknown preset is a ValueError whose
  one line names the flag."""
  if not Path(config_file).is_file():
    raise ValueError(f"--config_file={config_file}: no such file")
  try:
    return [load_grid(config_file, p) for p in presets]
  except ValueError as e:
    raise ValueError(f"--{flag}: {e}") from None


def grid_name(exp: ml_collections.ConfigDict) -> str:
  return f"`:{exp.preset}`" if exp.preset else "default"


def grid_section(exp: ml_collections.ConfigDict, rows: list, summary: dict) -> list[str]:
  """One grid's heading, its chosen-λ Δs under both intervals and the tally of the stricter one."""
  name = f"`:{exp.preset}`" if exp.preset else "the default grid"
  lines = [f"## {name} (grid `{runner.grid_fingerprint(exp)}`, {len(rows)} rows)", ""]
  if not rows:
    return lines + [f"No runs of this grid in `{exp.results}`.", ""]
  return lines + report.seed_interval_lines(summary) + ["", report.seed_interval_tally(exp, summary), ""]


def drift_cells(exp: ml_collections.ConfigDict, summary: dict) -> list[dict]:
  """Per complete setting (source-only and every λ at all seeds, frozen probe present): source-only's mean minus
  its frozen-feature probe, and DIAL's Δ of means at each λ and at the label-free λ."""
  cells = []
  mean = lambda runs: float(np.mean([selection.metric_of(r["eval"]["target_test"]) for r in runs]))
  for setting, s in summary.items():
    full = len(s["source_only"]) == len(exp.seeds) and all(len(s["dial"].get(lam, [])) == len(exp.seeds)
                                                            for lam in exp.lambdas)
    if not full or not s["frozen_source"]:
      continue
    so = mean(s["source_only"])
    lf = s["choice"]["label_free"]
    cells.append({"grid": grid_name(exp), "model": exp.model, "setting": setting, "metric": s["metric"],
                  "drift": so - selection.metric_of(s["frozen_source"][0]["eval"]["target_test"]),
                  "delta": {lam: mean(s["dial"][lam]) - so for lam in exp.lambdas},
                  "label_free": lf, "delta_label_free": None if lf is None else mean(s["dial"][lf]) - so})
  return cells


def _by_model(cells: list[dict]) -> dict[str, list[dict]]:
  """Cells grouped by backbone, in the order of each backbone's first cell (one summary each, never pooled)."""
  groups: dict[str, list[dict]] = {}
  for c in cells:
    groups.setdefault(c["model"], []).append(c)
  return groups


def _table_head(columns: list[str]) -> list[str]:
  """A Markdown table's header and separator rows."""
  return ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]


def drift_section(cells: list[dict], lambdas) -> list[str]:
  """Δ against how far source-only ends from its frozen probe, over every complete (grid, setting) cell."""
  lines = ["## DIAL's Δ against source-only's distance from its frozen-feature probe, across grids", "",
           "One row per grid and setting with every run done. Drift = source-only's mean target_test metric minus "
           "the frozen-feature source probe's (negative: fine-tuning on the source ended below the probe it could "
           "have kept). Δ = DIAL's mean minus source-only's, at each λ and at the label-free λ. Simple-to-complex "
           "is in Pearson, the rest in accuracy.", "",
           *_table_head(["grid", "setting", "drift", *(f"Δ λ={lam:g}" for lam in lambdas), "Δ label-free λ"])]
  for c in cells:
    lf = "none qualifies" if c["label_free"] is None else f"{c['delta_label_free']:+.3f} (λ={c['label_free']:g})"
    lines.append(f"| {c['grid']} | {grid_summary.TITLES[c['setting']]} | {c['drift']:+.3f} | "
                 + " | ".join(f"{c['delta'][lam]:+.3f}" for lam in lambdas) + f" | {lf} |")
  lines.append("")
  for model, group in _by_model(cells).items():
    lines.append(drift_summary(group, model))
  if cells:
    lines += ["", "Within a backbone the cells share data and, within a setting, splits, so they are not independent "
              "samples: read ρ as a description of those grids, not a test. A second backbone's cells are the "
              "out-of-sample check of the first one's pattern.", ""]
  return lines


def drift_summary(cells: list[dict], model: str) -> str:
  """One backbone's cells: Spearman ρ (from 3 cells on), the sign of the mean Δ on each side of drift 0, and how
  often the sign rule (mean Δ above 0 exactly where source-only ended below its probe) holds."""
  drift = [c["drift"] for c in cells]
  mean_delta = [float(np.mean(list(c["delta"].values()))) for c in cells]
  below = [d for x, d in zip(drift, mean_delta) if x < 0]
  above = [d for x, d in zip(drift, mean_delta) if x >= 0]
  rho = (f"Spearman ρ between drift and the mean Δ over λ: {metrics.spearman(drift, mean_delta):+.2f} "
         f"(n = {len(cells)} cells). " if len(cells) >= 3 else f"{len(cells)} cell(s), too few for a correlation. ")
  holds = sum((x < 0) == (d > 0) for x, d in zip(drift, mean_delta))
  return (f"- `{model}`: {rho}Where source-only ends below its probe, the mean Δ is above 0 in "
          f"{sum(d > 0 for d in below)} of {len(below)} cells; where it ends at or above it, in "
          f"{sum(d > 0 for d in above)} of {len(above)}. The sign rule (mean Δ above 0 exactly where drift is below "
          f"0) holds in {holds} of {len(cells)}.")


CONTROL = "dial.domain_labels=shuffled"


def control_lambdas(exp: ml_collections.ConfigDict) -> tuple[float, ...]:
  """The λs at which the grid runs the shuffled-domains control."""
  return tuple(sorted({float(lam) for overrides, lam in exp.variants if overrides == CONTROL}))


def control_cells(exp: ml_collections.ConfigDict, summary: dict) -> list[dict]:
  """Per setting where the shuffled-domains control and plain DIAL both ran at every grid seed and every λ of the
  grid's control: control − DIAL at each of those λs (``grid_summary.delta_interval``: paired by seed, examples
  resampled)."""
  cells = []
  for setting, s in summary.items():
    vs = {lam: s["variant_vs_dial"].get((CONTROL, lam)) for lam in control_lambdas(exp)}
    if vs and all(d is not None and len(d["seeds"]) == len(exp.seeds) for d in vs.values()):
      cells.append({"grid": grid_name(exp), "model": exp.model, "setting": setting, "vs": vs})
  return cells


def control_reading(d: dict) -> str:
  """Control − DIAL's interval below 0: DIAL beats its own push without domain information, so the labels help."""
  return "labels help" if d["hi"] < 0 else "labels hurt" if d["lo"] > 0 else "no difference"


def control_section(cells: list[dict], lambdas) -> list[str]:
  """Control − DIAL per grid, setting and λ ("not run" where a grid's control skipped that λ), and per λ how many
  cells read each way."""
  if not cells:
    return []
  fmt = lambda d: f"{d['delta']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] ({control_reading(d)})"
  lines = ["## The shuffled-domains control across grids", "",
           f"Grids that ran `{CONTROL}` (the same WDGRL push between random halves of the batch: no domain "
           "information) at every seed. Each cell: control − DIAL at the same λ, paired by seed, examples "
           "resampled. Below 0 (interval under 0): DIAL beats its own push without the domain labels, so the labels "
           "help; above 0: they hurt. Simple-to-complex is in Pearson, the rest in accuracy.", "",
           *_table_head(["grid", "setting", *(f"control − DIAL, λ={lam:g}" for lam in lambdas)])]
  for c in cells:
    lines.append(f"| {c['grid']} | {grid_summary.TITLES[c['setting']]} | "
                 + " | ".join(fmt(c["vs"][lam]) if lam in c["vs"] else "not run" for lam in lambdas) + " |")
  lines.append("")
  for model, group in _by_model(cells).items():
    for lam in lambdas:
      readings = [control_reading(c["vs"][lam]) for c in group if lam in c["vs"]]
      if readings:
        lines.append(f"- `{model}`, λ={lam:g}: the labels help in {readings.count('labels help')}, hurt in "
                     f"{readings.count('labels hurt')} and make no detectable difference in "
                     f"{readings.count('no difference')} of {len(readings)} cells.")
  return lines + [""]


def early_stop_cells(stopped: dict, reference: dict, *, num_samples: int) -> list[dict]:
  """Per setting in both summaries (a grid with ``train.keep_best`` and the same grid without it): source-only with
  and without early stopping, DIAL without it at its grid's label-free λ, and three Δs, each paired by seed with
  examples resampled (``grid_summary.delta_interval``): stopped − plain source-only (what the stop does), stopped
  source-only − plain DIAL (the stop against DIAL's gain) and stopped DIAL − stopped source-only (DIAL beyond the
  stop, at the stopped grid's label-free λ)."""
  cells = []
  for setting, s in stopped.items():
    r = reference.get(setting)
    if r is None or not s["source_only"] or not r["source_only"]:
      continue
    lam_ref, lam = r["choice"]["label_free"], s["choice"]["label_free"]
    delta = lambda a, b: grid_summary.delta_interval(a, b, s["truth"], num_samples=num_samples)
    cells.append({
        "setting": setting, "so_ref": grid_summary.stats(map(grid_summary.target_metric, r["source_only"])),
        "so": grid_summary.stats(map(grid_summary.target_metric, s["source_only"])),
        "lam_ref": lam_ref, "lam": lam,
        "stop": delta(r["source_only"], s["source_only"]),
        "stop_vs_dial": None if lam_ref is None else delta(r["dial"][lam_ref], s["source_only"]),
        "dial_beyond": None if lam is None else delta(s["source_only"], s["dial"][lam]),
    })
  return cells


def early_stop_section(pairs: list[tuple[str, str, list[dict]]]) -> list[str]:
  """One table per (stopped grid, reference grid) pair of :func:`early_stop_cells`."""
  fmt = report._fmt_delta
  lam = lambda x: "none qualifies" if x is None else f"λ={x:g}"
  lines = []
  for stopped, reference, cells in pairs:
    lines += [f"## Early stopping on the source check: {stopped} against {reference}", "",
              f"{stopped} is {reference} with `train.keep_best` (each run keeps its evaluation with the best source "
              "check: no target label). Source-only's mean ± std with and without the stop, then three Δs, each "
              "paired by seed with examples resampled: what the stop does to source-only; stopped source-only minus "
              f"{reference}'s DIAL at its label-free λ (does the stop alone match DIAL?); stopped DIAL minus stopped "
              "source-only at the stopped grid's label-free λ (does DIAL add anything beyond the stop?). Simple-to-"
              "complex is in Pearson, the rest in accuracy.", "",
              *_table_head(["setting", "source-only", "stopped", "stopped − source-only", "stopped source-only − "
                            "DIAL (λ)", "stopped DIAL − stopped source-only (λ)"])]
    for c in cells:
      lines.append(f"| {grid_summary.TITLES[c['setting']]} | {report._fmt(c['so_ref'])} | {report._fmt(c['so'])} | "
                   f"{fmt(c['stop'])} | {fmt(c['stop_vs_dial'])} ({lam(c['lam_ref'])}) | {fmt(c['dial_beyond'])} "
                   f"({lam(c['lam'])}) |")
    lines.append("")
  return lines


def render(grids: list[ml_collections.ConfigDict], controls: list[ml_collections.ConfigDict] = (), *,
           early_stops: list[tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]] = (),
           num_samples: int = grid_summary.BOOTSTRAP_SAMPLES) -> str:
  lines = [
      "# Δ intervals of every grid, with and without the training seeds resampled", "",
      f"Generated by `python -m dial_jax.experiments.intervals` from the results file and the data files. For each "
      f"grid, setting and method: Δ = DIAL − source-only on target_test at the λ each rule picks (label-free; "
      f"target_val), paired by seed. **Examples resampled** is issue 13's interval, the one every report's bars use: "
      f"the runs stay fixed and the test examples are drawn with replacement, so it says how sure these runs' Δ is "
      f"on other test examples. **Seeds and examples resampled** also draws the seeds with replacement in each of "
      f"the same example resamples (a two-level bootstrap, `selection.interval`), so it covers the spread between "
      f"training seeds too; with 5 seeds it is coarse, and it is the stricter reading. {num_samples} draws, seed "
      f"{grid_summary.BOOTSTRAP_SEED}. Variants run at every seed and λ are methods of their own (their λ chosen "
      f"by the same rules from their own runs). Then every grid's Δ beside how far its source-only runs ended from the "
      f"frozen-feature probe, where grids ran the shuffled-domains control, the control minus DIAL, and early-stopped "
      f"grids (`train.keep_best`) against the same grid without the stop.", "",
  ]
  cells = []
  lambdas = grids[0].lambdas if grids else ()
  for exp in grids:
    rows = grid_summary.grid_rows(exp, runner.read_results(exp.results))
    summary = grid_summary.summarize_grid(exp, rows, num_samples=num_samples)
    lines += grid_section(exp, rows, summary)
    if tuple(exp.lambdas) == tuple(lambdas):
      cells += drift_cells(exp, summary)
  lines += drift_section(cells, lambdas)
  control = []
  for exp in controls:
    if set(control_lambdas(exp)) <= set(lambdas):
      rows = grid_summary.grid_rows(exp, runner.read_results(exp.results))
      control += control_cells(exp, grid_summary.summarize_grid(exp, rows, num_samples=num_samples))
  pairs = []
  for stopped, reference in early_stops:
    summaries = [grid_summary.summarize_grid(e, grid_summary.grid_rows(e, runner.read_results(e.results)),
                                             num_samples=num_samples) for e in (stopped, reference)]
    pairs.append((grid_name(stopped), grid_name(reference), early_stop_cells(*summaries, num_samples=num_samples)))
  return "\n".join(lines + control_section(control, lambdas) + early_stop_section(pairs))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    grids = load_grids(FLAGS.config_file, FLAGS.presets, "presets")
    controls = load_grids(FLAGS.config_file, FLAGS.controls, "controls")
    early_stops = [tuple(load_grids(FLAGS.config_file, pair.split(":"), "early_stop")) for pair in FLAGS.early_stop]
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if any(len(pair) != 2 for pair in early_stops):
    raise app.UsageError(f"--early_stop={','.join(FLAGS.early_stop)}: give STOPPED:REFERENCE preset pairs")
  for exp in grids + controls + [e for pair in early_stops for e in pair]:
    if FLAGS.results:
      exp.results = FLAGS.results
  out = Path(FLAGS.out)
  if out.exists() and not FLAGS.overwrite and not out.read_text(encoding="utf-8").startswith(
      "# Δ intervals of every grid"):
    raise app.UsageError(f"--out={out} exists and is not a page this tool wrote; pass --overwrite to replace it")
  out.write_text(render(grids, controls, early_stops=early_stops), encoding="utf-8")
  logging.info("wrote %s (%d grids)", out, len(grids))


if __name__ == "__main__":
  from absl import app, flags
  FLAGS = flags.FLAGS
  flags.DEFINE_string("config_file", "configs/experiments.py", "Experiment grid config file.")
  flags.DEFINE_list("presets", ["default", "lpft", "lpft_all", "lpft_sp", "essays512", "lpft_sp2",
                                "smollm_sp_control"],
                    "Presets of the config file ('default': the grid without a preset).")
  flags.DEFINE_list("controls", ["lpft_sp_control", "lpft_control", "lpft_all_control", "smollm_sp_control",
                                 "lpft_sp_es_control", "lpft_sp_control_fresh"],
                    "Presets that ran the shuffled-domains control (their control minus DIAL, one section).")
  flags.DEFINE_list("early_stop", ["lpft_sp_es:lpft_sp"],
                    "STOPPED:REFERENCE preset pairs: a grid with train.keep_best against the same grid without it.")
  flags.DEFINE_string("results", None, "Results file (default: each preset's).")
  flags.DEFINE_string("out", "experiments/INTERVALS.md", "Where to write the page.")
  flags.DEFINE_bool("overwrite", False, "Replace --out even when it is not a page this tool wrote.")
  app.run(main)
