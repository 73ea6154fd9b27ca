"""``dial.match_target_lengths``: target pairs redrawn so their response lengths follow the source's."""
import numpy as np
import pytest

from dial_jax.data import matching, pipeline
from dial_jax.hf import load
from dial_jax.train import loop
from tests import helpers


def _domain(name: str, lengths: np.ndarray) -> pipeline.Domain:
  """A pairs domain whose token lists encode the pair's row (so a draw can be read back) and its lengths."""
  return pipeline.Domain(name=name, kind="pairs", chosen=[[i, 1] for i in range(len(lengths))],
                         rejected=[[i, 2] for i in range(len(lengths))], lengths=np.asarray(lengths, np.int64))


def _pairs(rng, n, gap_scale, base=25):
  short = rng.integers(base - 5, base + 5, n)
  return np.stack([short + rng.exponential(gap_scale, n).astype(np.int64), short], 1)


def _gap(lengths):
  return float(np.median(np.abs(lengths[:, 0] - lengths[:, 1])))


def test_the_draw_moves_the_targets_length_gaps_to_the_sources():
  """Source pairs differ in length by ~3x more than target pairs (as CNN/DM's and TL;DR's summaries do); the draw's
  median gap lands near the source's, the weights favour the target pairs that look like source pairs, and the draw
  is a pure function of the seed."""
  rng = np.random.default_rng(0)
  source, target = _domain("s", _pairs(rng, 200, 24.0)), _domain("t", _pairs(rng, 900, 7.0))
  matched, info = matching.match_lengths(target, source, seed=3)
  assert len(matched) == len(target)
  assert abs(_gap(matched.lengths) - _gap(source.lengths)) < 0.3 * abs(_gap(target.lengths) - _gap(source.lengths))
  assert info["median_length_gap_matched"] == _gap(matched.lengths)
  assert info["distinct_pairs"] < len(target) and 1 < info["effective_pairs"] < len(target)
  # Each drawn pair is a target pair, its tokens and lengths kept together.
  for c, r, length in zip(matched.chosen, matched.rejected, matched.lengths):
    assert c[0] == r[0] and (length == target.lengths[c[0]]).all()
  ratio = matching.density_ratio(source.lengths, target.lengths)
  gaps = np.abs(target.lengths[:, 0] - target.lengths[:, 1])
  assert ratio[gaps >= 20].mean() > 3 * ratio[gaps <= 3].mean()
  again, _ = matching.match_lengths(target, source, seed=3)
  other, _ = matching.match_lengths(target, source, seed=4)
  assert again.chosen == matched.chosen and other.chosen != matched.chosen


def test_the_draw_does_not_read_labels():
  """A pair's order (the source's label; the target's label too) does not enter: swapping chosen and rejected in any
  pairs of either domain leaves the weights unchanged."""
  rng = np.random.default_rng(1)
  s, t = _pairs(rng, 150, 20.0), _pairs(rng, 600, 6.0)
  swap_s, swap_t = rng.random(len(s)) < 0.5, rng.random(len(t)) < 0.5
  flip = lambda lengths, swap: np.where(swap[:, None], lengths[:, ::-1], lengths)
  np.testing.assert_allclose(matching.density_ratio(flip(s, swap_s), flip(t, swap_t)),
                             matching.density_ratio(s, t), rtol=1e-9)


def test_the_draw_refuses_scored_texts_and_missing_lengths():
  pairs = _domain("source_train", [[30, 20]] * 4)
  scored = pipeline.Domain(name="target_train", kind="scored", texts=[[1], [2]], scores=np.ones(2),
                           lengths=np.array([3, 4]))
  with pytest.raises(ValueError, match="needs preference pairs in both domains; 'target_train' holds scored"):
    matching.match_lengths(scored, pairs, seed=0)
  bare = pipeline.Domain(name="target_train", kind="pairs", chosen=[[1]], rejected=[[2]])
  with pytest.raises(ValueError, match="length in words; domain 'target_train' has none"):
    matching.match_lengths(bare, pairs, seed=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return helpers.tiny_model_and_data(tmp_path_factory, "matching")


@pytest.mark.parametrize("mode,lam,redrawn", [("dial", 1.0, True), ("source_only", 0.0, False)])
def test_the_loop_trains_on_the_redrawn_target_only_with_a_domain_loss(tiny, monkeypatch, mode, lam, redrawn):
  """With the flag the loop's batches draw target pairs from ``match_lengths``'s draw (seeded by train.seed); the
  source is untouched; without a domain loss (source-only) the flag changes nothing."""
  from dial_jax import parallel
  from dial_jax.train import writers
  config = helpers.tiny_config(*tiny, **{"dial.match_target_lengths": True, "dial.mode": mode, "dial.lambda_": lam,
                                         "train.num_steps": 1, "train.seed": 2})
  model, variables, tokenizer, _ = load.build_model(config)
  source, target, _ = loop.load_data(config, tokenizer)
  seen = {}
  real = loop.paired_batches

  def spy(config, source, target, pad_id, mesh):
    seen["source"], seen["target"] = source, target
    return real(config, source, target, pad_id, mesh)

  monkeypatch.setattr(loop, "paired_batches", spy)
  loop.train(config, model, variables, source, target, {}, mesh=parallel.make_mesh(config.mesh),
             pad_id=model.config.pad_token_id, writer=writers.MemoryWriter(), progress=False)
  want = matching.match_lengths(target, source, seed=2)[0] if redrawn else target
  assert seen["source"] is source
  assert seen["target"].chosen == want.chosen and seen["target"].rejected == want.rejected
  assert (seen["target"].chosen != target.chosen) == redrawn
