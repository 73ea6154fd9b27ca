"""``train.weight_decay_target=start``: AdamW's decoupled decay toward the starting weights (L2-SP, decoupled)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from dial_jax import config as config_lib
from dial_jax.train import loop
from dial_jax.train import state as state_lib
from tests import helpers


def _config(lr=0.1, wd=0.5, target="start"):
  c = base.get_base_config()
  c.train.learning_rate, c.train.weight_decay, c.train.weight_decay_target = lr, wd, target
  c.train.max_grad_norm, c.train.lr_schedule, c.train.warmup_steps = 0.0, "constant", 0
  return c


PARAMS = {"norm": {"scale": jnp.full((4,), 1.5)}, "dense": {"kernel": jnp.full((4, 4), -2.0), "bias": jnp.ones((4,))}}


def test_decay_pulls_every_parameter_toward_its_start_not_zero():
  tx = state_lib.make_optimizer(_config())
  opt_state = tx.init(PARAMS)
  moved = jax.tree.map(lambda p: p + 0.25, PARAMS)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, moved), opt_state, moved)
  # Zero gradient: the Adam part is 0 and the update is -lr * wd * (p - start) for every parameter, 1-D ones too.
  for u in jax.tree.leaves(updates):
    np.testing.assert_allclose(u, -0.1 * 0.5 * 0.25, rtol=1e-6)
  # At the start itself nothing moves (decay toward zero would move every matrix).
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, PARAMS), opt_state, PARAMS)
  assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates))


def test_it_is_adamw_with_the_origin_moved_to_the_start():
  """From a zero start, decay toward the start is AdamW's decay toward zero on every parameter (no mask)."""
  zero_start = jax.tree.map(jnp.zeros_like, PARAMS)
  tx = state_lib.make_optimizer(_config())
  reference = optax.adamw(0.1, weight_decay=0.5)
  state, ref_state = tx.init(zero_start), reference.init(PARAMS)
  rng = np.random.default_rng(0)
  for _ in range(3):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), PARAMS)
    updates, state = tx.update(grads, state, PARAMS)
    ref_updates, ref_state = reference.update(grads, ref_state, PARAMS)
    for u, r in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates)):
      np.testing.assert_allclose(u, r, rtol=1e-6, atol=1e-7)


def test_config_checks():
  c = _config()
  c.train.optimizer = "sgd"
  with pytest.raises(config_lib.ConfigError, match="weight_decay_target='start'.*adamw"):
    config_lib.validate(c)
  c = _config(target="both")
  with pytest.raises(config_lib.ConfigError, match="train.weight_decay_target='both' is invalid"):
    config_lib.validate(c)


def test_a_run_saved_before_the_key_existed_resumes_and_a_different_target_does_not(tmp_path):
  import json
  saved = json.loads(base.get_base_config().to_json_best_effort())
  del saved["train"]["weight_decay_target"], saved["model"]["head_init"]
  loop.check_resume(saved, base.get_base_config(), tmp_path)  # the added keys at their old behaviour: accepted
  changed = base.get_base_config()
  changed.train.weight_decay_target = "start"
  with pytest.raises(config_lib.ConfigError,
                     match=r"holds another run \(train.weight_decay_target: 'zero' -> 'start'\)"):
    loop.check_resume(saved, changed, tmp_path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return helpers.tiny_model_and_data(tmp_path_factory, "decay")


def test_with_a_probe_head_the_anchor_is_the_probe(tiny):
  """LP-FT + decay toward the start: lr * wd = 1 pulls the head all the way back to its anchor each step, so after
  three steps it is within a few lr of the probe; decay toward zero leaves it within a few lr of zero instead."""
  lr = 1e-3

  def head_after(target):
    return helpers.trained_head_and_probe(helpers.tiny_config(*tiny, **{
        "model.head_init": "probe", "train.num_steps": 3, "train.learning_rate": lr, "train.weight_decay": 1.0 / lr,
        "train.weight_decay_target": target, "train.warmup_steps": 0, "train.lr_schedule": "constant"}))

  head, coef = head_after("start")
  assert np.abs(coef).max() > 20 * lr
  assert np.abs(head - coef).max() <= 3 * lr
  head, coef = head_after("zero")
  assert np.abs(head).max() <= 3 * lr
