"""Sequence packing (data.packing): the packed layout, and that packing changes neither losses nor updates."""
import jax
import numpy as np
import pytest

from dial_jax.data import packing
from dial_jax.models import layers
from tests import helpers
from tests.test_step import run_steps


def unpack(arrays, index):
  """The tokens and positions of sequence ``index`` read back from packed arrays (via its slot and the mask)."""
  slots = arrays["last_positions"].shape[1]
  row, slot = divmod(int(arrays["sequence_slots"][index]), slots)
  last = int(arrays["last_positions"][row, slot])
  seg, pos, br = (arrays[k][row] for k in ("segment_ids", "positions", "branch_ids"))
  keep = (seg == seg[last]) & ((br == 0) | (br == br[last])) & (pos <= pos[last])
  cols = np.nonzero(keep)[0]
  return arrays["ids"][row, cols].tolist(), pos[cols].tolist()


def test_shared_prefix_layout_round_trips():
  prompt = [2, 11, 12, 13, 14]
  seqs = [prompt + [20, 21], [3, 4, 5], prompt + [30], prompt + [30],  # source chosen 0, 1; rejected 2, 3
          [2, 7], [2, 7, 8, 9], [5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 9, 10, 11]]
  # pairs_per_domain=2: (0, 2), (1, 3), (4, 6), (5, 7)
  rows = packing.pack_rows(seqs, 2, row_length=16, share_prefix=True)
  arrays = packing.to_arrays(rows, len(seqs), num_rows=4, row_length=16, slots=8, pad_id=0)
  for i, s in enumerate(seqs):
    tokens, positions = unpack(arrays, i)
    assert tokens == s and positions == list(range(len(s))), i
  computed = int((arrays["segment_ids"] > 0).sum())
  # (0, 2) share 5 tokens; (1, 3) share nothing; (4, 6) nothing; (5, 7): none either ([2..] vs [5..]).
  assert computed == sum(map(len, seqs)) - 5
  assert arrays["ids"].shape == (4, 16) and (arrays["segment_ids"][3] == 0).all()


def test_identical_and_nested_texts_keep_their_own_last_token():
  seqs = [[2, 5, 6], [2, 5, 6], [2, 5], [2, 5, 6, 7]]  # pairs (0, 1) identical, (2, 3) nested
  rows = packing.pack_rows(seqs, 1, row_length=8, share_prefix=True)
  arrays = packing.to_arrays(rows, 4, num_rows=3, row_length=8, slots=8, pad_id=0)
  ends = {int(s) for s in arrays["sequence_slots"]}
  assert len(ends) == 4  # four distinct last tokens
  for i, s in enumerate(seqs):
    assert unpack(arrays, i)[0] == s


def test_groups_that_do_not_fit_fall_back_to_plain_sequences():
  a, b = list(range(2, 12)), list(range(2, 8)) + [40, 41, 42, 43]  # 10 + 10 tokens, 6 shared -> group of 14
  items = packing.make_items([a, b], [(0, 1)], row_length=12, share_prefix=True)
  assert [len(it.tokens) for it in items] == [10, 10]
  items = packing.make_items([a, b], [(0, 1)], row_length=14, share_prefix=True)
  assert [len(it.tokens) for it in items] == [14]
  with pytest.raises(ValueError, match="sequence 1 has 10 tokens, more than the packed row length 9"):
    packing.make_items([a[:5], b], [], row_length=9, share_prefix=False)


def test_packed_mask_is_the_per_sequence_causal_window_mask():
  """Each packed sequence's block of the packed mask equals the padded mask of that sequence alone."""
  seqs = [[2, 3, 4, 5, 6, 7, 8, 9, 10], [2, 3, 4, 5, 6, 7, 11, 12], [5, 6], [9, 9, 9, 9]]
  rows = packing.pack_rows(seqs, 1, row_length=32, share_prefix=True)
  arr = packing.to_arrays(rows, 4, num_rows=1, row_length=32, slots=4, pad_id=0)
  for window in (None, 3):
    mask = np.asarray(layers.packed_attention_mask(arr["segment_ids"], arr["positions"], arr["branch_ids"], window))
    for i, s in enumerate(seqs):
      row, slot = divmod(int(arr["sequence_slots"][i]), 4)
      last = int(arr["last_positions"][row, slot])
      seg, pos, br = arr["segment_ids"][row], arr["positions"][row], arr["branch_ids"][row]
      cols = np.nonzero((seg == seg[last]) & ((br == 0) | (br == br[last])) & (pos <= pos[last]))[0]
      alone = np.asarray(layers.attention_mask(np.ones((1, len(s)), np.int32), window))[0, 0]
      np.testing.assert_array_equal(mask[row, 0][np.ix_(cols, cols)], alone)
      # and nothing outside the sequence's own tokens is visible from its last token
      assert set(np.nonzero(mask[row, 0, last])[0]) <= set(cols)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return helpers.tiny_model_and_data(tmp_path_factory, "packing", settings=("few_shot", "simple_to_complex"))


# With the tests' small BPE vocabulary, HH texts run ~700 tokens (cut to max_length from the left, so a truncated pair
# shares no prefix); the simple-to-complex source pairs (~240 tokens) do share their prompts at max_length 256.
SHARING = {"data.setting": "simple_to_complex", "data.max_length": 256}


@pytest.mark.parametrize("overrides", [
    SHARING,
    pytest.param({"data.max_length": 128, "train.batch_size": 4, "train.grad_accum_steps": 2,
                  "model.last_token_only": False}, marks=pytest.mark.slow),
    pytest.param({**SHARING, "dial.mode": "oracle", "data.pack_rows_multiple": 4}, marks=pytest.mark.slow),
])
def test_packing_does_not_change_losses_or_updates(dirs, overrides):
  """data.packing sequences / shared_prefix vs none: same losses, W, critic loss, gradient norm and parameters after
  3 steps of real data (float32; tolerances 2e-5 relative on metrics, 1e-5 absolute on parameters). The tiny model
  has a sliding window of 7 tokens, so windows across a shared prefix are exercised."""
  common = {"train.batch_size": 2, **overrides}
  runs = {mode: run_steps(helpers.tiny_config(*dirs, **{**common, "data.packing": mode}), 3)
          for mode in packing.MODES}
  s0, h0, _ = runs["none"]
  for mode in ("sequences", "shared_prefix"):
    s1, h1, step = runs[mode]
    assert h1[0].keys() == h0[0].keys()
    keys = [k for k in ("loss", "source_loss", "monitor/target_loss", "target_loss", "wasserstein", "critic_loss",
                        "grad_norm") if k in h0[0]]  # oracle: target_loss enters the loss; no critic runs
    assert len(keys) >= 5 - ("target_loss" in keys) * 2, keys
    for key in keys:
      np.testing.assert_allclose([m[key] for m in h1], [m[key] for m in h0], rtol=2e-5, atol=1e-6, err_msg=key)
    for a, b in zip(jax.tree.leaves(s1.trainable), jax.tree.leaves(s0.trainable)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_shared_prefix_computes_fewer_tokens_on_real_pairs(dirs):
  """On real pairs the prompt is shared: fewer packed tokens than the pairs' own tokens, and no more rows."""
  from tests.test_step import setup
  counts = {}
  for mode in ("sequences", "shared_prefix"):
    _, _, batches, _ = setup(helpers.tiny_config(*dirs, **{**SHARING, "train.batch_size": 8, "data.packing": mode}))
    b = batches.batch(0)
    counts[mode] = (int((b["packed_segment_ids"] > 0).sum()), b["packed_ids"].shape[1])
  assert counts["shared_prefix"][0] < counts["sequences"][0], counts  # source prompts shared (target: scored texts)
  assert counts["shared_prefix"][1] <= counts["sequences"][1]


def test_packing_rejects_an_auxiliary_lm_loss(dirs):
  with pytest.raises(ValueError, match="data.packing='sequences' needs"):
    run_steps(helpers.tiny_config(*dirs, **{"data.packing": "sequences", "dial.aux": "source_sft"}), 1)


def test_auto_packing_shares_prefixes_unless_the_step_needs_every_token():
  from configs import base
  from dial_jax import config as config_lib
  c = base.get_base_config()
  assert c.data.packing == "auto" and config_lib.packing_mode(c) == "shared_prefix"
  c.dial.aux = "target_ntp"
  assert config_lib.packing_mode(c) == "none"
  c.dial.aux, c.model.pooling = "none", "mean"
  assert config_lib.packing_mode(c) == "none"
  c.data.packing = "bogus"
  with pytest.raises(ValueError, match=r"data.packing='bogus' is invalid: must be one of \('auto'"):
    config_lib.validate(c)
