"""Target preference labels never reach training in the dial and source_only modes (only oracle uses them), and the
pairing of scored target texts in PairedBatches.

A label flip swaps every target pair's chosen and rejected texts (pairs) or reverses the target scores (scored
texts). The train metrics target_loss / target_accuracy (``monitor/...`` outside oracle) are computed from the
target labels for monitoring only, so they are excluded from the comparisons.
"""
import copy
import dataclasses

import jax
import numpy as np
import pytest

from dial_jax.data import pipeline
from tests import helpers
from tests.test_step import make_step, setup

STEPS = 2
ROW_ORDER = ("reward_mean", "reward_std")  # averaged over rows: equal too, since the rows' order is label-free


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return helpers.tiny_model_and_data(tmp_path_factory, "labels", settings=("few_shot", "simple_to_complex"))


def flipped(batches):
  """The same batches with every target label flipped."""
  out = copy.copy(batches)
  t = batches.target
  if t.kind == "pairs":
    out.target = dataclasses.replace(t, chosen=t.rejected, rejected=t.chosen)
  else:  # reversed scores: every drawn pair with distinct scores changes its order
    out.target = dataclasses.replace(t, scores=-t.scores)
  return out


def runs(config):
  """(final state, metrics history) with the real and with the flipped target labels, same start and jitted step."""
  model, state0, batches, (critic, tx, critic_tx, shardings) = setup(config)
  step = make_step(model, critic, tx, critic_tx, config, shardings)
  out = []
  for b in (batches, flipped(batches)):
    state, history = state0, []
    for i in range(STEPS):
      state, metrics = step(state, b.batch(i))
      history.append(jax.device_get(metrics))
    out.append((jax.device_get(state), history))
  assert any(not np.array_equal(x, y) for x, y in zip(
      jax.tree.leaves(batches.batch(0)), jax.tree.leaves(flipped(batches).batch(0)))), "the flip changed nothing"
  return jax.device_get(state0), out


def label_free(metrics):
  return {k: v for k, v in metrics.items() if "target_loss" not in k and "target_accuracy" not in k}


def max_diff(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) and la
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) for x, y in zip(la, lb))


def assert_critic_untouched(state0, state):
  """lambda is statically 0 in source_only and oracle: the step never runs the critic, so it and its optimizer
  state stay exactly as initialised."""
  assert jax.tree.leaves(state0.critic), "the WDGRL critic exists"
  for part in ("critic", "critic_opt_state"):
    for x, y in zip(jax.tree.leaves(getattr(state0, part)), jax.tree.leaves(getattr(state, part)), strict=True):
      np.testing.assert_array_equal(x, y, err_msg=part)


def test_source_only_ignores_target_labels_bit_for_bit(dirs):
  """Scored target texts with reversed scores: parameters, both optimizer states, critic and every label-free
  metric are bit-identical."""
  config = helpers.tiny_config(*dirs, **{"dial.mode": "source_only", "data.setting": "simple_to_complex"})
  state0, ((s1, h1), (s2, h2)) = runs(config)
  assert_critic_untouched(state0, s1)
  for part in ("trainable", "opt_state", "critic", "critic_opt_state"):
    for x, y in zip(jax.tree.leaves(getattr(s1, part)), jax.tree.leaves(getattr(s2, part))):
      np.testing.assert_array_equal(x, y, err_msg=part)
  for m1, m2 in zip(h1, h2, strict=True):
    assert label_free(m1).keys() == label_free(m2).keys()
    for k, v in label_free(m1).items():
      np.testing.assert_array_equal(v, m2[k], err_msg=k)


def test_dial_ignores_target_labels_bit_for_bit(dirs):
  """Target pairs with chosen and rejected swapped (default config: WDGRL, LoRA, packed rows): the batcher puts
  each target pair in a label-free order, so parameters, critic, optimizer states and every label-free metric
  are bit-identical (a leak of the target loss at weight 1e-3 moves parameters by ~1e-6 in 2 steps)."""
  config = helpers.tiny_config(*dirs)
  _, ((s1, h1), (s2, h2)) = runs(config)
  for part in ("trainable", "opt_state", "critic", "critic_opt_state"):
    for x, y in zip(jax.tree.leaves(getattr(s1, part)), jax.tree.leaves(getattr(s2, part)), strict=True):
      np.testing.assert_array_equal(x, y, err_msg=part)
  for m1, m2 in zip(h1, h2, strict=True):
    assert "wasserstein" in m1
    for k, v in label_free(m1).items():
      np.testing.assert_array_equal(v, m2[k], err_msg=k)
    for k in ROW_ORDER:
      np.testing.assert_array_equal(m1[k], m2[k], err_msg=k)


def test_oracle_uses_target_labels(dirs):
  config = helpers.tiny_config(*dirs, **{"dial.mode": "oracle"})
  state0, ((s1, h1), (s2, h2)) = runs(config)
  assert_critic_untouched(state0, s1)
  assert max_diff(s1.trainable, s2.trainable) > 1e-5
  # flipping the labels reflects the target Bradley-Terry loss at the same parameters: loss(-d) = loss(d) + d
  assert h1[0]["target_loss"] != pytest.approx(h2[0]["target_loss"], abs=1e-4)
  assert h1[0]["target_accuracy"] + h2[0]["target_accuracy"] == pytest.approx(1.0, abs=1e-6)


def test_target_pairs_carry_their_label_only_in_the_weight_sign():
  """PairedBatches: a target pair's texts come in a label-free order (token lists compared), and the signed weight
  says which is preferred (+1 the first, -1 the second, 0 equal scores); scored texts are drawn two per pair."""
  texts = [[10 + i] for i in range(6)]
  scores = np.float32([3, 1, 4, 1, 5, 3])
  target = pipeline.Domain("t", "scored", texts=texts, scores=scores)
  source = pipeline.Domain("s", "pairs", chosen=[[1]], rejected=[[2]])
  batches = pipeline.PairedBatches(source, target, batch_size=3, grad_accum_steps=1, buckets=(8,), pad_id=0, seed=0)
  score_of = {t[0]: s for t, s in zip(texts, scores)}
  seen = set()
  for step in range(8):
    first, second, weight = batches._pairs(target, 1, step, labeled=False)
    assert len(first) == len(second) == len(weight) == 3
    for a, b, w in zip(first, second, weight):
      assert a <= b  # label-free order
      assert w == np.sign(score_of[a[0]] - score_of[b[0]])
      seen.add(float(w))
    b = batches.batch(step)  # the batch arrays carry the same pairing and weights
    np.testing.assert_array_equal(b["target_chosen_ids"][0, :, 0], [a[0] for a in first])
    np.testing.assert_array_equal(b["target_rejected_ids"][0, :, 0], [r[0] for r in second])
    np.testing.assert_array_equal(b["target_pair_weight"][0], weight)
  assert seen == {-1.0, 0.0, 1.0}
  # each epoch of 2 * batch_size draws is a permutation of the texts: every text is drawn exactly once
  drawn = sorted(t[0] for step in range(2) for side in batches._pairs(target, 1, step, labeled=False)[:2]
                 for t in side)
  assert drawn == sorted([t[0] for t in texts] * 2)
  # preference pairs: flipping the label flips only the sign
  pairs = pipeline.Domain("t", "pairs", chosen=[[5], [1]], rejected=[[2], [7]])
  flipped_pairs = pipeline.Domain("t", "pairs", chosen=[[2], [7]], rejected=[[5], [1]])
  out = [pipeline.PairedBatches(source, d, batch_size=2, grad_accum_steps=1, buckets=(8,), pad_id=0,
                                seed=0)._pairs(d, 1, 0, labeled=False) for d in (pairs, flipped_pairs)]
  assert out[0][0] == out[1][0] and out[0][1] == out[1][1]
  np.testing.assert_array_equal(out[0][2], -out[1][2])
