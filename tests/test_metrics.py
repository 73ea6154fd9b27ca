"""Evaluation metrics against scipy.stats and hand-computed values (ties and constant inputs included)."""
import numpy as np
import pytest
from scipy import stats

from dial_jax import metrics


def test_pairwise_accuracy_by_hand():
  # wins: 2 > 1, 3 > 0; tie 5 == 5 counts one half; loss 0 < 4
  assert metrics.pairwise_accuracy([2, 3, 5, 0], [1, 0, 5, 4]) == pytest.approx((1 + 1 + 0.5 + 0) / 4, abs=0)
  assert metrics.pairwise_accuracy([1.0], [0.0]) == 1.0
  assert metrics.pairwise_accuracy([0.0], [1.0]) == 0.0
  assert metrics.pairwise_accuracy([7, 7, 7], [7, 7, 7]) == 0.5
  # not symmetric: swapping chosen and rejected gives 1 - accuracy
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=101), rng.normal(size=101)
  assert metrics.pairwise_accuracy(a, b) == pytest.approx(1 - metrics.pairwise_accuracy(b, a), abs=1e-15)
  assert metrics.pairwise_accuracy(a, b) == pytest.approx(np.mean(a > b), abs=1e-15)


def test_pairwise_accuracy_float32_ties_are_exact():
  """float32 rewards that tie stay tied (the float64 cast must not break them)."""
  r = np.float32([0.1, 0.2, 0.3])
  assert metrics.pairwise_accuracy(r, r.copy()) == 0.5


@pytest.mark.parametrize("seed", [0, 1])
def test_pearson_matches_scipy(seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=50)
  y = 0.5 * x + rng.normal(size=50)
  assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
  assert metrics.pearson(x, -y) == pytest.approx(-stats.pearsonr(x, y).statistic, abs=1e-12)


def test_pearson_by_hand_and_invariances():
  assert metrics.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0, abs=1e-15)
  assert metrics.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0, abs=1e-15)
  # x = (-1, 0, 1), y = (1, -2, 1) after centring: sum xy = 0 -> r = 0
  assert metrics.pearson([1, 2, 3], [1, -2, 1]) == pytest.approx(0.0, abs=1e-15)
  # (1,2,3,4) vs (1,3,2,4): centred (-1.5,-.5,.5,1.5) and (-1.5,.5,-.5,1.5) -> 4 / 5
  assert metrics.pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8, abs=1e-15)
  # float32 input with a large offset: computed in float64, so the offset does not cost precision
  x = np.float32([1e4 + 1, 1e4 + 2, 1e4 + 3, 1e4 + 4])
  assert metrics.pearson(x, [1, 3, 2, 4]) == pytest.approx(0.8, abs=1e-9)


def test_constant_inputs_give_zero():
  """A constant prediction (e.g. a collapsed model) has no correlation; reported as 0, never NaN."""
  assert metrics.pearson([1, 1, 1], [1, 2, 3]) == 0.0
  assert metrics.pearson([1, 2, 3], [5, 5, 5]) == 0.0
  assert metrics.spearman([2, 2, 2, 2], [1, 2, 3, 4]) == 0.0
  assert metrics.spearman([1, 2, 3, 4], [0, 0, 0, 0]) == 0.0


@pytest.mark.parametrize("x", [
    [3, 1, 2],
    [1, 1, 1],
    [2, 1, 2, 3, 1, 2],
    [0.5, -1.0, 0.5, 0.5, 7.0, -1.0, 2.0],
    [5.0],
])
def test_rankdata_matches_scipy_average_ties(x):
  np.testing.assert_array_equal(metrics.rankdata(x), stats.rankdata(x, method="average"))


def test_rankdata_by_hand():
  # sorted: 10 (rank 1), 20 20 (ranks 2, 3 -> 2.5), 30 (4), 40 40 40 (5, 6, 7 -> 6)
  np.testing.assert_array_equal(metrics.rankdata([40, 20, 10, 40, 30, 20, 40]), [6, 2.5, 1, 6, 4, 2.5, 6])
  rng = np.random.default_rng(3)
  x = rng.integers(0, 5, size=200).astype(np.float32)  # many ties, like 1..5 human scores
  np.testing.assert_array_equal(metrics.rankdata(x), stats.rankdata(x))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_scipy_with_ties(seed):
  rng = np.random.default_rng(seed)
  scores = rng.integers(1, 6, size=80).astype(np.float32)          # integer human scores: many ties
  rewards = scores + rng.normal(scale=2.0, size=80).astype(np.float32)
  rewards[:10] = rewards[0]                                        # tied rewards too
  expected = stats.spearmanr(rewards, scores).statistic
  assert metrics.spearman(rewards, scores) == pytest.approx(expected, abs=1e-12)


def test_spearman_by_hand():
  # monotone but nonlinear: Spearman 1 where Pearson is below 1
  x = [1, 2, 3, 4, 5]
  y = [1, 4, 9, 16, 1000]
  assert metrics.spearman(x, y) == pytest.approx(1.0, abs=1e-15)
  assert metrics.pearson(x, y) < 0.8
  # ranks (1,2,3) vs (1.5,1.5,3): centred (-1,0,1) and (-.5,-.5,1) -> 1.5 / sqrt(2 * 1.5)
  assert metrics.spearman([1, 2, 3], [0, 0, 9]) == pytest.approx(1.5 / np.sqrt(3.0), abs=1e-15)


@pytest.mark.parametrize("k,n", [(7, 10), (0, 8), (8, 8), (33, 50)])
def test_wilson_interval_matches_scipy(k, n):
  expected = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
  lo, hi = metrics.wilson_interval(k / n, n)
  assert (lo, hi) == pytest.approx((expected.low, expected.high), abs=1e-6)
  assert lo <= k / n <= hi


def test_fisher_interval_matches_scipy_pearsonr():
  rng = np.random.default_rng(4)
  x = rng.normal(size=30)
  y = x + rng.normal(size=30)
  r = stats.pearsonr(x, y)
  expected = r.confidence_interval(confidence_level=0.95)
  lo, hi = metrics.fisher_interval(metrics.pearson(x, y), 30)
  assert (lo, hi) == pytest.approx((expected.low, expected.high), abs=1e-6)
  assert metrics.fisher_interval(0.5, 3) == (-1.0, 1.0)


def test_metric_writer_round_trip(tmp_path):
  import json
  w = metrics.MetricWriter(tmp_path)
  w.write(3, "eval/x", {"accuracy": np.float32(0.75), "v": np.arange(2)})
  metrics.MetricWriter(tmp_path / "nowhere", enabled=False).write(1, "train", {"a": 1})
  row = json.loads((tmp_path / "metrics.jsonl").read_text())
  assert (row["step"], row["kind"], row["accuracy"], row["v"]) == (3, "eval/x", 0.75, [0, 1])
  assert not (tmp_path / "nowhere").exists()


def test_domain_gap_is_the_mean_distance_in_rms_units_at_any_scale():
  """Two clouds whose means are 3 apart along one axis: the gap is |mean difference| / pooled RMS norm (by hand),
  the same at 100x the scale (LLM hidden states have norms ~100), and MMD² is near 0 for two draws of one cloud."""
  rng = np.random.default_rng(0)
  h_s = rng.normal(0.0, 1.0, (400, 8))
  h_t = rng.normal(0.0, 1.0, (500, 8)) + np.eye(8)[0] * 3.0
  pooled = np.concatenate([h_s, h_t])
  expected = np.linalg.norm(h_s.mean(0) - h_t.mean(0)) / np.sqrt(np.mean(np.sum(pooled**2, axis=1)))
  gap = metrics.domain_gap(h_s, h_t)
  assert gap["mean"] == pytest.approx(expected, rel=1e-9)
  assert 0.78 < gap["mean"] < 0.88  # 3 / sqrt(8 + 9 * 5/9) = 0.83
  scaled = metrics.domain_gap(100.0 * h_s, 100.0 * h_t)
  assert scaled["mean"] == pytest.approx(gap["mean"], rel=1e-9)
  assert scaled["mmd"] == pytest.approx(gap["mmd"], rel=1e-4)
  same = metrics.domain_gap(h_s, rng.normal(0.0, 1.0, (500, 8)))
  assert same["mean"] < 0.15 and same["mmd"] < 0.1 * gap["mmd"]


def test_domain_gap_bounds_the_mmd_rows_of_large_splits():
  """The mean uses every row; MMD² a seeded draw of at most MMD_MAX_ROWS rows per domain (memory stays bounded):
  equal to MMD² of those rows, and close to the full value for one cloud against a shifted one."""
  rng = np.random.default_rng(1)
  n = metrics.MMD_MAX_ROWS + 700
  h_s, h_t = rng.normal(0, 1, (n, 4)), rng.normal(0, 1, (n, 4)) + 0.5
  gap = metrics.domain_gap(h_s, h_t)
  pooled = np.concatenate([h_s, h_t])
  scale = np.sqrt(np.mean(np.sum(pooled**2, axis=1)))
  assert gap["mean"] == pytest.approx(np.linalg.norm(h_s.mean(0) - h_t.mean(0)) / scale, rel=1e-9)
  draw = np.random.default_rng(0)
  pick = lambda h: h[np.sort(draw.choice(len(h), metrics.MMD_MAX_ROWS, replace=False))]
  from dial_jax import losses
  assert gap["mmd"] == pytest.approx(float(losses.mmd_loss(pick(h_s) / scale, pick(h_t) / scale)), rel=1e-6)
  assert gap["mmd"] == pytest.approx(float(losses.mmd_loss(h_s / scale, h_t / scale)), rel=0.1)
