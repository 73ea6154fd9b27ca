"""The experiment report on synthetic rows: table numbers, both lambda choices, the paired bootstrap, the bars,
figures, and rows of other grids ignored."""
import json
from pathlib import Path

import numpy as np
import pytest

from configs import experiments
from dial_jax.data import pipeline
from dial_jax.experiments import figures, grid_summary, report, runner, selection
from tests import helpers

N_PAIRS, N_ESSAYS, FILE_ESSAYS = 200, 30, 45
# Per setting: target_test accuracy (few_shot) / Pearson (simple_to_complex) per seed of each method, and the
# target_val / source-check numbers that decide the lambda choices.
TEST = {
    "few_shot": {"source_only": (0.60, 0.62, 0.64), "dial1": (0.62, 0.64, 0.66), "dial10": (0.70, 0.72, 0.74),
                 "oracle": (0.72, 0.74, 0.76), "frozen_source": (0.55,), "frozen_oracle": (0.65,)},
    "simple_to_complex": {"source_only": (0.30, 0.32, 0.34), "dial1": (0.29, 0.31, 0.33),
                          "dial10": (0.50, 0.52, 0.54), "oracle": (0.36, 0.38, 0.40), "frozen_source": (0.40,),
                          "frozen_oracle": (0.45,)},
}
# few_shot: both lambdas pass the source check, so label-free takes the largest (10); target_val prefers 1.
# simple_to_complex: lambda 10 breaks the source check, so label-free takes 1; target_val prefers 10.
VAL = {"few_shot": {"dial1": 0.70, "dial10": 0.65}, "simple_to_complex": {"dial1": 0.40, "dial10": 0.45}}
SRC = {"few_shot": {"source_only": 0.90, "dial1": 0.90, "dial10": 0.89},
       "simple_to_complex": {"source_only": 0.90, "dial1": 0.90, "dial10": 0.70}}


def _exp(tmp_path):
  exp = experiments.get_config()
  exp.settings = ("few_shot", "simple_to_complex")
  exp.seeds, exp.lambdas = (0, 1, 2), (1.0, 10.0)
  exp.variants, exp.variant_seeds = (("dial.critic_input_scale=none", 0.01),), (0, 1)
  exp.limits.target_test = N_ESSAYS
  exp.data_dir, exp.results, exp.artifacts_dir = str(tmp_path / "data"), str(tmp_path / "r.jsonl"), str(tmp_path / "a")
  return exp


def _essays(exp, rng):
  """A scored target_test file with more essays than the limit, so the runner's subset is a real draw."""
  path = Path(exp.data_dir) / "simple_to_complex" / "target_test.jsonl"
  path.parent.mkdir(parents=True, exist_ok=True)
  rows = [{"id": f"asap-{i:03d}", "text": f"essay {i}", "score": float(rng.integers(0, 13)),
           "group": f"set{i % 3}"} for i in range(FILE_ESSAYS)]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def _margins(acc, n, rng):
  """Margins of n pairs with exactly round(acc * n) positive."""
  k = int(round(acc * n))
  m = np.concatenate([rng.uniform(0.1, 2, k), -rng.uniform(0.1, 2, n - k)])
  return rng.permutation(m)


def _rewards(r, truth, rng):
  """Rewards whose Pearson with ``truth`` is about ``r`` (the exact value is what the row records)."""
  z = (truth - truth.mean()) / truth.std()
  noise = rng.standard_normal(len(truth))
  noise -= noise.mean()
  noise -= z * (noise @ z) / (z @ z)
  noise /= noise.std()
  return r * z + np.sqrt(1 - r * r) * noise


def _key(spec):
  if spec.mode == "dial" and not spec.variant:
    return f"dial{spec.lambda_:g}"
  return "dial1" if spec.variant else spec.mode


def _history(setting, spec):
  steps = (10, 20, 30)
  rows = []
  for i, step in enumerate(steps):
    h = {"step": step, "loss": 1.0 - 0.1 * i, "balance/source_grad_norm": 1.0 / (i + 1)}
    if spec.mode == "dial":
      h.update({"wasserstein": 2.0 - 0.5 * i, "critic_slope": 1.0 + 0.01 * i,
                "balance/domain_grad_norm": 0.1 * spec.lambda_ / (i + 1)})
    rows.append(h)
  return rows


def make_rows(exp, truth, seed=0):
  """One row per run of ``exp``'s grid, with test_scores that reproduce the recorded metrics."""
  rng = np.random.default_rng(seed)
  rows = []
  for setting in exp.settings:
    pairs = setting == "few_shot"
    check = "source_train" if pairs else "source_val"
    for spec in runner.grid(exp, setting):
      key = _key(spec)
      test = TEST[setting][key][spec.seed]
      if pairs:
        scores = _margins(test, N_PAIRS, rng)
        tt = {"accuracy": selection.accuracy_of_margins(scores), "n": N_PAIRS, "chance": 0.5}
      else:
        scores = _rewards(test, truth, rng)
        tt = {"pearson": float(np.corrcoef(scores, truth)[0, 1]), "n": N_ESSAYS, "chance": 0.0}
      name = "accuracy" if pairs else "pearson"
      val = VAL[setting].get(key, 0.6)
      row = {"run_id": spec.run_id, "setting": setting, "mode": spec.mode, "domain_loss": spec.domain_loss,
             "lambda": spec.lambda_, "learning_rate": spec.learning_rate, "seed": spec.seed, "variant": spec.variant,
             "eval": {"target_test": tt, "target_val": {name: val, "n": 100},
                      check: {"accuracy": SRC[setting].get(key, 0.9), "n": 100}},
             "test_scores": [float(x) for x in scores], "history": _history(setting, spec),
             "data_sizes": {"source_train": 400, "target_train": 400, "target_val": 100,
                            "target_test": N_PAIRS if pairs else N_ESSAYS},
             "cache_seconds": 60.0, "train_seconds": 20.0, "seconds": 21.0, "grid": runner.grid_fingerprint(exp),
             "commit": "abc1234"}
      rows.append(row)
  return rows


@pytest.fixture
def grid(tmp_path):
  exp = _exp(tmp_path)
  rng = np.random.default_rng(1)
  _essays(exp, rng)
  truth = grid_summary.target_test_truth(exp, "simple_to_complex")
  rows = make_rows(exp, truth)
  # Rows of an older grid: other numbers, another setting; must not count.
  stale = [dict(r, grid="0ld0ld0ld0ld", eval={**r["eval"], "target_test": {"accuracy": 0.99, "n": 8}})
           for r in rows if r["setting"] == "few_shot" and r["mode"] == "source_only"]
  stale.append(dict(stale[0], setting="cross_lingual", run_id="cross_lingual/x"))
  # A run of this grid's fingerprint that this preset does not declare (another preset's extra seed): left out too.
  extra = next(r for r in rows if r["setting"] == "few_shot" and r["mode"] == "source_only")
  stale.append(dict(extra, seed=7, run_id=extra["run_id"].replace("seed=0", "seed=7")))
  for r in rows + stale:
    runner.append_result(exp.results, r)
  return exp, rows, truth


def test_truth_is_the_subset_load_domain_draws(tmp_path):
  """The ASAP target_test scores the report pairs with the rewards are load_domain's seeded stratified subset."""
  exp = _exp(tmp_path)
  path = _essays(exp, np.random.default_rng(3))

  class Tok:
    bos_token_id = 1

    def __call__(self, texts, **_):
      return {"input_ids": [[1] + [2 + ord(c) % 50 for c in t[:6]] for t in texts]}

  domain = pipeline.load_domain(path, Tok(), 16, limit=N_ESSAYS, seed=exp.data_seed)
  truth = grid_summary.target_test_truth(exp, "simple_to_complex")
  assert len(truth) == N_ESSAYS < FILE_ESSAYS
  np.testing.assert_array_equal(truth, domain.scores)
  all_scores = np.asarray([json.loads(line)["score"] for line in path.read_text().splitlines()], np.float32)
  assert not np.array_equal(truth, all_scores[:N_ESSAYS])  # a real draw, not the first rows
  assert grid_summary.target_test_truth(exp, "few_shot") is None  # no file (and pairs have no scores)


def test_summary_numbers_choices_and_other_grids_ignored(grid):
  exp, rows, truth = grid
  got = grid_summary.grid_rows(exp, runner.read_results(exp.results))
  assert len(got) == len(rows) and all(r["setting"] != "cross_lingual" for r in got)
  summary = grid_summary.summarize(exp, got, {"simple_to_complex": truth}, num_samples=200)
  assert list(summary) == ["few_shot", "simple_to_complex"]
  assert summary["few_shot"]["choice"] == {"label_free": 10.0, "target_val": 1.0}
  assert summary["simple_to_complex"]["choice"] == {"label_free": 1.0, "target_val": 10.0}
  for setting, s in summary.items():
    for method in ("source_only", "oracle"):
      mean, std, n = grid_summary.stats(grid_summary.target_metric(r) for r in s[method])
      want = np.asarray(TEST[setting][method])
      assert n == 3 and mean == pytest.approx(want.mean(), abs=2e-3) and std == pytest.approx(want.std(ddof=1),
                                                                                                 abs=3e-3)
    assert (s["done"], s["expected"]) == (2 + 3 * 4 + 2, 2 + 3 * 4 + 2)
    assert not s["bad_scores"]
    # Δ under each rule: the point estimate is the mean over seeds of the paired metric differences.
    for rule in s["choice"]:
      lam = s["choice"][rule]
      d = s["deltas"][lam]
      want = np.mean([grid_summary.target_metric(b) - grid_summary.target_metric(a)
                      for a, b in zip(s["source_only"], s["dial"][lam])])
      assert d["seeds"] == [0, 1, 2] and d["delta"] == pytest.approx(want, abs=1e-6) and d["lo"] < d["delta"] < d["hi"]
  # The stale 0.99 source-only rows of the old grid did not enter the mean.
  assert max(grid_summary.target_metric(r) for r in summary["few_shot"]["source_only"]) < 0.7


def test_heldout_rule_column_and_section_only_where_runs_measured_the_gap(grid, tmp_path):
  """Rows with a held-out gap get the third rule (its own main-table columns, bars and gap table); the grid's other
  rows, made before the gap was measured, keep the two-rule report (checked by the test above)."""
  exp, rows, truth = grid
  gap = {"source_only": 0.50, "dial1": 0.45, "dial10": 0.55, "oracle": 0.60, "frozen_source": 0.40}
  gapped = [dict(r, heldout_gap={"mean": gap.get(_key_of(r), 0.7), "mmd": 0.01, "n_source": 200, "n_target": 200,
                                 "source_split": "source_val", "target_split": "target_val"}) for r in rows]
  summary = grid_summary.summarize(exp, gapped, {"simple_to_complex": truth}, num_samples=200)
  # few-shot: both λ pass the source check, but only λ=1 ends below source-only's gap; simple-to-complex: λ=10 fails
  # the source check and λ=1 is below.
  assert summary["few_shot"]["choice"] == {"label_free": 10.0, "label_free_heldout": 1.0, "target_val": 1.0}
  assert summary["simple_to_complex"]["choice"]["label_free_heldout"] == 1.0
  text = report.render(exp, summary, gapped, {})
  assert "| DIAL, label-free (held-out gap) λ | Δ label-free (held-out gap) [95 %] |" in text
  fs = next(line for line in text.splitlines() if line.startswith("| few-shot-to-full (TL;DR) | accuracy |"))
  assert fs.count("|") == 14  # 13 columns: two more than the two-rule table
  assert "DIAL (label-free (held-out gap) λ) mean above source-only: **met** — λ=1:" in text
  section = text.split("## The held-out domain gap")[1].split("## Variants")[0]
  assert "| few-shot-to-full (TL;DR) | source-only | 0.500 ± 0.000 (n=3) |" in section
  assert "| few-shot-to-full (TL;DR) | DIAL λ=1 | 0.450 ± 0.000 (n=3) | 0.0100 ± 0.0000 (n=3) | label-free (held-out " \
         "gap) |" in section
  assert "| few-shot-to-full (TL;DR) | frozen | 0.400 (n=1) |" in section
  plain = grid_summary.summarize(exp, rows, {"simple_to_complex": truth}, num_samples=50)
  assert "## The held-out domain gap" not in report.render(exp, plain, rows, {})


def _key_of(row):
  return _key(runner.RunSpec(row["setting"], row["mode"], row["domain_loss"], row["lambda"], row["learning_rate"],
                             row["seed"], row["variant"]))


def test_report_text_bars_and_figures(grid, tmp_path):
  exp, rows, truth = grid
  art = {}
  for spec in runner.grid(exp, "few_shot"):
    if spec.seed == 0 and spec.mode in ("source_only", "dial", "oracle") and not spec.variant:
      rng = np.random.default_rng(len(art))
      art[spec.run_id] = runner.embeddings_path(exp, spec)
      art[spec.run_id].parent.mkdir(parents=True, exist_ok=True)
      np.savez(art[spec.run_id], before_source_train=rng.standard_normal((12, 16)),
               before_target_val=rng.standard_normal((9, 16)) + 1, after_source_train=rng.standard_normal((12, 16)),
               after_target_val=rng.standard_normal((9, 16)) + 0.5)
  out = tmp_path / "rep" / "REPORT.md"
  text = report.write_report(exp, str(out), num_samples=200)
  assert out.read_text() == text
  for name in ("target_metric", "loss_balance", "embeddings"):
    assert (out.parent / "figures" / f"{name}.png").stat().st_size > 5000
    assert f"figures/{name}.png" in text
  assert "12 source-train and 9 target-val texts" in text
  assert "cross-lingual" not in text.split("## What changed")[0]  # the stale grid's setting
  fs = [line for line in text.splitlines() if line.startswith("| few-shot-to-full (TL;DR) | accuracy |")]
  assert len(fs) == 1
  so = np.asarray(TEST["few_shot"]["source_only"])
  assert f"| {so.mean():.3f} ± {so.std(ddof=1):.3f} (n=3) |" in fs[0]
  d10 = np.asarray(TEST["few_shot"]["dial10"])
  assert f"| λ=10: {d10.mean():.3f} ± {d10.std(ddof=1):.3f} (n=3) |" in fs[0]
  assert "| 0.550 (n=1) |" in fs[0] and "0.845 → 0.920" in fs[0]
  bars = text.split("## Issue 13's bars")[1].split("## What each")[0]
  few, s2c = bars.split("**few-shot-to-full (TL;DR)**")[1].split("**simple-to-complex (UKPConvArg -> ASAP)**")
  assert "DIAL (label-free λ) mean above source-only: **met** — λ=10: 0.720 vs 0.620" in few
  assert "Δ interval (label-free λ) excludes 0 above: **met**" in few
  assert "oracle ≥ source-only + 0.05: **met**" in few
  assert "source-only ≥ frozen-feature source baseline: **met** — 0.620 vs 0.550" in few
  assert "DIAL (label-free λ) mean above source-only: **not met** — λ=1:" in s2c
  assert "Δ interval (label-free λ) excludes 0 above: **not met**" in s2c
  assert "DIAL (target_val λ) mean above source-only: **met** — λ=10:" in s2c
  assert "oracle ≥ source-only + 0.1: **not met**" in s2c
  assert "source-only ≥ frozen-feature source baseline: **not met** — 0.320 vs 0.400" in s2c
  assert "label-free λ: DIAL's mean above source-only in 1/2 settings (bar: all) — **not met** (fails in: " \
         "simple-to-complex)" in bars
  assert "target_val λ: DIAL's mean above source-only in 2/2 settings (bar: all) — **met**" in bars
  # The same Δ with the seeds resampled too: its own table (same Δ and examples-only interval as the main table,
  # per-seed Δs from the rows) and a tally that is not one of the bars.
  d = grid_summary.delta_interval(*[[r for r in rows if r["setting"] == "few_shot" and not r["variant"] and
                               r["mode"] == m and r["lambda"] == lam] for m, lam in (("source_only", 0.0),
                                                                                     ("dial", 10.0))], None,
                            num_samples=200)
  seeds_table = text.split("### Δ with the training seeds resampled too")[1].split("## Issue 13's bars")[0]
  assert (f"| few-shot-to-full (TL;DR) | DIAL | label-free | 10 | {d['delta']:+.3f} (n=3) | [{d['lo']:+.3f}, "
          f"{d['hi']:+.3f}] | [{d['lo_seeds']:+.3f}, {d['hi_seeds']:+.3f}] |") in seeds_table
  assert f"{d['lo']:+.3f}, {d['hi']:+.3f}] (n=3)" in fs[0]
  assert np.allclose(d["per_seed"], np.subtract(TEST["few_shot"]["dial10"], TEST["few_shot"]["source_only"]),
                     atol=0.01)
  assert "Not one of issue 13's bars: with the training seeds resampled too" in bars
  per_lambda = text.split("## What each selection rule saw")[1].split("## Variants")[0]
  assert "| few-shot-to-full (TL;DR) | DIAL λ=10 | 3 | 0.650 | 0.720 | 0.890 | 2.00 → 1.00 | 3/3 | 1.02 | 1 " \
         "| label-free |" in per_lambda
  assert "source_val 0.900 (bar " in per_lambda
  variants = text.split("## Variants")[1].split("## Loss balance")[0]
  assert variants.count("`dial.critic_input_scale=none` | 0.01 | 2 |") == 2
  # The legend describes the variants this grid ran, and only those.
  assert "`dial.critic_input_scale=none`: the authors' critic on raw embeddings" in variants
  assert "MMD" not in variants and "pair_differences" not in variants and "domain_labels" not in variants
  assert "`python -m dial_jax.experiments --config=configs/experiments.py --report=PATH`" in text
  assert "preset changes" not in text
  exp.preset = "lpft"  # a preset grid's page names the preset in its rerun commands
  text = report.write_report(exp, str(tmp_path / "lpft" / "REPORT.md"), num_samples=20)
  assert "`python -m dial_jax.experiments.report --config=configs/experiments.py:lpft --out=PATH`" in text
  assert "what the `:lpft` preset changes from it" in text


def test_missing_seeds_are_not_enough_runs(grid, tmp_path):
  exp, rows, truth = grid
  few = lambda r: r["setting"] == "few_shot"
  rows = [r for r in rows if not (few(r) and r["mode"] == "oracle" and r["seed"] == 2)]
  summary = grid_summary.summarize(exp, rows, {"simple_to_complex": truth}, num_samples=50)
  got = {name: st for name, st, _ in report.bars(exp, summary["few_shot"])}
  assert got["oracle ≥ source-only + 0.05"] == "not enough runs yet"
  assert got["source-only ≥ frozen-feature source baseline"] == "met"
  rows = [r for r in rows if not (few(r) and r["mode"] == "dial" and r["seed"] == 1 and r["lambda"] == 1.0)]
  summary = grid_summary.summarize(exp, rows, {"simple_to_complex": truth}, num_samples=50)
  got = {name: st for name, st, _ in report.bars(exp, summary["few_shot"])}
  assert got["DIAL (label-free λ) mean above source-only"] == "not enough runs yet"  # λ=1's seeds still missing
  lines = report.overall(exp, summary)
  # simple-to-complex already fails the label-free bar; target_val's can still be met once few-shot's seeds are in.
  assert "label-free λ: DIAL's mean above source-only in 0/2 settings (bar: all) — **not met**" in lines[0]
  assert "target_val λ: DIAL's mean above source-only in 1/2 settings (bar: all) — **not enough runs yet**" in lines[1]
  assert lines[2] == "- oracle ≥ source-only + margin: 0/2 settings — **not met** (fails in: simple-to-complex)."
  assert lines[3] == ("- source-only ≥ frozen-feature baseline: 1/2 settings — **not met** (fails in: "
                      "simple-to-complex).")
  exp.settings = exp.settings + ("cross_lingual",)  # a setting without runs
  assert report.overall(exp, summary)[-1] == "- No runs yet for: cross_lingual."


def test_a_variant_at_every_seed_and_lambda_is_chosen_and_barred_as_dial(tmp_path):
  """A variant run at every grid seed and lambda gets its lambda chosen by both rules from its own runs and the bars
  with it in DIAL's place; one run at fewer seeds (the authors' critic above) does not."""
  exp = _exp(tmp_path)
  exp.variants = tuple(("dial.align=pair_differences", lam) for lam in exp.lambdas)
  exp.variant_seeds = exp.seeds
  _essays(exp, np.random.default_rng(1))
  truth = grid_summary.target_test_truth(exp, "simple_to_complex")
  for r in make_rows(exp, truth):  # every variant run has dial1's numbers (see _key)
    runner.append_result(exp.results, r)
  summary = grid_summary.summarize(exp, grid_summary.grid_rows(exp, runner.read_results(exp.results)),
                             {"simple_to_complex": truth}, num_samples=100)
  for setting in exp.settings:
    method = summary[setting]["variant_methods"]["dial.align=pair_differences"]
    # Both lambdas pass the source check with W falling, so label-free takes the larger; target_val ties -> smaller.
    assert method["choice"] == {"label_free": 10.0, "target_val": 1.0}
    assert set(method["deltas"]) == {1.0, 10.0}
  # Against plain DIAL at the same lambda: the variant has dial1's numbers, so at lambda 10 it is 0.64 - 0.72 in
  # few-shot (every seed), and exactly plain DIAL at lambda 1.
  vs = summary["few_shot"]["variant_vs_dial"]
  assert vs[("dial.align=pair_differences", 10.0)]["delta"] == pytest.approx(-0.08, abs=1e-9)
  assert vs[("dial.align=pair_differences", 1.0)]["delta"] == 0
  text = report.write_report(exp, str(tmp_path / "rep" / "REPORT.md"), num_samples=100)
  variants = text.split("## Variants")[1].split("## Loss balance")[0]
  assert "| `dial.align=pair_differences` | 10 | 3 |" in variants and variants.count("| label-free |") == 2
  assert "`dial.align=pair_differences`: aligns the pairs' chosen − rejected" in variants
  assert "critic_input_scale" not in variants
  line = next(x for x in variants.splitlines() if x.startswith("| few-shot-to-full (TL;DR) | `dial.align=pair_"
                                                               "differences` | 10 |"))
  assert line.endswith(" (n=3) | label-free |") and "| -0.080 [" in line
  swapped = variants.split("Issue 13's bars with `dial.align=pair_differences` in DIAL's place")[1]
  assert "few-shot-to-full (TL;DR): label-free λ=10, target_val λ=1" in swapped
  # dial1's numbers: above source-only in few-shot (0.64 vs 0.62), below it in simple-to-complex (0.31 vs 0.32).
  assert "label-free λ: DIAL's mean above source-only in 1/2 settings (bar: all) — **not met** (fails in: " \
         "simple-to-complex)" in swapped
  exp.variant_seeds = (0, 1)  # fewer seeds than the grid: listed per lambda only
  summary = grid_summary.summarize(exp, grid_summary.grid_rows(exp, runner.read_results(exp.results)),
                             {"simple_to_complex": truth}, num_samples=10)
  assert summary["few_shot"]["variant_methods"] == {}


def test_bootstrap_contains_true_delta_and_is_reproducible():
  """Paired accuracy differences drawn with a true gain of 0.08: the interval covers it and excludes 0; the same
  seed gives the same interval, another seed another one."""
  rng = np.random.default_rng(0)
  n, true_delta = 400, 0.08
  so, di = [], []
  for seed in range(3):
    base = rng.random(n) < 0.6
    gain = rng.random(n) < true_delta / 0.4  # flips wrong -> right on ~20% of the wrong ones
    margins_so = np.where(base, 1.0, -1.0)
    margins_di = np.where(base | gain, 1.0, -1.0)
    so.append({"seed": seed, "eval": {"target_test": {"accuracy": selection.accuracy_of_margins(margins_so)}},
               "test_scores": margins_so.tolist()})
    di.append({"seed": seed, "eval": {"target_test": {"accuracy": selection.accuracy_of_margins(margins_di)}},
               "test_scores": margins_di.tolist()})
  d = grid_summary.delta_interval(so, di, None, num_samples=1000)
  assert d["lo"] <= true_delta <= d["hi"] and d["lo"] > 0
  assert grid_summary.delta_interval(so, di, None, num_samples=1000) == d
  other = grid_summary.delta_interval(so, di, None, num_samples=1000, seed=1)
  assert other["delta"] == d["delta"] and (other["lo"], other["hi"]) != (d["lo"], d["hi"])
  # Only seeds present in both pair up; a run whose scores contradict its recorded metric is left out.
  assert grid_summary.delta_interval(so[:2], di[1:], None, num_samples=10)["seeds"] == [1]
  bad = [dict(di[0], eval={"target_test": {"accuracy": 0.1}})] + di[1:]
  assert grid_summary.delta_interval(so, bad, None, num_samples=10)["seeds"] == [1, 2]


def test_report_on_partial_grids(grid, tmp_path):
  """A grid still running: the report is written from any prefix of the runner's order (the first setting's frozen
  baselines only, part of a first setting, part of a second) and says what is missing."""
  exp, rows, truth = grid
  texts = {}
  for k in (1, 7, 20):
    path = tmp_path / f"r{k}.jsonl"
    for r in rows[:k]:
      runner.append_result(path, r)
    exp.results = str(path)
    texts[k] = report.write_report(exp, str(tmp_path / f"rep{k}" / "REPORT.md"), num_samples=20)
    assert f"(the {k} rows of grid" in texts[k] and "not enough runs yet" in texts[k]
    assert (tmp_path / f"rep{k}" / "figures" / "target_metric.png").exists()
  assert "No runs yet for: simple_to_complex" in texts[7] and "No runs yet for" not in texts[20]


def test_two_grids_never_share_an_embeddings_file():
  """Run ids repeat across grids (same setting, mode, lambda, seed), so the saved embeddings are kept per grid."""
  from configs import experiments
  spec = runner.RunSpec("few_shot", "dial", "wdgrl", 10.0, 5e-5, 0)
  presets = ("", "lpft", "lpft_all", "lpft_sp", "lpft_sp2", "essays512")
  paths = {runner.embeddings_path(experiments.get_config(arg), spec) for arg in presets}
  assert len(paths) == len(presets)


def test_each_preset_writes_its_own_report_by_default(tmp_path):
  """Running a preset (CI's :quick included) must not overwrite the default grid's committed report and figures."""
  from configs import experiments
  paths = {arg: report.default_path(experiments.get_config(arg)) for arg in ("", *experiments.PRESETS)}
  assert paths[""] == Path("experiments/REPORT.md")
  assert paths["lpft_sp_control"] == Path("experiments/lpft_sp_control/REPORT.md")
  assert paths["lpft_control"] == Path("experiments/lpft_control/REPORT.md")
  assert paths["smollm_sp_control"] == Path("experiments/smollm_sp_control/REPORT.md")
  assert paths["smollm_fresh"] == Path("experiments/smollm_fresh/REPORT.md")
  assert paths["lpft_sp"] == Path("experiments/lpft_sp/REPORT.md")
  assert paths["lpft_sp10"] == Path("experiments/lpft_sp10/REPORT.md")
  assert paths["quick"] == Path("experiments/quick/REPORT.md")
  assert len(set(paths.values())) == len(paths)
  exp = experiments.get_config("quick")
  exp.results = str(tmp_path / "r" / "results.jsonl")
  assert report.default_path(exp) == tmp_path / "r" / "quick" / "REPORT.md"


def test_balance_curves_count_only_runs_that_kept_their_history():
  """Legends say how many runs a curve averages: a row whose history file is gone (e.g. a run made on a machine
  whose gitignored artifacts were lost) is not counted, and runs are averaged on their common steps."""
  rows = [{"history": [{"step": 10, "w": 1.0}, {"step": 20, "w": 3.0}]},
          {"history": [{"step": 10, "w": 3.0}, {"step": 20, "w": 5.0}, {"step": 30, "w": 9.0}]},
          {"history": []}, {}]
  steps, mean, n = figures._curve(rows, "w")
  assert n == 2 and steps.tolist() == [10, 20] and mean.tolist() == [2.0, 4.0]
  assert figures._curve([{}, {"history": []}], "w") is None


def test_intervals_page_covers_every_grid_and_never_overwrites_a_foreign_file(grid, tmp_path):
  """The all-grids page: each grid's section with both intervals (the same as its report's), the default grid under
  its own name, a grid without rows said to have none; the CLI refuses to replace a file it did not write."""
  from dial_jax.experiments import intervals
  exp, rows, truth = grid
  exp.preset = ""
  empty = _exp(tmp_path / "other")
  empty.preset = "lpft"
  text = intervals.render([exp, empty], num_samples=200)
  so = [r for r in rows if r["setting"] == "simple_to_complex" and r["mode"] == "source_only"]
  d1 = [r for r in rows if r["setting"] == "simple_to_complex" and r["mode"] == "dial" and r["lambda"] == 1.0
        and not r["variant"]]
  d = grid_summary.delta_interval(so, d1, truth, num_samples=200)
  assert "## the default grid (grid `" in text and "## `:lpft` (grid `" in text
  assert (f"| simple-to-complex (UKPConvArg -> ASAP) | DIAL | label-free | 1 | {d['delta']:+.3f} (n=3) "
          f"| [{d['lo']:+.3f}, {d['hi']:+.3f}] | [{d['lo_seeds']:+.3f}, {d['hi_seeds']:+.3f}] |") in text
  assert "No runs of this grid in" in text.split("`:lpft`")[1]
  # The cross-grid section: source-only's drift from its probe beside DIAL's Δ (few-shot: source-only 0.62 against
  # a probe of 0.55; DIAL 0.64 at λ 1 and 0.72 at λ 10, the label-free choice); too few cells for a correlation.
  drift = text.split("## DIAL's Δ against source-only's distance")[1]
  assert "| default | few-shot-to-full (TL;DR) | +0.070 | +0.020 | +0.100 | +0.100 (λ=10) |" in drift
  assert "Spearman" not in drift
  # Each backbone is summed up on its own (a second backbone is the out-of-sample check of the first one's
  # pattern): m1's four cells follow the sign rule, m2's two cells break it once.
  cells = [{"grid": "g", "model": "m1", "setting": "few_shot", "drift": x, "delta": {1.0: -x, 10.0: -2 * x},
            "label_free": None} for x in (-0.1, -0.05, 0.05, 0.1)]
  cells += [{"grid": "h", "model": "m2", "setting": "few_shot", "drift": x, "delta": {1.0: d, 10.0: d},
             "label_free": None} for x, d in ((-0.1, 0.02), (0.05, 0.03))]
  lines = "\n".join(intervals.drift_section(cells, (1.0, 10.0)))
  assert ("- `m1`: Spearman ρ between drift and the mean Δ over λ: -1.00 (n = 4 cells). Where source-only ends "
          "below its probe, the mean Δ is above 0 in 2 of 2 cells; where it ends at or above it, in 0 of 2. The sign "
          "rule (mean Δ above 0 exactly where drift is below 0) holds in 4 of 4.") in lines
  assert ("- `m2`: 2 cell(s), too few for a correlation. Where source-only ends below its probe, the mean Δ is above "
          "0 in 1 of 1 cells; where it ends at or above it, in 1 of 1. The sign rule (mean Δ above 0 exactly where "
          "drift is below 0) holds in 1 of 2.") in lines
  assert "| g | few-shot-to-full (TL;DR) | -0.100 | +0.100 | +0.200 | none qualifies |" in lines
  helpers.assert_page_cli_keeps_a_foreign_file("dial_jax.experiments.intervals", tmp_path, "--presets=quick", f"--results={exp.results}")


def test_intervals_page_sums_up_the_shuffled_control_per_lambda(tmp_path):
  """The control section: control − DIAL per grid, setting and λ with its reading, and per λ how many cells read each
  way. The control runs carry dial1's numbers (see _key): at λ 1 it equals DIAL's mean in few-shot; at λ 10 it is
  0.08 below DIAL (DIAL beats its domain-free push: the labels help). A grid without the control adds no cell."""
  from dial_jax.experiments import intervals
  exp = _exp(tmp_path)
  exp.preset = "ctl"
  exp.variants = tuple((intervals.CONTROL, lam) for lam in exp.lambdas)
  exp.variant_seeds = exp.seeds
  _essays(exp, np.random.default_rng(1))
  truth = grid_summary.target_test_truth(exp, "simple_to_complex")
  rows = make_rows(exp, truth)
  for r in rows:
    runner.append_result(exp.results, r)
  plain = _exp(tmp_path)
  plain.preset = ""
  text = intervals.render([plain], [exp, plain], num_samples=200)
  legend = report.write_report(exp, str(tmp_path / "ctl" / "REPORT.md"), num_samples=20).split("## Variants")[1]
  assert "`dial.domain_labels=shuffled`: the same domain loss between random halves of the batch" in legend
  section = text.split("## The shuffled-domains control across grids")[1]
  readings = {}
  for setting in exp.settings:
    for lam in exp.lambdas:
      dial = [r for r in rows if r["setting"] == setting and r["mode"] == "dial" and r["lambda"] == lam]
      d = grid_summary.delta_interval([r for r in dial if not r["variant"]],
                                [r for r in dial if r["variant"] == intervals.CONTROL],
                                None if setting == "few_shot" else truth, num_samples=200)
      readings[setting, lam] = intervals.control_reading(d)
      assert f"{d['delta']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] ({readings[setting, lam]})" in section
  assert readings["few_shot", 1.0] == "no difference" and readings["few_shot", 10.0] == "labels help"
  assert section.count("| `:ctl` |") == 2 and "| default |" not in section
  for lam in exp.lambdas:
    got = [readings[s, lam] for s in exp.settings]
    assert (f"- `{exp.model}`, λ={lam:g}: the labels help in {got.count('labels help')}, hurt in "
            f"{got.count('labels hurt')} and make no detectable difference in {got.count('no difference')} of 2 "
            "cells.") in section
  assert "shuffled-domains control" not in intervals.render([plain], [plain], num_samples=50).split("## DIAL's Δ")[1]
  # Two backbones: one tally each, never summed together.
  cells = [{"grid": "g", "model": "m1", "setting": "few_shot", "vs": {1.0: {"delta": -0.1, "lo": -0.2, "hi": -0.05}}},
           {"grid": "h", "model": "m2", "setting": "few_shot", "vs": {1.0: {"delta": 0.0, "lo": -0.1, "hi": 0.1}}}]
  tally = "\n".join(intervals.control_section(cells, (1.0,)))
  assert "- `m1`, λ=1: the labels help in 1, hurt in 0 and make no detectable difference in 0 of 1 cells." in tally
  assert "- `m2`, λ=1: the labels help in 0, hurt in 0 and make no detectable difference in 1 of 1 cells." in tally
  # A grid whose control skipped a λ: "not run" in its cell, and that λ's tally counts only the grids that ran it.
  cells.append({"grid": "k", "model": "m1", "setting": "few_shot", "vs": {10.0: {"delta": 0.2, "lo": 0.1, "hi": 0.3}}})
  section = intervals.control_section(cells, (1.0, 10.0))
  assert "| k | few-shot-to-full (TL;DR) | not run | +0.200 [+0.100, +0.300] (labels hurt) |" in section
  assert "- `m1`, λ=1: the labels help in 1, hurt in 0 and make no detectable difference in 0 of 1 cells." in section
  assert "- `m1`, λ=10: the labels help in 0, hurt in 1 and make no detectable difference in 0 of 1 cells." in section
  assert not any(line.startswith("- `m2`, λ=10") for line in section)


def test_fresh_seed_presets_share_their_grid_but_not_its_runs():
  """``:smollm_fresh`` and ``:lpft_sp_fresh`` reuse their base grid's fingerprint (so its frozen probes, seed 0, are
  reused) and declare only new seeds for the trained runs, so neither report counts the other's runs."""
  from configs import experiments
  for fresh, base_preset in (("smollm_fresh", "smollm_sp_control"), ("lpft_sp_fresh", "lpft_sp")):
    a, b = experiments.get_config(fresh), experiments.get_config(base_preset)
    assert runner.grid_fingerprint(a) == runner.grid_fingerprint(b)
    ids = lambda exp: {s.run_id for setting in exp.settings for s in runner.grid(exp, setting)}
    shared = ids(a) & ids(b)
    assert shared and all("/frozen_" in i for i in shared), sorted(shared)[:3]
    assert not a.variants and set(a.seeds).isdisjoint(b.seeds)


def test_ten_seed_preset_is_lpft_sp_and_lpft_sp_fresh_plain_runs():
  """``:lpft_sp10`` declares exactly the plain runs of ``:lpft_sp`` (seeds 0-4) and ``:lpft_sp_fresh`` (5-9): no new
  run, no variant, the same fingerprint (so one report reads both presets' rows)."""
  from configs import experiments
  specs = lambda exp: [s for setting in exp.settings for s in runner.grid(exp, setting)]
  ten, base, fresh = (experiments.get_config(p) for p in ("lpft_sp10", "lpft_sp", "lpft_sp_fresh"))
  assert runner.grid_fingerprint(ten) == runner.grid_fingerprint(base) == runner.grid_fingerprint(fresh)
  plain_base = {s.run_id for s in specs(base) if not s.variant}
  assert {s.run_id for s in specs(ten)} == plain_base | {s.run_id for s in specs(fresh)}
  assert len(specs(ten)) == 4 * (2 + 10 * 5)  # per setting: two frozen probes, then 10 seeds x (SO, 3 lambdas, oracle)


def test_methods_state_a_fixed_probe_l2():
  """A grid whose LP-FT head starts at a probe of fixed L2 (``model.probe_l2``) says so; one that chooses it on the
  validation split says nothing of it."""
  from configs import experiments
  fixed, chosen = experiments.get_config("lpft_sp_l2"), experiments.get_config("lpft_sp")
  sentence = "The probe's L2 is fixed at 0.001 (`model.probe_l2`"
  assert sentence in "\n".join(report._methods_text(fixed, {}))
  assert "`model.probe_l2`" not in "\n".join(report._methods_text(chosen, {}))


def test_lpft_sp_l2wd_differs_from_lpft_sp_l2_only_in_the_decay_and_settings():
  """:lpft_sp_l2wd is :lpft_sp_l2's regime with weight decay 100 toward the start, on all four settings: its own grid
  (new fingerprint, new rows), whose prefix caches are :lpft_sp_l2's."""
  from configs import experiments
  wd, l2 = experiments.get_config("lpft_sp_l2wd"), experiments.get_config("lpft_sp_l2")
  assert wd.train_config.train.weight_decay == 100.0 and l2.train_config.train.weight_decay == 1000.0
  assert wd.train_config.train.weight_decay_target == "start" and wd.train_config.model.probe_l2 == 1e-3
  assert sorted(wd.settings) == sorted(experiments.get_config("lpft_sp").settings) and not wd.variants
  assert runner.grid_fingerprint(wd) != runner.grid_fingerprint(l2)
  wd.train_config.train.weight_decay, wd.settings = 1000.0, l2.settings
  assert runner.grid_fingerprint(wd) == runner.grid_fingerprint(l2)


def test_methods_say_where_the_weight_decay_pulls():
  """A grid that decays toward the start (L2-SP, every trained parameter) says so; AdamW's decay toward zero is on
  matrices only (the norm mask)."""
  from configs import experiments
  toward_start = "\n".join(report._methods_text(experiments.get_config("lpft_sp"), {}))
  toward_zero = "\n".join(report._methods_text(experiments.get_config("lpft"), {}))
  assert "weight decay 1000 toward each trained parameter's start" in toward_start
  assert "on matrices only" not in toward_start
  assert "weight decay 0.01 on matrices only" in toward_zero and "toward each" not in toward_zero


def test_lpft_sp_gapcurve_is_lpft_sp_measuring_the_heldout_gap_during_training():
  """:lpft_sp_gapcurve evaluates every 40 steps (so its rows keep the held-out gap's curve): otherwise :lpft_sp's
  regime, so its own grid only through the evaluations."""
  from configs import experiments
  curve, base = experiments.get_config("lpft_sp_gapcurve"), experiments.get_config("lpft_sp")
  assert curve.train_config.train.eval_every == 40 and base.train_config.train.eval_every == 0
  assert runner.grid_fingerprint(curve) != runner.grid_fingerprint(base)
  curve.train_config.train.eval_every = 0
  assert runner.grid_fingerprint(curve) == runner.grid_fingerprint(base)


def test_lpft_sp_es_is_lpft_sp_keeping_the_best_source_check():
  """:lpft_sp_es evaluates every 20 steps and keeps each run's best source check (train.keep_best): otherwise
  :lpft_sp's regime, data and lambdas, so only those two keys (and the dropped variants) make it a grid of its own."""
  from configs import experiments
  es, base = experiments.get_config("lpft_sp_es"), experiments.get_config("lpft_sp")
  assert es.train_config.train.keep_best and es.train_config.train.eval_every == 20
  assert not base.train_config.train.keep_best
  assert set(es.settings) == set(base.settings) and es.lambdas == base.lambdas and es.seeds == base.seeds
  assert runner.grid_fingerprint(es) != runner.grid_fingerprint(base)
  es.train_config.train.eval_every, es.train_config.train.keep_best = 0, False
  es.settings, es.variants, es.variant_seeds = base.settings, base.variants, base.variant_seeds
  assert runner.grid_fingerprint(es) == runner.grid_fingerprint(base)


def test_lpft_sp_es_control_shares_lpft_sp_es_rows_and_adds_only_the_shuffled_control():
  """The control preset reuses :lpft_sp_es's committed runs (same fingerprint) and runs only the shuffled-domains
  variant, early-stopped like them, at every seed and lambda of its three settings."""
  from configs import experiments
  es, ctl = experiments.get_config("lpft_sp_es"), experiments.get_config("lpft_sp_es_control")
  assert runner.grid_fingerprint(ctl) == runner.grid_fingerprint(es)
  assert ctl.settings == ("simple_to_complex", "cross_lingual", "clean_to_noisy")
  assert ctl.variants == tuple(("dial.domain_labels=shuffled", lam) for lam in es.lambdas)
  assert ctl.variant_seeds == es.seeds and ctl.train_config.train.keep_best


def test_kept_steps_table_and_methods_line_for_early_stopped_grids():
  """Grids with ``train.keep_best`` say so in the methods and list each run's kept step; others show neither."""
  from configs import experiments
  so = [{"seed": 0, "kept_step": 40}, {"seed": 1, "kept_step": 20}]
  dial = [{"seed": 1, "kept_step": 200}, {"seed": 0, "kept_step": 100}]
  summary = {"cross_lingual": {"rows": so + dial, "source_only": so, "dial": {10.0: dial}, "oracle": []}}
  lines = report.kept_step_lines(summary)
  assert "| cross-lingual (HH EN -> KO) | source-only | 2 | 30 | 0: 40, 1: 20 |" in lines
  assert "| cross-lingual (HH EN -> KO) | DIAL λ=10 | 2 | 150 | 0: 100, 1: 200 |" in lines
  assert not any("oracle" in line for line in lines[5:])
  assert report.kept_step_lines({"cross_lingual": {**summary["cross_lingual"], "rows": [{"seed": 0}]}}) == []
  es = "\n".join(report._methods_text(experiments.get_config("lpft_sp_es"), {}))
  assert "Early stopping (`train.keep_best`): every trained run (oracle included) is evaluated every 20 steps" in es
  assert "Early stopping" not in "\n".join(report._methods_text(experiments.get_config("lpft_sp"), {}))


def test_intervals_page_compares_an_early_stopped_grid_with_the_same_grid_without_it(tmp_path):
  """The early-stop section pairs by seed: the stopped grid's source-only against the reference's source-only and
  against the reference's DIAL at the reference's label-free λ, and the stopped grid's DIAL at its own label-free λ
  against its source-only. Here the stopped source-only runs carry the stopped DIAL λ=10 runs' scores, so the stop's
  Δ is DIAL λ=10's and 'DIAL beyond the stop' at λ=10 is 0."""
  from dial_jax.experiments import intervals
  ref = _exp(tmp_path)
  ref.preset, ref.variants, ref.variant_seeds = "ref", (), ()
  stopped = _exp(tmp_path)
  stopped.preset, stopped.variants, stopped.variant_seeds = "es", (), ()
  stopped.train_config.train.eval_every, stopped.train_config.train.keep_best = 20, True
  _essays(ref, np.random.default_rng(1))
  truth = grid_summary.target_test_truth(ref, "simple_to_complex")
  ref_rows, es_rows = make_rows(ref, truth), make_rows(stopped, truth, seed=1)
  dial10 = {(r["setting"], r["seed"]): r for r in es_rows if r["mode"] == "dial" and r["lambda"] == 10.0}
  for r in es_rows:
    if r["mode"] == "source_only":
      twin = dial10[r["setting"], r["seed"]]
      r["eval"], r["test_scores"] = twin["eval"], twin["test_scores"]
  for r in ref_rows + es_rows:
    runner.append_result(ref.results, r)
  section = intervals.render([], early_stops=[(stopped, ref)], num_samples=200).split(
      "## Early stopping on the source check: `:es` against `:ref`")[1]
  sums = [grid_summary.summarize_grid(e, grid_summary.grid_rows(e, runner.read_results(e.results)), num_samples=200)
          for e in (stopped, ref)]
  checked = []
  for setting in ref.settings:
    s, r = sums[0][setting], sums[1][setting]
    t = None if setting == "few_shot" else truth
    lam_ref = selection.label_free_lambda(r["source_only"], r["dial"])
    lam = selection.label_free_lambda(s["source_only"], s["dial"])
    stop = grid_summary.delta_interval(r["source_only"], s["dial"][10.0], t, num_samples=200)
    line = next(x for x in section.splitlines() if x.startswith(f"| {grid_summary.TITLES[setting]} |"))
    assert f"| {report._fmt_delta(stop)} |" in line
    checked.append((lam_ref, lam))
    if lam_ref is not None:
      vs_dial = grid_summary.delta_interval(r["dial"][lam_ref], s["dial"][10.0], t, num_samples=200)
      assert f"| {report._fmt_delta(vs_dial)} (λ={lam_ref:g}) |" in line
    if lam == 10.0:
      assert "| +0.000 [+0.000, +0.000] (n=3) (λ=10) |" in line
  assert checked == [(10.0, 10.0), (1.0, 10.0)]  # both comparisons were made in both settings
