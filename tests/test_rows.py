"""The results file's compact rows: per-example scores kept exactly, the full history beside the file, and the report
(tables, lambda choices, bootstrap intervals) the same from compact rows as from the verbose ones."""
import json

import numpy as np
import pytest

from dial_jax.experiments import figures, grid_summary, report, runner
from dial_jax.experiments import rows as row_format
from tests import test_report


def test_scores_round_trip_exactly():
  rng = np.random.default_rng(0)
  margins = np.concatenate([rng.standard_normal(50), [0.0, -0.0]])
  row = {"run_id": "s/x", "eval": {"target_test": {"accuracy": 0.5}}, "test_scores": margins.tolist()}
  back = np.asarray(row_format.scores_of(row_format.compact(row, None)))
  np.testing.assert_array_equal(back, np.sign(margins))  # pairs: the sign is what accuracy reads; ties stay ties
  rewards = rng.standard_normal(40).astype(np.float32)  # scored texts: the model's float32 rewards, bit for bit
  row = {"run_id": "s/y", "eval": {"target_test": {"pearson": 0.1}}, "test_scores": rewards.tolist()}
  compact = row_format.compact(row, None)
  assert isinstance(compact["test_scores"]["data"], str)
  np.testing.assert_array_equal(np.asarray(row_format.scores_of(compact), np.float32), rewards)


def test_history_moves_beside_the_file_and_its_ends_stay(tmp_path):
  history = [{"step": 10, "wasserstein": 3.0, "loss": 1.0}, {"step": 20, "loss": 0.5},
             {"step": 30, "wasserstein": 1.5, "loss": 0.25}]
  row = {"run_id": "few_shot/dial/seed=0", "grid": "abc", "eval": {"target_test": {"accuracy": 0.5}},
         "history": history, "test_scores": None}
  compact = row_format.compact(row, tmp_path)
  assert "history" not in compact and compact["history_ends"] == {"wasserstein": [3.0, 1.5], "loss": [1.0, 0.25]}
  # the figure's metrics keep their whole curve in the row; others only their ends
  assert compact["history_curves"] == {"wasserstein": [[10, 3.0], [30, 1.5]]}
  assert row_format.curve(compact, "wasserstein") == row_format.curve(row, "wasserstein") == {10: 3.0, 30: 1.5}
  assert row_format.curve(compact, "loss") == {} and row_format.curve(row, "loss") == {10: 1.0, 20: 0.5, 30: 0.25}
  for key in ("wasserstein", "loss", "critic_slope"):
    for which in (0, -1):
      assert row_format.history_value(compact, key, which) == row_format.history_value(row, key, which)
  assert row_format.with_history(compact, tmp_path)["history"] == history
  assert json.loads(row_format.history_path(tmp_path, row["run_id"], "abc").read_text()) == history
  assert row_format.compact(compact, tmp_path) == compact  # already compact: unchanged


def test_report_is_the_same_from_compact_rows(tmp_path):
  exp = test_report._exp(tmp_path)
  rng = np.random.default_rng(1)
  test_report._essays(exp, rng)
  truth = grid_summary.target_test_truth(exp, "simple_to_complex")
  verbose = test_report.make_rows(exp, truth)
  compact = [row_format.compact(r, exp.artifacts_dir) for r in verbose]
  assert len(json.dumps(compact)) < len(json.dumps(verbose)) / 2
  a = grid_summary.summarize(exp, verbose, {"simple_to_complex": truth}, num_samples=100)
  b = grid_summary.summarize(exp, compact, {"simple_to_complex": truth}, num_samples=100)
  for setting in a:
    assert a[setting]["choice"] == b[setting]["choice"] and not b[setting]["bad_scores"]
    assert a[setting]["deltas"].keys() == b[setting]["deltas"].keys()
    for lam, d in a[setting]["deltas"].items():  # the synthetic rewards are float64; the rows keep float32
      got = b[setting]["deltas"][lam]
      assert got["seeds"] == d["seeds"]
      assert [got[k] for k in ("delta", "lo", "hi")] == pytest.approx([d[k] for k in ("delta", "lo", "hi")], abs=1e-6)
  for r in compact:
    runner.append_result(exp.results, r)
  text_compact = report.write_report(exp, str(tmp_path / "compact" / "REPORT.md"), num_samples=100)
  assert "![loss balance](figures/loss_balance.png)" in text_compact  # drawn from the side files
  exp.artifacts_dir = str(tmp_path / "elsewhere")
  text_bare = report.write_report(exp, str(tmp_path / "bare" / "REPORT.md"), num_samples=100)
  assert "![loss balance](figures/loss_balance.png)" in text_bare  # side files gone: drawn from the rows' curves
  for key in row_format.CURVE_KEYS:  # the same curves, to the 4 significant digits the rows keep
    for mode in ("source_only", "dial"):
      full = figures._curve([r for r in verbose if r["mode"] == mode], key)
      kept = figures._curve([r for r in compact if r["mode"] == mode], key)
      assert (full is None) == (kept is None)
      if full is not None:
        np.testing.assert_array_equal(kept[0], full[0])
        np.testing.assert_allclose(kept[1], full[1], rtol=1e-3)
        assert kept[2] == full[2]
  older = [{k: v for k, v in r.items() if k != "history_curves"} for r in compact]  # rows made before the curves
  exp.results = str(tmp_path / "older.jsonl")
  for r in older:
    runner.append_result(exp.results, r)
  text_older = report.write_report(exp, str(tmp_path / "older" / "REPORT.md"), num_samples=100)
  assert "Not drawn: no run's step history here" in text_older
  # Newer variant rows keep curves, the older plain runs it draws do not: still not drawn (not empty panels).
  assert any(r["variant"] for r in compact)
  mixed = [r if r["variant"] else older[i] for i, r in enumerate(compact)]
  exp.results = str(tmp_path / "mixed.jsonl")
  for r in mixed:
    runner.append_result(exp.results, r)
  assert "Not drawn: no run's step history here" in report.write_report(exp, str(tmp_path / "mixed" / "REPORT.md"),
                                                                         num_samples=100)
  strip = lambda t: [l for l in t.splitlines() if "loss balance" not in l.lower() and "history" not in l]
  # The tables and intervals do not depend on the side files.
  for text in (text_bare, text_older):
    assert [l for l in strip(text) if l.startswith("|")] == [l for l in strip(text_compact) if l.startswith("|")]


def test_migration_cli_refuses_to_overwrite(tmp_path):
  src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
  src.write_text(json.dumps({"run_id": "a", "grid": "g", "eval": {"target_test": {"accuracy": 1.0}},
                             "test_scores": [1.0], "history": [{"step": 1, "loss": 0.5}]}) + "\n")
  dst.write_text("mine\n")
  assert row_format.main([str(src), str(dst), f"--artifacts_dir={tmp_path}"]) == 2
  assert dst.read_text() == "mine\n"
  dst.unlink()
  assert row_format.main([str(src), str(dst), f"--artifacts_dir={tmp_path}"]) == 0
  assert row_format.scores_of(json.loads(dst.read_text())) == [1.0]
