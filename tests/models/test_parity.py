"""Numerical parity with transformers (PyTorch, float32, eager attention) for every supported family.

Tolerance: 1e-4 absolute on every layer's hidden states (real tokens only), the final normed hidden
state and the reward, in float32 with 'highest' matmul precision (measured errors are ~1e-6).
"""
import flax
import numpy as np
import pytest

from dial_jax.hf import mapping
from dial_jax.hf.load import load_reward_model, read_state_dict
from tests.models.hf_reference import FAMILIES, make_reference, random_batch, reference_outputs

TOL = 1e-4
LENGTHS = [24, 5, 13, 1]  # mixed short and long; gemma3's window is 7 (5 for the softcap variant)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_pair(request, tmp_path_factory):
  ref = make_reference(request.param)
  path = tmp_path_factory.mktemp(request.param)
  ref.save_pretrained(path)
  model, variables, _ = load_reward_model(path)
  return request.param, ref, model, variables, path


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_hidden_states_and_rewards_match_transformers(family_pair, padding_side):
  family, ref, model, variables, _ = family_pair
  ids, mask = random_batch(LENGTHS, 24, ref.config.pad_token_id, padding_side, seed=1)
  ref_hidden, ref_last, ref_rewards = reference_outputs(ref, ids, mask)
  final, hidden = model.apply(variables, ids, mask, method=model.hidden_states)
  real = mask.astype(bool)
  # transformers' hidden_states: embeddings, layer outputs..., and the final *normed* state last.
  assert len(ref_hidden) == len(hidden)
  for i, (ours, theirs) in enumerate(zip(hidden[:-1], ref_hidden[:-1])):
    np.testing.assert_allclose(np.asarray(ours)[real], theirs[real], atol=TOL, rtol=0, err_msg=f"{family} layer {i}")
  np.testing.assert_allclose(np.asarray(final)[real], ref_last[real], atol=TOL, rtol=0)
  rewards = model.apply(variables, ids, mask)["rewards"]
  np.testing.assert_allclose(np.asarray(rewards), ref_rewards, atol=TOL, rtol=0)


def test_left_and_right_padding_give_the_same_rewards(family_pair):
  _, ref, model, variables, _ = family_pair
  right = random_batch(LENGTHS, 24, ref.config.pad_token_id, "right", seed=2)
  left = random_batch(LENGTHS, 24, ref.config.pad_token_id, "left", seed=2)
  np.testing.assert_allclose(model.apply(variables, *right)["rewards"], model.apply(variables, *left)["rewards"],
                             atol=1e-5, rtol=0)


def test_mapping_round_trips_every_checkpoint_tensor(family_pair):
  _, _, _, variables, path = family_pair
  shapes = {"/".join(k): v.shape for k, v in flax.traverse_util.flatten_dict(variables["params"]).items()}
  for name, tensor in read_state_dict(path).items():
    target = mapping.hf_name_to_path(name)
    assert target is not None, name
    param_path, kind = target
    assert mapping.path_to_hf_name(param_path) == name
    assert mapping.kind_of_path(param_path) == kind
    flat = mapping.to_param(np.asarray(tensor), kind, shapes[param_path])
    np.testing.assert_array_equal(mapping.to_hf(flat, kind), tensor)
