"""The length page (dial_jax.experiments.length): the partial Pearson and the length term that split a reward's
Pearson with the truth, the texts' lengths in the runner's order, and the page on synthetic rows."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dial_jax.data import pipeline
from dial_jax.experiments import grid_summary, length, runner, selection
from tests import helpers
from tests.test_report import N_ESSAYS, N_PAIRS, _exp, make_rows


class WordTokenizer:
  """One token per whitespace-separated word, after a BOS token."""
  bos_token_id = 1

  def __call__(self, texts, **_):
    return {"input_ids": [[1] + [2] * len(t.split()) for t in texts]}


def test_partial_pearson_and_the_length_term_split_the_pearson_with_the_truth():
  """Pearson(reward, truth) = r_tl·r_rl + partial·√((1 − r_rl²)(1 − r_tl²)) holds to 1e-9 on random data, and
  the partial is the textbook formula; a reward that is the length alone has r_rl = 1 and nothing left given
  length."""
  rng = np.random.default_rng(0)
  n = 300
  size = rng.normal(size=n)
  truth = 0.8 * size + 0.6 * rng.normal(size=n)
  lengths = 400 + 100 * size
  reward = -0.3 * size + 0.5 * truth + rng.normal(size=n)
  targets = np.stack([truth, lengths], axis=1)
  r_rt = np.corrcoef(reward, truth)[0, 1]
  r_rl, r_tl = np.corrcoef(reward, lengths)[0, 1], np.corrcoef(truth, lengths)[0, 1]
  partial = length.partial_pearson(reward, targets)
  assert abs(partial - (r_rt - r_rl * r_tl) / np.sqrt((1 - r_rl ** 2) * (1 - r_tl ** 2))) < 1e-9
  assert abs(r_tl * length.length_pearson(reward, targets)
             + partial * np.sqrt((1 - r_rl ** 2) * (1 - r_tl ** 2)) - r_rt) < 1e-9
  assert abs(length.length_pearson(3 * lengths + 1, targets) - 1) < 1e-12
  assert abs(length.partial_pearson(3 * lengths + 1, targets)) < 1e-6
  # Given the truth: a reward built from the truth alone has no length left (its r_rl is r_tl times its Pearson
  # with the truth, so its length term is r_tl² of any ΔPearson); adding length makes the partial positive.
  from_truth = 2 * truth + 1
  assert abs(length.length_given_truth(from_truth, targets)) < 1e-6
  assert abs(length.length_pearson(from_truth, targets) - r_tl) < 1e-12
  assert length.length_given_truth(truth + 0.01 * lengths, targets) > 0.5
  r_lt = (r_rl - r_rt * r_tl) / np.sqrt((1 - r_rt ** 2) * (1 - r_tl ** 2))
  assert abs(length.length_given_truth(reward, targets) - r_lt) < 1e-9


def test_lengths_are_those_of_the_texts_the_runner_scored(tmp_path):
  """Scored: each essay's score is its word count, so the two columns agree row by row only if the lengths follow
  load_domain's seeded subset (which the tokenizer's lengths confirm). Pairs: chosen − rejected, in the subset's
  order."""
  exp = _exp(tmp_path)
  path = Path(exp.data_dir) / "simple_to_complex" / "target_test.jsonl"
  path.parent.mkdir(parents=True)
  path.write_text("".join(json.dumps({"id": f"asap-{i:03d}", "text": " ".join(["w"] * (i + 1)), "score": i + 1.0,
                                      "group": f"set{i % 3}"}) + "\n" for i in range(45)))
  targets = length.target_test_targets(exp, "simple_to_complex")
  domain = pipeline.load_domain(path, WordTokenizer(), 64, limit=N_ESSAYS, seed=exp.data_seed)
  assert targets.shape == (N_ESSAYS, 2) and len(set(targets[:, 1])) == N_ESSAYS
  np.testing.assert_array_equal(targets[:, 1], targets[:, 0])
  np.testing.assert_array_equal(targets[:, 0], domain.scores)
  np.testing.assert_array_equal(targets[:, 1], [len(ids) - 1 for ids in domain.texts])
  pairs = Path(exp.data_dir) / "few_shot" / "target_test.jsonl"
  pairs.parent.mkdir(parents=True)
  rows = [{"id": f"p{i:03d}", "prompt": "q", "response_chosen": " ".join(["a"] * (i + 1)),
           "response_rejected": "b b b"} for i in range(300)]
  pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
  exp.limits.target_test = 200
  got = length.target_test_targets(exp, "few_shot")
  keep = pipeline.subset_indices([r["id"] for r in rows], 200, exp.data_seed)
  assert np.isnan(got[:, 0]).all()
  np.testing.assert_array_equal(got[:, 1], [i + 1 - 3 for i in keep])


def test_page_shows_each_method_and_paired_comparisons_and_refuses_a_foreign_file(tmp_path):
  """On synthetic rows whose rewards track the truth (longer essays score higher): each method's mean Pearson with
  length, DIAL − source-only's Δ of it with the report's paired intervals, the length term, and the sign tally."""
  exp = _exp(tmp_path)
  exp.preset = "syn"
  rng = np.random.default_rng(1)
  path = Path(exp.data_dir) / "simple_to_complex" / "target_test.jsonl"
  path.parent.mkdir(parents=True)
  scores = rng.integers(0, 13, 45)
  path.write_text("".join(json.dumps({"id": f"asap-{i:03d}", "score": float(s), "group": f"set{i % 3}",
                                      "text": " ".join(["w"] * int(5 * s + rng.integers(1, 30)))}) + "\n"
                          for i, s in enumerate(scores)))
  truth = grid_summary.target_test_truth(exp, "simple_to_complex")
  rows = make_rows(exp, truth)
  for r in rows:
    runner.append_result(exp.results, r)
  text = length.render([exp], num_samples=200)
  targets = length.target_test_targets(exp, "simple_to_complex")
  pick = lambda mode, lam=None: [r for r in rows if r["setting"] == "simple_to_complex" and r["mode"] == mode
                                 and not r["variant"] and (lam is None or r["lambda"] == lam)]
  so, d10 = pick("source_only"), pick("dial", 10.0)
  r_so = np.mean([np.corrcoef(r["test_scores"], targets[:, 1])[0, 1] for r in so])
  assert f"| source-only | 3 | +0.320 | {r_so:+.3f} |" in text
  assert "a length term of r_tl² = " in text
  d = grid_summary.delta_interval(so, d10, truth, metric=length.length_pearson, targets=targets, num_samples=200)
  r_tl = np.corrcoef(targets[:, 0], targets[:, 1])[0, 1]
  assert r_tl > 0.8 and d["delta"] > 0   # DIAL λ 10's rewards track the truth better (0.52 vs 0.32), so length too
  assert (f"| DIAL − source-only, λ=10 | +0.200 [" in text
          and f"| {d['delta']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]; seeds too [{d['lo_seeds']:+.3f}, "
              f"{d['hi_seeds']:+.3f}] | {r_tl * d['delta']:+.3f} |" in text)
  assert "- `gemma-3-270m`: 2 of 2 cells." in text    # λ 1 lowers both (−0.01), λ 10 raises both
  assert "Pearson of the margin with the length difference" not in text   # the few-shot file is absent: no cell
  # A second grid with the same fingerprint and seeds (e.g. a preset with more variants listed first) does not
  # repeat a setting the first one showed; one with other seeds does.
  import copy
  title = f": {grid_summary.TITLES['simple_to_complex']}\n"
  again, fewer = copy.deepcopy(exp), copy.deepcopy(exp)
  fewer.seeds = exp.seeds[:2]
  twice = length.render([exp, again, fewer], num_samples=20)
  assert twice.count(title) == 2 and twice.count(f"Not repeated (shown above): {title[2:-1]} under") == 1
  assert length.not_repeated_line({"few_shot": "`:a`", "cross_lingual": "`:b`", "clean_to_noisy": "`:a`"}) == (
      f"Not repeated (shown above): {grid_summary.TITLES['few_shot']}, {grid_summary.TITLES['clean_to_noisy']} "
      f"under `:a`; {grid_summary.TITLES['cross_lingual']} under `:b`.")
  # A pair setting: the length-alone baseline counts the pairs whose chosen response is longer (ties half). The
  # file has 30 pairs (the grid's limit) and the rows' scores 200: every few-shot run is left out, and said so.
  pairs = Path(exp.data_dir) / "few_shot" / "target_test.jsonl"
  pairs.parent.mkdir(parents=True)
  pairs.write_text("".join(json.dumps({"id": f"p{i:03d}", "prompt": "q", "response_chosen": "a " * (1 + i % 4),
                                       "response_rejected": "b b"}) + "\n" for i in range(N_ESSAYS)))
  text = length.render([exp], num_samples=20).split("few-shot-to-full")[1].split("### ")[0]
  longer = length.target_test_targets(exp, "few_shot")[:, 1]
  assert f"is right on {np.mean((longer > 0) + 0.5 * (longer == 0)):.3f} of these {N_ESSAYS} pairs" in text
  n_few_shot = sum(r["setting"] == "few_shot" and r["mode"] in ("source_only", "dial", "oracle") and not r["variant"]
                   for r in rows)   # the methods on the page; the authors'-critic variant is not one
  assert f"{n_few_shot} run(s) left out: their test scores do not reproduce" in text
  assert "| source-only |" not in text and "| DIAL − source-only" not in text
  helpers.assert_page_cli_keeps_a_foreign_file("dial_jax.experiments.length", tmp_path, "--presets=quick", f"--results={exp.results}")


def test_pair_settings_split_the_accuracy_by_which_response_is_longer(grid_for_pairs):
  """Accuracy on chosen-longer and chosen-shorter pairs per method, and each comparison's Δ on both subsets with the
  report's paired bootstrap (the subset read from each resample)."""
  exp, summary, rows = grid_for_pairs
  cell = next(c for c in length.setting_cells(exp, summary, num_samples=100) if c["setting"] == "few_shot")
  targets = length.target_test_targets(exp, "few_shot")
  longer, shorter = targets[:, 1] > 0, targets[:, 1] < 0
  assert (cell["n_longer"], cell["n_shorter"]) == (longer.sum(), shorter.sum()) and longer.any() and shorter.any()
  so = [r for r in rows if r["setting"] == "few_shot" and r["mode"] == "source_only"]
  acc = lambda m, keep: np.mean((np.asarray(m)[keep] > 0) + 0.5 * (np.asarray(m)[keep] == 0))
  stats = dict(cell["methods"])["source-only"]
  assert stats["longer"] == pytest.approx(np.mean([acc(r["test_scores"], longer) for r in so]), abs=1e-12)
  assert stats["shorter"] == pytest.approx(np.mean([acc(r["test_scores"], shorter) for r in so]), abs=1e-12)
  d10 = [r for r in rows if r["setting"] == "few_shot" and r["mode"] == "dial" and r["lambda"] == 10.0
         and not r["variant"]]
  comp = next(c for c in cell["comparisons"] if c["name"] == "DIAL − source-only, λ=10")["d"]
  want = grid_summary.delta_interval(so, d10, None, metric=length.accuracy_chosen_shorter, targets=targets,
                                     num_samples=100)
  assert comp["shorter"] == want
  assert comp["shorter"]["delta"] == pytest.approx(
      np.mean([acc(b["test_scores"], shorter) - acc(a["test_scores"], shorter) for a, b in zip(so, d10)]))
  lines = "\n".join(length.cell_lines(cell))
  assert f"accuracy, chosen longer ({longer.sum()})" in lines and "Δ accuracy, chosen shorter" in lines


def test_length_blind_dial_is_compared_with_source_only_and_dial(grid_for_pairs):
  """A grid's ``dial.length_blind=true`` runs are a method of the page, compared with source-only and with DIAL at the
  same λ (paired by seed); other variants (the authors' critic here) are left to the grid's report."""
  exp, _, rows = grid_for_pairs
  blind = "dial.length_blind=true"
  d10 = [r for r in rows if r["setting"] == "few_shot" and r["mode"] == "dial" and r["lambda"] == 10.0
         and not r["variant"]]
  flipped = [dict(r, run_id=f"{r['run_id']}/{blind}", variant=blind,
                  test_scores=[-m for m in r["test_scores"]],
                  eval={**r["eval"], "target_test": {**r["eval"]["target_test"],
                                                     "accuracy": selection.accuracy_of_margins(
                                                         [-m for m in r["test_scores"]])}}) for r in d10]
  for r in flipped:
    runner.append_result(exp.results, r)
  exp.variants, exp.variant_seeds = (*exp.variants, (blind, 10.0)), exp.seeds
  limited = _exp(Path(exp.results).parent)  # the grid the rows were made for (the fixture reads the file whole)
  limited.variants, limited.variant_seeds = exp.variants, exp.variant_seeds
  summary = grid_summary.summarize_grid(limited, grid_summary.grid_rows(limited, runner.read_results(exp.results)),
                                        num_samples=20)
  cell = next(c for c in length.setting_cells(exp, summary, num_samples=100) if c["setting"] == "few_shot")
  targets = length.target_test_targets(exp, "few_shot")
  methods = dict(cell["methods"])
  assert methods["length-blind DIAL λ=10"]["length"] == pytest.approx(-methods["DIAL λ=10"]["length"], abs=1e-12)
  assert not any("critic_input_scale" in name for name in methods)
  comps = {c["name"]: c["d"] for c in cell["comparisons"]}
  want = grid_summary.delta_interval(d10, flipped, None, metric=length.length_pearson, targets=targets,
                                     num_samples=100)
  assert comps["length-blind DIAL − DIAL, λ=10"]["length"] == want
  so = [r for r in rows if r["setting"] == "few_shot" and r["mode"] == "source_only"]
  assert comps["length-blind DIAL − source-only, λ=10"]["metric"] == grid_summary.delta_interval(
      so, flipped, None, num_samples=100)


@pytest.fixture
def grid_for_pairs(tmp_path):
  """The synthetic grid of test_report with a few-shot target_test file of its 200 pairs (lengths drawn at random),
  read without the grid's limit (the rows' margins cover all 200)."""
  import copy
  exp = _exp(tmp_path)
  rng = np.random.default_rng(2)
  path = Path(exp.data_dir) / "few_shot" / "target_test.jsonl"
  path.parent.mkdir(parents=True)
  path.write_text("".join(json.dumps({"id": f"p{i:03d}", "prompt": "q",
                                      "response_chosen": "a " * int(rng.integers(1, 9)),
                                      "response_rejected": "b " * int(rng.integers(1, 9))}) + "\n"
                          for i in range(N_PAIRS)))
  rows = [r for r in make_rows(exp, np.arange(N_ESSAYS, dtype=float)) if r["setting"] == "few_shot"]
  for r in rows:
    runner.append_result(exp.results, r)
  summary = grid_summary.summarize_grid(exp, grid_summary.grid_rows(exp, runner.read_results(exp.results)),
                                        num_samples=20)
  whole = copy.deepcopy(exp)
  whole.limits.target_test = 0
  return whole, summary, rows


def test_grids_come_from_the_config_file_or_a_one_line_error_naming_the_flag(tmp_path):
  """The page CLIs share intervals.load_grids: a missing config file or an unknown preset is one line naming the
  flag, before any grid is read."""
  from dial_jax.experiments import intervals
  config_file = str(Path(__file__).resolve().parents[1] / "configs" / "experiments.py")
  with pytest.raises(ValueError, match=r"^--config_file=.*missing\.py: no such file$"):
    intervals.load_grids(str(tmp_path / "missing.py"), ["quick"], "presets")
  with pytest.raises(ValueError, match=r"^--controls: unknown preset 'nope'"):
    intervals.load_grids(config_file, ["quick", "nope"], "controls")
  assert [g.preset for g in intervals.load_grids(config_file, ["default", "quick"], "presets")] == ["", "quick"]
  proc = subprocess.run([sys.executable, "-m", "dial_jax.experiments.length", "--presets=nope",
                         f"--out={tmp_path / 'page.md'}"], capture_output=True, text=True,
                        cwd=Path(__file__).resolve().parents[1])
  assert proc.returncode != 0 and "--presets: unknown preset 'nope'" in proc.stderr
  assert not (tmp_path / "page.md").exists()
