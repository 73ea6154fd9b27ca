r"""The results report (markdown + figures), built from the results file, the saved embeddings and the target_test
scores of the data files alone. Rows of other grids (another fingerprint) in the same file are ignored. The numbers
come from ``grid_summary`` and the figures from ``figures``; this module states issue 13's bars and writes the page.

  python -m dial_jax.experiments.report --config=configs/experiments.py [--results=...] [--out=experiments/REPORT.md]
"""
from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path

import ml_collections
import numpy as np
from absl import logging

from dial_jax.experiments import figures as figures_lib
from dial_jax.experiments import rows as row_format
from dial_jax.experiments import runner, selection
from dial_jax.experiments.grid_summary import (BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED, GUARDS, ORACLE_MARGIN, PAPER,
                                               RULE_NAMES, TITLES, grid_rows, mean_of, rules_in, stats,
                                               summarize_grid, target_metric)

CHANGES = (
    "**Subsets were not random.** `load_domain(limit=N)` kept the first N rows of a file sorted by id, so all 200 "
    "simple-to-complex source pairs came from one of UKPConvArg's 30 topic files. Subsets are now seeded random "
    "draws stratified by topic/group (`pipeline.subset_indices`), drawn once per setting (`data_seed`) and shared by "
    "every run.",
    "**The critic did not estimate W at this embedding scale.** With final hidden states of norm ≈ 100 the gradient "
    "penalty could not hold the linear critic near 1-Lipschitz: its slope grew to ≈ 50 and \"W\" rose in every run, "
    "source-only included, while λ·W's gradient swamped the source loss. The grid's critic now reads embeddings "
    "divided by a stop-gradient RMS of the batch (`dial.critic_input_scale=rms`), so W is in units of the embedding "
    "RMS and λ is on another scale than the paper's; the authors' unscaled critic runs as a variant at their λ "
    "(own table below). Critic slope, gradient penalty and the gradient norms of the two loss terms are logged.",
    "**The head barely moved.** The head (N(0, 0.02) init) now has its own learning rate (`train.head_learning_rate`) "
    "and the schedule is constant, as the authors', instead of a short cosine.",
    "**Truncation threw away the essays.** Long texts kept their last tokens; ASAP essays (nearly all longer than "
    "the kept length) now keep their start, as the authors did (`data.truncation=start` for simple-to-complex).",
    "**Weight decay on norm scales.** AdamW no longer decays norm scales, biases and other 1-D parameters.",
    "**LoRA init and targets** now follow PEFT (kaiming-uniform a = √5 A matrices; q and v projections). The grid "
    "does not use LoRA: it trains the top layer(s) in full on the prefix cache (`train.trainable=top_k`).",
    "**The critic no longer runs when λ is statically 0** (source-only, oracle): before, they trained a critic and "
    "added 0·W, where 0·inf = NaN would silently skip steps. Source-only rows therefore have no W history.",
    "**λ without target labels.** A DIAL user has no target labels, so the main table reports DIAL at the λ of a "
    "label-free rule (`selection.label_free_lambda`) beside the λ chosen on target_val; every λ runs for every seed "
    "and the rules pick from finished runs. The learning-rate selection of the previous report is gone (one "
    "configuration), as is the alternative-domain-loss table.",
    "**Statistical power.** More seeds per cell, larger evaluation splits, a frozen-feature baseline (logistic "
    "regression on the untrained backbone's last-token features) and a paired bootstrap interval of Δ.",
    "**Compact rows.** `experiments/results.jsonl` keeps per-example test scores exactly but compactly and each "
    "metric's first and last logged value; full step histories live in the gitignored artifacts "
    "(`dial_jax/experiments/rows.py`). Tables and intervals are the same either way (tested).",
)


# What each override a variant may set does, for the report's legend (only those the grid ran are described).
VARIANT_NOTES = {
    "dial.critic_input_scale=none": "the authors' critic on raw embeddings (the paper's λ)",
    "dial.align=pair_differences": "aligns the pairs' chosen − rejected embedding differences (both signs) instead "
                                   "of the embeddings",
    "dial.domain_loss=mmd": "replaces the critic's W by multi-kernel MMD² (no critic: its W columns hold MMD², and "
                            "its critic slope is empty)",
    "dial.domain_labels=shuffled": "the same domain loss between random halves of the batch (source and target "
                                   "rows mixed): DIAL's push with no domain information, a control",
    "dial.length_blind=true": "the domain loss sees its features without the starting model's length direction, so "
                              "the alignment cannot push along it",
    "dial.match_target_lengths=true": "the domain loss sees target pairs redrawn (label-free, by their response "
                                      "lengths) so their length gaps follow the source's",
}


def variant_legend(variant_keys) -> str:
  """One sentence per override the given variants set (a variant is ``key=value`` overrides joined by commas)."""
  overrides = sorted({o for key in variant_keys for o in key.split(",")}, key=lambda o: (o not in VARIANT_NOTES, o))
  return " ".join(f"`{o}`: {VARIANT_NOTES[o]}." if o in VARIANT_NOTES else f"`{o}`: a config override."
                  for o in overrides)

# ---------------------------------------------------------------------------------------------- verdicts


def _fmt(st, digits: int = 3) -> str:
  mean, std, n = st
  if n == 0:
    return "—"
  return f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})" if n > 1 else f"{mean:.{digits}f} (n=1)"


def _fmt_delta(d: dict | None) -> str:
  if d is None:
    return "—"
  return f"{d['delta']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] (n={len(d['seeds'])})"


def _methods(s: dict) -> list[tuple[str, dict]]:
  """DIAL, then each variant run at every seed and λ (a DIAL method of its own), with its λ choices and Δs."""
  return [("DIAL", s)] + [(f"`{v}`", m) for v, m in sorted(s["variant_methods"].items())]


def seed_interval_lines(summary: dict) -> list[str]:
  """The chosen λ's Δ under both bootstraps (examples only; seeds and examples) and per seed, for both rules, for
  DIAL and every variant that is a method of its own."""
  lines = ["| setting | method | rule | λ | Δ | examples resampled | seeds and examples resampled | Δ per seed |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for setting, s in summary.items():
    for method, m in _methods(s):
      for rule in m["choice"]:
        lam = m["choice"][rule]
        d = None if lam is None else m["deltas"].get(lam)
        if d is None:
          continue
        per_seed = ", ".join(f"{seed}: {x:+.3f}" for seed, x in zip(d["seeds"], d["per_seed"]))
        lines.append(f"| {TITLES[setting]} | {method} | {RULE_NAMES[rule]} | {lam:g} | {d['delta']:+.3f} "
                     f"(n={len(d['seeds'])}) | [{d['lo']:+.3f}, {d['hi']:+.3f}] | [{d['lo_seeds']:+.3f}, "
                     f"{d['hi_seeds']:+.3f}] | {per_seed} |")
  return lines


def seed_interval_tally(exp: ml_collections.ConfigDict, summary: dict) -> str:
  """In how many settings DIAL's chosen-λ interval with the seeds resampled too is above 0 (full cells only)."""
  parts = []
  for rule in rules_in(summary):
    above = []
    for setting, s in summary.items():
      lam = s["choice"].get(rule)
      d = None if lam is None else s["deltas"].get(lam)
      if d is not None and len(d["seeds"]) == len(exp.seeds) and d["lo_seeds"] > 0:
        above.append(TITLES[setting].split(" (")[0])
    parts.append(f"{len(above)}/{len(exp.settings)} settings with the {RULE_NAMES[rule]} λ"
                 + (f" ({', '.join(above)})" if above else ""))
  return ("Not one of issue 13's bars: with the training seeds resampled too, DIAL's Δ interval is above 0 in "
          + "; ".join(parts) + ".")


def bars(exp: ml_collections.ConfigDict, s: dict) -> list[tuple[str, str, str]]:
  """Issue 13's "Done means" bars for one setting: (bar, status, evidence); status is one of "met", "not met",
  "not enough runs yet" (a cell has fewer runs than the grid's seeds; the evidence then shows the numbers so far)."""
  seeds = len(exp.seeds)
  so = stats(target_metric(r) for r in s["source_only"])
  out = []

  def status(ok: bool, cells: dict[str, int]) -> str:
    missing = {k: n for k, n in cells.items() if n < seeds}
    if missing:
      return "not enough runs yet"
    return "met" if ok else "not met"

  def counts(cells):
    return ", ".join(f"{k} n={n}/{seeds}" for k, n in cells.items())

  for rule in s["choice"]:
    lam = s["choice"][rule]
    name = f"DIAL ({RULE_NAMES[rule]} λ) mean above source-only"
    cells = {"source-only": so[2]} | {f"DIAL λ={k:g}": len(s["dial"].get(k, [])) for k in exp.lambdas}
    if lam is None:
      why = f"no λ qualifies ({GUARDS[rule]})" if s["dial"] else "no DIAL runs yet"
      st = status(False, cells)
      out.append((name, st, f"{why}; {counts(cells)}"))
      out.append((f"Δ interval ({RULE_NAMES[rule]} λ) excludes 0 above", st, why))
      continue
    di = stats(target_metric(r) for r in s["dial"][lam])
    out.append((name, status(di[0] > so[0], cells),
                f"λ={lam:g}: {di[0]:.3f} vs {so[0]:.3f} (Δ of means {di[0] - so[0]:+.3f}; {counts(cells)})"))
    d = s["deltas"].get(lam)
    name = f"Δ interval ({RULE_NAMES[rule]} λ) excludes 0 above"
    if d is None:
      out.append((name, "not enough runs yet", "no seed with test scores in both"))
    else:
      side = "above 0" if d["lo"] > 0 else ("below 0" if d["hi"] < 0 else "includes 0")
      out.append((name, status(d["lo"] > 0, {**cells, "paired seeds": len(d["seeds"])}),
                  f"{_fmt_delta(d)}: {side}"))
  orc = stats(target_metric(r) for r in s["oracle"])
  margin = ORACLE_MARGIN[s["metric"]]
  name = f"oracle ≥ source-only + {margin:g}"
  if not orc[2] or not so[2]:
    out.append((name, "not enough runs yet", f"oracle n={orc[2]}, source-only n={so[2]}"))
  else:
    out.append((name, status(orc[0] >= so[0] + margin, {"oracle": orc[2], "source-only": so[2]}),
                f"{orc[0]:.3f} vs {so[0]:.3f} + {margin:g} = {so[0] + margin:.3f} (oracle n={orc[2]}, "
                f"source-only n={so[2]})"))
  frozen = [target_metric(r) for r in s["frozen_source"]]
  name = "source-only ≥ frozen-feature source baseline"
  if not frozen or not so[2]:
    out.append((name, "not enough runs yet", f"frozen baseline {'present' if frozen else 'missing'}, "
                                             f"source-only n={so[2]}"))
  else:
    out.append((name, status(so[0] >= frozen[0], {"source-only": so[2]}),
                f"{so[0]:.3f} vs {frozen[0]:.3f} (source-only n={so[2]})"))
  return out


def variant_bars(exp: ml_collections.ConfigDict, summary: dict) -> list[str]:
  """Issue 13's bars again for each variant run at every seed and lambda, with it in DIAL's place (its lambda chosen
  by the same two rules from its own runs; source-only, oracle and the frozen baselines are the grid's)."""
  lines = []
  for variant in sorted({v for s in summary.values() for v in s["variant_methods"]}):
    swapped = {setting: {**s, **s["variant_methods"][variant]} for setting, s in summary.items()
               if variant in s["variant_methods"]}
    picked = "; ".join(f"{TITLES[k]}: " + ", ".join(
        f"{RULE_NAMES[r]} λ={'none' if v['choice'][r] is None else format(v['choice'][r], 'g')}" for r in v["choice"])
        for k, v in swapped.items())
    lines += ["", f"Issue 13's bars with `{variant}` in DIAL's place ({picked}):", ""] + overall(exp, swapped)
  return lines


def _bold(word: str) -> str:
  """'**not met** (fails in: ...)' from 'not met (fails in: ...)'."""
  head, sep, tail = word.partition(" (")
  return f"**{head}**" + (f" ({tail}" if sep else "")


def overall(exp: ml_collections.ConfigDict, summary: dict) -> list[str]:
  """The bars across settings, as issue 13 states them, under each selection rule. A bar that needs every setting
  fails once one setting fails; one that needs two settings fails once too few settings can still meet it."""
  pending = "not enough runs yet"
  status = {s: bars(exp, summary[s]) for s in summary}
  n = len(exp.settings)

  def tally(prefix, need):
    got = [next((st for name, st, _ in status[s] if name.startswith(prefix)), pending) if s in status else pending
           for s in exp.settings]
    met, open_ = got.count("met"), got.count(pending)
    word = "met" if met >= need else ("not met" if met + open_ < need else pending)
    failed = [TITLES[s].split(" (")[0] for s, st in zip(exp.settings, got) if st == "not met"]
    return met, word + (f" (fails in: {', '.join(failed)})" if failed else "")

  lines = []
  for rule in rules_in(summary):
    r = RULE_NAMES[rule]
    m1, w1 = tally(f"DIAL ({r} λ) mean above source-only", n)
    m2, w2 = tally(f"Δ interval ({r} λ) excludes 0 above", 2)
    lines.append(f"- {r} λ: DIAL's mean above source-only in {m1}/{n} settings (bar: all) — {_bold(w1)}; "
                 f"Δ interval above 0 in {m2}/{n} (bar: ≥ 2) — {_bold(w2)}.")
  for prefix, name in (("oracle ≥", "oracle ≥ source-only + margin"),
                       ("source-only ≥ frozen", "source-only ≥ frozen-feature baseline")):
    met, word = tally(prefix, n)
    lines.append(f"- {name}: {met}/{n} settings — {_bold(word)}.")
  missing = [s for s in exp.settings if s not in summary]
  if missing:
    lines.append(f"- No runs yet for: {', '.join(missing)}.")
  return lines

# ---------------------------------------------------------------------------------------------- markdown


def _methods_text(exp: ml_collections.ConfigDict, summary: dict) -> list[str]:
  t = exp.train_config
  head_lr = t.train.head_learning_rate or t.train.learning_rate
  lines = [
      "## How the runs were made", "",
      f"- Backbone: bundled `{exp.model}`; only the top {exp.top_layers} layer(s), the final norm and the reward head "
      "train (all their weights); the layers below are frozen and their outputs cached once per text "
      "(`dial_jax/experiments/prefix_cache.py`, exact: `tests/test_experiments.py`).",
      f"- {t.train.num_steps} steps of {t.train.batch_size} pairs per domain, {t.train.optimizer} (weight decay "
      + (f"{t.train.weight_decay:g} toward each trained parameter's start, norms and head included: L2-SP, "
         "`train.weight_decay_target=start`)" if t.train.weight_decay_target == "start" else
         f"{t.train.weight_decay} on matrices only)")
      + f", learning rate {t.train.learning_rate:g} (head "
      f"{head_lr:g}), {t.train.lr_schedule} schedule after {t.train.warmup_steps} warm-up steps, gradient clip "
      f"{t.train.max_grad_norm}. Head init: "
      + ("the frozen-feature probe of the run's labelled pairs (source; target for the oracle), then fine-tuned "
         "(LP-FT, `model.head_init=probe`)." if t.model.head_init == "probe" else
         "N(0, 0.02) from the seed.")
      + (f" The probe's L2 is fixed at {t.model.probe_l2:g} (`model.probe_l2`; the frozen-feature baselines still "
         "choose theirs on the validation split)." if t.model.head_init == "probe" and t.model.probe_l2 else ""),
      f"- Critic: widths {tuple(t.dial.critic_widths)}, activation {t.dial.critic_activation}, input scale "
      f"`{t.dial.critic_input_scale}`, {t.dial.critic_iter} critic steps per step, γ {t.dial.gamma}, Adam lr "
      f"{t.dial.critic_learning_rate:g}. Not run when λ is statically 0 (source-only, oracle).",
  ] + ([
      f"- Early stopping (`train.keep_best`): every trained run (oracle included) is evaluated every "
      f"{t.train.eval_every} steps and at its end, and keeps the parameters of the evaluation with the best source "
      "check (source_val; few-shot: the source training pairs), never target labels; every number below is that "
      "model's (the steps kept: the table after the held-out gap)."] if t.train.get("keep_best") else []) + [
      f"- Seeds {tuple(exp.seeds)} (head init, batch order, critic init) for source-only, DIAL at every λ in "
      f"{tuple(exp.lambdas)}, and oracle (target labels); frozen-feature baselines are deterministic (one run). "
      + (f"Variants {', '.join(f'`{v}` at λ={lam:g}' for v, lam in exp.variants)} at seeds "
         f"{tuple(exp.variant_seeds)}." if exp.variants else "No variants."),
      "- Frozen-feature baselines: L2-regularised pairwise logistic regression on the untrained model's last-token "
      "features (chosen − rejected), fitted on the source pairs (frozen source) or on the target train pairs "
      "(frozen oracle).",
      f"- Splits: seeded group-stratified subsets (data seed {exp.data_seed}, limits "
      + ", ".join(f"{k} {v}" for k, v in exp.limits.items()) + "), drawn once per setting and shared by every run. "
      "Sizes actually used, and inputs:", "",
      "| setting | source train | source val | target train | target val | target test | max length | truncation "
      "| runs done |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for setting, s in summary.items():
    z = s["sizes"]
    lines.append(f"| {TITLES[setting]} | " + " | ".join(str(z.get(k, "—")) for k in runner.SPLITS)
                 + f" | {s['max_length']} | keep the {'start' if s['truncation'] == 'start' else 'end'} | "
                 f"{s['done']}/{s['expected']} |")
  lines += ["", "Sizes are pairs (texts with a score for ASAP's target splits). Few-shot has no source validation "
            "split; its source check reads the source training pairs.", ""]
  return lines


def _compute_text(summary: dict, rows: list[dict]) -> list[str]:
  lines = ["## Compute", "",
           "| setting | prefix cache (s, once) | frozen baseline (s/run) | source-only train (s/run) | DIAL train "
           "(s/run) | oracle train (s/run) | all runs (min) | non-finite steps skipped |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for setting, s in summary.items():
    mine = s["rows"]

    def per(mode, key="train_seconds"):
      v = [r[key] for r in mine if r["mode"] == mode and r.get(key) is not None]
      return f"{np.mean(v):.0f} (n={len(v)})" if v else "—"

    cache = "—" if s["cache_seconds"] is None else f"{s['cache_seconds']:.0f}"
    lines.append(f"| {TITLES[setting]} | {cache} | {per('frozen_source', 'seconds')} | {per('source_only')} | "
                 f"{per('dial')} | {per('oracle')} | {sum(r['seconds'] for r in mine) / 60:.1f} | "
                 f"{sum(int(r.get('nonfinite_steps') or 0) for r in mine)} |")
  lines += ["", "Train seconds include compilation and the final evaluation on every split; frozen baselines: "
            f"features, fit and evaluation. {len(rows)} runs in all; machine: "
            f"{platform.machine()} CPU, {os.cpu_count()} cores; report written {time.strftime('%Y-%m-%d')}.", ""]
  return lines


HELDOUT_RULE_TEXT = (
    " **label-free (held-out gap)** — the first rule with \"W falls\" replaced by \"the mean held-out domain gap "
    "is below source-only's\" (fixed before the runs that test it; the gap: `inference.heldout_gap`, section below).")


def render(exp: ml_collections.ConfigDict, summary: dict, rows: list[dict], figures: dict[str, str]) -> str:
  fp = runner.grid_fingerprint(exp)
  commits = sorted({r.get("commit", "?") for r in rows})
  lines = [
      "# Quality: DIAL vs source-only on the four settings (CPU reproduction)", "",
      f"Generated by `python -m dial_jax.experiments.report` from `{exp.results}` (the {len(rows)} rows of grid "
      f"`{fp}`; rows of other grids in the file are ignored; commits {', '.join(commits) or '—'}). Every number "
      "below comes from those rows, the saved embeddings and the data files, except the paper's and the "
      "history told in the last section.", "",
  ]
  if not summary:
    lines += [f"No runs of this grid in `{exp.results}` yet.", ""]
  lines += _methods_text(exp, summary)
  rules = rules_in(summary)

  lines += [
      "## Target test metric", "",
      "Mean ± sample std over seeds (n = runs). DIAL is shown at the λ each rule picks from finished runs "
      "(`dial_jax/experiments/selection.py`): **label-free** — the largest λ whose mean source-check metric stays "
      "within one SE of source-only's while W falls during training (no target labels: what a DIAL user can do); "
      "**target_val** — the best mean target_val metric (needs target labels; a reference). Δ = DIAL − source-only "
      f"with its paired bootstrap 95 % interval (runs paired by seed, target_test examples resampled, "
      f"{BOOTSTRAP_SAMPLES} draws, seed {BOOTSTRAP_SEED}; accuracy of margins for pairs, Pearson with the true "
      "scores for ASAP). The paper's numbers (its own backbone and training budget) are for reference only."
      + (HELDOUT_RULE_TEXT if "label_free_heldout" in rules else ""), "",
      "| setting | metric | frozen source | source-only | "
      + " | ".join(f"DIAL, {RULE_NAMES[r]} λ | Δ {RULE_NAMES[r]} [95 %]" for r in rules)
      + " | oracle | frozen oracle | paper src → DIAL |",
      "| --- | --- | --- | --- | " + "--- | --- | " * len(rules) + "--- | --- | --- |",
  ]
  for setting, s in summary.items():
    cells = [TITLES[setting], s["metric"], _fmt(stats(target_metric(r) for r in s["frozen_source"])),
             _fmt(stats(target_metric(r) for r in s["source_only"]))]
    for rule in rules:
      lam = s["choice"].get(rule)
      if rule not in s["choice"]:
        cells += ["—", "—"]
      elif lam is None:
        cells += ["no λ qualifies" if s["dial"] else "—", "—"]
      else:
        cells += [f"λ={lam:g}: {_fmt(stats(target_metric(r) for r in s['dial'][lam]))}",
                  _fmt_delta(s["deltas"].get(lam))]
    cells += [_fmt(stats(target_metric(r) for r in s["oracle"])),
              _fmt(stats(target_metric(r) for r in s["frozen_oracle"])),
              f"{PAPER[setting][0]:.3f} → {PAPER[setting][1]:.3f}"]
    lines.append("| " + " | ".join(cells) + " |")
  bad = [b for s in summary.values() for b in s["bad_scores"]]
  if bad:
    lines += ["", f"Runs left out of the Δ intervals because their test scores do not reproduce their recorded "
              f"metric (or the true scores are missing): {', '.join(bad)}."]
  seeds_table = seed_interval_lines(summary)
  if len(seeds_table) > 2:
    lines += ["", "### Δ with the training seeds resampled too", "",
              "The intervals above resample target_test examples and keep the runs fixed, as issue 13 defines them: "
              "they say how sure these runs' Δ is on other test examples, not how DIAL compares with source-only "
              "over other training seeds. The two-level bootstrap here also draws the seeds with replacement in "
              f"each resample (the same example draws; `selection.interval`). With {len(exp.seeds)} seeds it is "
              "coarse; it is the stricter reading. The bars below use the first interval.", ""] + seeds_table
  if figures.get("target"):
    lines += ["", f"![target metric per setting and method]({figures['target']})", "",
              "Bars: mean over seeds; error bars: sample std over seeds (none when n=1); black triangles "
              "right of the source-only and DIAL bars: the paper's numbers; dotted line: chance (0.5 accuracy, "
              "0 Pearson)."]

  lines += ["", "## Issue 13's bars", "", "Across settings:", ""] + overall(exp, summary)
  if summary:
    lines.append("- " + seed_interval_tally(exp, summary))
  lines += ["", "Per setting:", ""]
  for setting, s in summary.items():
    lines.append(f"- **{TITLES[setting]}**")
    for name, st, evidence in bars(exp, s):
      lines.append(f"  - {name}: **{st}** — {evidence}.")

  lines += ["", "## What each selection rule saw (per λ)", "",
            "Means over seeds. Source check: source_val accuracy (few-shot: source_train), the label-free rule's "
            "guard; bar = source-only's mean − 1 SE. W and critic slope: the last logged training window; "
            "'W falls' = share of seeds whose last-window W is below the first window's. Balance: mean ratio of "
            "‖∇ λ·domain‖ to ‖∇ BT‖ in the last window.", "",
            "| setting | run | n | target_val | target_test | source check | W first → last | W falls | critic slope "
            "| balance | chosen by |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for setting, s in summary.items():
    so = s["source_only"]
    if so:
      split, p, se = selection.source_check(so)
      val = mean_of(so, lambda r: selection.metric_of(r["eval"]["target_val"]))
      lines.append(f"| {TITLES[setting]} | source-only | {len(so)} | {val:.3f} | {mean_of(so, target_metric):.3f} | "
                   f"{split} {p:.3f} (bar {p - se:.3f}) | — | — | — | — | |")
      check = split
    else:
      check = None
    for lam, runs in sorted(s["dial"].items()):
      lines.append(f"| {TITLES[setting]} | DIAL λ={lam:g} | " + " | ".join(_lambda_cells(runs, check)) + " | "
                   + ", ".join(RULE_NAMES[r] for r in s["choice"] if s["choice"][r] == lam) + " |")

  lines += heldout_section(summary)
  lines += kept_step_lines(summary)

  variants = [(setting, k, v) for setting, s in summary.items() for k, v in s["variants"].items()]
  lines += ["", "## Variants", ""]
  if variants:
    lines += ["Same columns, plus Δ vs source-only over the seeds both have (paired bootstrap), and the variant "
              "minus plain DIAL at the same λ and seeds (— where DIAL has no runs at that λ). "
              + variant_legend(key for _, (key, _), _ in variants)
              + " A variant run at every seed and λ of the grid gets its λ chosen by both rules (last column) and the "
              "bars below.", "",
              "| setting | variant | λ | n | target_val | target_test | source check | W first → last | W falls | "
              "critic slope | balance | Δ vs source-only [95 %] | variant − DIAL, same λ [95 %] | chosen by |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for setting, (variant, lam), runs in variants:
      so = summary[setting]["source_only"]
      check = selection.source_check(so)[0] if so else None
      method = summary[setting]["variant_methods"].get(variant)
      chosen = ", ".join(RULE_NAMES[r] for r in (method or {}).get("choice", {}) if method["choice"][r] == lam)
      lines.append(f"| {TITLES[setting]} | `{variant}` | {lam:g} | " + " | ".join(_lambda_cells(runs, check))
                   + f" | {_fmt_delta(summary[setting]['variant_deltas'][(variant, lam)])} "
                   f"| {_fmt_delta(summary[setting]['variant_vs_dial'].get((variant, lam)))} | {chosen} |")
    lines += variant_bars(exp, summary)
  else:
    lines.append("No variant runs yet.")

  lines += ["", "## Loss balance", ""]
  if figures.get("balance"):
    lines += [f"![loss balance]({figures['balance']})", "",
              "Top: gradient norms (with respect to the batch's last-token embeddings, which the head reads "
              "linearly) of the Bradley-Terry term and of the λ·domain term, averaged per "
              f"{exp.train_config.train.log_every}-step window and over seeds, for DIAL at the label-free λ "
              "(target_val's where no λ qualifies) and source-only. Middle: the critic's slope ‖∇f‖ (the gradient "
              "penalty pulls it to 1). Bottom: the critic's W estimate on the training batches, every λ.", ""]
  else:
    lines += [f"Not drawn: no run's step history here (the runner keeps each run's history under "
              f"`{exp.artifacts_dir}/history/`, gitignored; rows made before `history_curves` was added keep only "
              "its first and last values).", ""]

  if figures.get("embeddings"):
    emb = figures["embeddings_info"]
    counts = "; ".join(f"{a} source-train and {b} target-val texts" for a, b in emb["counts"])
    lines += ["## Embeddings", "", f"![embeddings before/after training]({figures['embeddings']})", "",
              f"{TITLES[exp.embedding_setting]}, seed 0: {counts} per panel (chosen responses for pairs); panels: "
              f"{', '.join(emb['panels'])}. One PCA basis fitted on all panels' points, the same axes in every "
              "panel.", ""]
  else:
    lines += ["## Embeddings", "", f"Not drawn: no saved embeddings under `{exp.artifacts_dir}` for "
              f"{exp.embedding_setting} (the runner saves them for seed 0).", ""]

  lines += _compute_text(summary, rows)
  preset = exp.get("preset", "")
  config_arg = "configs/experiments.py" + (f":{preset}" if preset else "")
  lines += ["## What changed since the last report, and why", ""]
  if preset:
    lines += [f"The fixes below made the default grid; what the `:{preset}` preset changes from it is in "
              "`configs/experiments.py` and the discussion below.", ""]
  lines += [f"{i}. {c}" for i, c in enumerate(CHANGES, 1)]
  lines += ["", "Reproduce: `python -m dial_jax.prepare --raw_dir=../shared/data/raw --out_dir=data`, then "
            f"`python -m dial_jax.experiments --config={config_arg} --report=PATH` (resumes; skips finished runs), "
            f"and `python -m dial_jax.experiments.report --config={config_arg} --out=PATH` to rebuild this page."]
  return "\n".join(lines) + "\n"


def heldout_section(summary: dict) -> list[str]:
  """Per setting and run kind, the held-out domain gap of the final embeddings (rows that measured it only)."""
  if not any(selection.heldout_gap(r) is not None for s in summary.values() for r in s["rows"]):
    return []
  lines = ["", "## The held-out domain gap", "",
           "Measured once each run ends (`inference.heldout_gap`, labels unused): the final embeddings of every text "
           "of the source check split (source_val; few-shot: source_train) against target_val, in units of their "
           "pooled RMS norm. Gap: the distance between the two means, what a converged 1-Lipschitz linear critic "
           "estimates (the label-free held-out rule reads it); MMD²: multi-kernel Gaussian. Frozen: the untrained "
           "model. Mean ± sample std over seeds.", "",
           "| setting | run | gap | MMD² | chosen by |", "| --- | --- | --- | --- | --- |"]
  for setting, s in summary.items():
    kinds = [("frozen", s["frozen_source"], None), ("source-only", s["source_only"], None)]
    kinds += [(f"DIAL λ={lam:g}", runs, lam) for lam, runs in sorted(s["dial"].items())]
    for name, runs, lam in kinds + [("oracle", s["oracle"], None)]:
      gaps = [r["heldout_gap"] for r in runs if selection.heldout_gap(r) is not None]
      if not gaps:
        continue
      picked = lam is not None and s["choice"].get("label_free_heldout") == lam
      chosen = RULE_NAMES["label_free_heldout"] if picked else ""
      lines.append(f"| {TITLES[setting]} | {name} | {_fmt(stats(g['mean'] for g in gaps))} | "
                   f"{_fmt(stats(g['mmd'] for g in gaps), 4)} | {chosen} |")
  return lines + heldout_curve_lines(summary)


def heldout_curve_lines(summary: dict) -> list[str]:
  """The held-out gap at every evaluation during training (rows with ``heldout_gap_curve``: ``train.eval_every``),
  per setting and run kind, mean over seeds; step 0 is the untrained model (the frozen baselines' gap). Then the
  source check's and target_test's metric at the same evaluations (``eval_curve``), which a rule that stops early
  on the gap would trade against each other."""
  curved = lambda runs: [r for r in runs if r.get("heldout_gap_curve")]
  if not any(curved(s["rows"]) for s in summary.values()):
    return []
  steps = sorted({t for s in summary.values() for r in curved(s["rows"]) for t, _ in r["heldout_gap_curve"]["mean"]})
  header = ["| setting | run | n | " + " | ".join(["0"] + [str(t) for t in steps]) + " |",
            "| --- | --- | --- | " + " | ".join("---" for _ in range(len(steps) + 1)) + " |"]

  def table(points_of, start_of) -> list[str]:
    lines = []
    for setting, s in summary.items():
      kinds = [("source-only", s["source_only"])]
      kinds += [(f"DIAL λ={lam:g}", runs) for lam, runs in sorted(s["dial"].items())] + [("oracle", s["oracle"])]
      for name, runs in kinds:
        at = [{int(t): v for t, v in points} for r in curved(runs) if (points := points_of(r))]
        if not at:
          continue
        start = start_of(s)
        cells = [f"{start:.3f}" if start is not None else "—"]
        cells += [f"{np.mean([a[t] for a in at]):.3f}" if all(t in a for a in at) else "—" for t in steps]
        lines.append(f"| {TITLES[setting]} | {name} | {len(at)} | " + " | ".join(cells) + " |")
    return lines

  def untrained_gap(s):
    gaps = [selection.heldout_gap(r) for r in s["frozen_source"] if selection.heldout_gap(r) is not None]
    return float(np.mean(gaps)) if gaps else None

  check = lambda r: r.get("eval_curve", {}).get(selection.source_check_split(r))
  return (["", "### The held-out gap during training", "",
           "The same gap measured at every evaluation (`train.eval_every`), on the model as it was at that step: "
           "does the alignment DIAL trains for on its batches reach texts it never trains on, and does it last? "
           "Mean over seeds (n); step 0 is the untrained model.", ""] + header
          + table(lambda r: r["heldout_gap_curve"]["mean"], untrained_gap)
          + ["", "The source check's metric (source_val; few-shot: source_train) and target_test's at the same "
             "evaluations (step 0 not measured: —). Reported, never used to choose anything.", "",
             "Source check:", ""] + header + table(check, lambda _: None)
          + ["", "Target test:", ""] + header
          + table(lambda r: r.get("eval_curve", {}).get("target_test"), lambda _: None))


def kept_step_lines(summary: dict) -> list[str]:
  """Per setting and run kind, the step each run kept (``train.keep_best``: its best source check), seed by seed."""
  kept = lambda runs: sorted((r["seed"], r["kept_step"]) for r in runs if "kept_step" in r)
  if not any(kept(s["rows"]) for s in summary.values()):
    return []
  lines = ["", "## Steps kept by early stopping", "",
           "The evaluation each run kept (`train.keep_best`: the best source check; ties keep the earlier step), "
           "per seed, and their mean.", "", "| setting | run | n | mean | step per seed |", "| --- | --- | --- | --- "
           "| --- |"]
  for setting, s in summary.items():
    kinds = [("source-only", s["source_only"])]
    kinds += [(f"DIAL λ={lam:g}", runs) for lam, runs in sorted(s["dial"].items())] + [("oracle", s["oracle"])]
    for name, runs in kinds:
      if at := kept(runs):
        lines.append(f"| {TITLES[setting]} | {name} | {len(at)} | {np.mean([k for _, k in at]):.0f} | "
                     + ", ".join(f"{seed}: {k}" for seed, k in at) + " |")
  return lines


def _lambda_cells(runs: list[dict], check: str | None) -> list[str]:
  first = mean_of(runs, lambda r: selection.domain_gap(r, 0))
  last = mean_of(runs, lambda r: selection.domain_gap(r))
  falls = [selection.w_falls(r) for r in runs]

  def num(x, digits=3):
    return "—" if not math.isfinite(x) else f"{x:.{digits}f}"

  def sig(x):
    return "—" if not math.isfinite(x) else f"{x:.3g}"

  src = num(mean_of(runs, lambda r: selection.metric_of(r["eval"][check]) if check in r["eval"] else None))
  return [str(len(runs)), num(mean_of(runs, lambda r: selection.metric_of(r["eval"]["target_val"]))),
          num(mean_of(runs, target_metric)), src, f"{num(first, 2)} → {num(last, 2)}", f"{sum(falls)}/{len(falls)}",
          sig(mean_of(runs, lambda r: row_format.history_value(r, "critic_slope"))),
          sig(mean_of(runs, selection.balance))]

def default_path(exp: ml_collections.ConfigDict) -> Path:
  """Where a grid's report goes unless told: beside its results file, in a folder named after its preset
  (``experiments/REPORT.md`` for the default grid, ``experiments/lpft_sp/REPORT.md`` for ``:lpft_sp``), so running one
  preset never overwrites another's report and figures."""
  folder = Path(exp.results).parent
  preset = exp.get("preset", "")
  return folder / preset / "REPORT.md" if preset else folder / "REPORT.md"


def write_report(exp: ml_collections.ConfigDict, path: str, *, num_samples: int = BOOTSTRAP_SAMPLES) -> str:
  """Write the report of the rows made under ``exp``'s grid (other rows in the file are ignored) and its figures
  (``figures/`` beside ``path``); returns the markdown."""
  rows = [row_format.with_history(r, exp.artifacts_dir) for r in grid_rows(exp, runner.read_results(exp.results))]
  path = Path(path)
  fig_dir = path.parent / "figures"
  fig_dir.mkdir(parents=True, exist_ok=True)
  summary = summarize_grid(exp, rows, num_samples=num_samples)
  figures = {}
  if summary:
    figures_lib.target_figure(summary, fig_dir / "target_metric.png")
    figures["target"] = "figures/target_metric.png"
    if figures_lib.balance_figure(summary, fig_dir / "loss_balance.png"):
      figures["balance"] = "figures/loss_balance.png"
    info = figures_lib.embedding_figure(exp, summary, fig_dir / "embeddings.png")
    if info:
      figures["embeddings"], figures["embeddings_info"] = "figures/embeddings.png", info
  text = render(exp, summary, rows, figures)
  notes = path.parent / "NOTES.md"
  if notes.exists():  # hand-written discussion, kept apart from the generated numbers
    text += f"\n## Discussion (hand-written, `{notes.as_posix()}`)\n\n" + notes.read_text(encoding="utf-8")
  path.write_text(text, encoding="utf-8")
  logging.info("wrote %s (%d rows of grid %s)", path, len(rows), runner.grid_fingerprint(exp))
  return text


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  exp = FLAGS.config
  if FLAGS.results:
    exp.results = FLAGS.results
  write_report(exp, FLAGS.out or str(default_path(exp)))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  FLAGS = flags.FLAGS
  config_flags.DEFINE_config_file("config", "configs/experiments.py", "Experiment grid config.", lock_config=False)
  flags.DEFINE_string("results", "", "Results file (default: the config's `results`).")
  flags.DEFINE_string("out", "", "Output markdown file (figures go to figures/ beside it; default: the preset's "
                      "own, experiments/<preset>/REPORT.md, experiments/REPORT.md for the default grid).")
  flags.DEFINE_alias("report", "out")
  app.run(main)
