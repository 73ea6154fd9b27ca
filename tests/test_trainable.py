"""What trains: the trainable set of each train.trainable mode, the WDGRL critic carried across steps, DANN's
classifier updated inside the step, and the prefix-cache top model trained like the full model's top layer."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dial_jax import losses
from dial_jax.data import batching, pipeline
from dial_jax.experiments import prefix_cache
from dial_jax.hf import load
from dial_jax.train import state as state_lib
from dial_jax.train.state import merge
from tests import helpers
from tests.test_step import make_step, setup

LAYERS = 4  # the tiny Gemma 3 of tests/models/hf_reference.py


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return helpers.make_tiny_model_dir(tmp_path_factory.mktemp("trainable") / "model")


@pytest.fixture(scope="module")
def dirs(model_dir, tmp_path_factory):
  return model_dir, helpers.prepare_data(tmp_path_factory.mktemp("trainable_data"), settings=("few_shot",))


def _paths(tree):
  return set(flax.traverse_util.flatten_dict(tree))


@pytest.mark.parametrize("mode,k", [("lora", 0), ("top_k", 1), ("top_k", 2), ("full", 0)])
def test_trainable_set_per_mode(model_dir, mode, k):
  config = helpers.tiny_config(model_dir, "unused", **{"train.trainable": mode, "train.top_k_layers": max(k, 1)})
  model, variables, _, _ = load.build_model(config)
  assert model.config.num_layers == LAYERS
  tx, critic_tx = state_lib.make_optimizer(config), state_lib.make_critic_optimizer(config)
  state, _ = state_lib.create_train_state(variables, config, LAYERS, model.config.hidden_size, tx, critic_tx)
  every, trainable, frozen = _paths(variables), _paths(state.trainable), _paths(state.frozen)
  assert trainable | frozen == every and not trainable & frozen
  head = {("params", "score", "kernel")}
  if mode == "lora":
    adapters = {("lora", "backbone", f"layers_{i}", "self_attn", target, ab) for i in range(LAYERS)
                for target in config.lora.targets for ab in ("lora_a", "lora_b")}
    assert adapters <= every
    assert trainable == adapters | head
  elif mode == "top_k":
    top = {f"layers_{i}" for i in range(LAYERS - k, LAYERS)}  # the last k: layers_3 (k=1), layers_2..3 (k=2)
    expected = {p for p in every if p[:2] == ("params", "backbone") and p[2] in top | {"norm"}} | head
    assert {p[2] for p in trainable if p[1] == "backbone"} == top | {"norm"}
    assert trainable == expected
    assert not any(p[0] == "lora" for p in every)
  else:
    assert trainable == every and not frozen


def _tree_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _adam_count(opt_state):
  counts = [np.asarray(x) for x in jax.tree.leaves(opt_state) if np.asarray(x).dtype == np.int32]
  assert counts
  return int(counts[0])


def test_critic_changes_and_is_carried_across_steps(dirs):
  """Each step takes critic_iter Adam steps from the critic it is given and returns the result."""
  config = helpers.tiny_config(*dirs)
  model, state0, batches, (critic, tx, critic_tx, shardings) = setup(config)
  step = make_step(model, critic, tx, critic_tx, config, shardings)
  s1, _ = step(state0, batches.batch(0))
  s2, _ = step(s1, batches.batch(1))
  assert _tree_diff(state0.critic, s1.critic) > 0 and _tree_diff(s1.critic, s2.critic) > 0
  assert _adam_count(s1.critic_opt_state) == config.dial.critic_iter
  assert _adam_count(s2.critic_opt_state) == 2 * config.dial.critic_iter
  # step 2 started from step 1's critic: restarting it from the initial critic gives another result
  s2_fresh, _ = step(s1.replace(critic=state0.critic, critic_opt_state=state0.critic_opt_state), batches.batch(1))
  assert _tree_diff(s2.critic, s2_fresh.critic) > 0


def test_dann_classifier_takes_one_optimizer_step_on_its_bce(dirs):
  """The classifier's update inside the step is the critic optimizer's step on the gradient of the domain BCE at
  the step's embeddings (computed here independently), to 1e-6."""
  config = helpers.tiny_config(*dirs, **{"dial.domain_loss": "dann", "data.packing": "none"})
  model, state0, batches, (critic, tx, critic_tx, shardings) = setup(config)
  step = make_step(model, critic, tx, critic_tx, config, shardings)
  batch = batches.batch(0)
  s1, _ = step(state0, batch)
  parts = ("source_chosen", "source_rejected", "target_chosen", "target_rejected")
  ids = np.concatenate([batch[f"{p}_ids"][0] for p in parts])
  mask = np.concatenate([batch[f"{p}_mask"][0] for p in parts])
  h = jax.jit(model.apply)(merge(state0.trainable, state0.frozen), ids, mask)["embeddings"]
  n_src = 2 * batch["source_chosen_ids"].shape[1]
  bce = lambda params: losses.dann_loss(*jnp.split(critic.apply(params, h), [n_src]))
  grads = jax.grad(bce)(state0.critic)
  updates, _ = critic_tx.update(grads, state0.critic_opt_state, state0.critic)
  expected = optax.apply_updates(state0.critic, updates)
  assert _tree_diff(state0.critic, s1.critic) > 1e-6
  assert _tree_diff(expected, s1.critic) < 1e-6
  assert bce(s1.critic) < bce(state0.critic)


def _pairs_domain(name, n, seed):
  rng = np.random.default_rng(seed)
  prompts = [list(rng.integers(3, 256, int(rng.integers(2, 20)))) for _ in range(n)]
  reply = lambda: list(rng.integers(3, 256, int(rng.integers(1, 12))))
  return pipeline.Domain(name, "pairs", chosen=[[2] + p + reply() for p in prompts],
                         rejected=[[2] + p + reply() for p in prompts])


def test_prefix_cache_top_model_trains_like_full_model_top_k(model_dir):
  """Three DIAL steps (WDGRL, SGD) of the top model on cached bottom-layer outputs update its layer, final norm,
  head and critic as top_k=1 training of the full model updates layers_3, norm, head and critic (float32, the
  parameter updates agree to 1e-3 of their size)."""
  overrides = {"train.trainable": "top_k", "train.top_k_layers": 1, "data.packing": "none", "dial.lambda_": 1.0,
               "train.optimizer": "sgd", "train.learning_rate": 0.05, "train.lr_schedule": "constant",
               "train.max_grad_norm": 0.0, "train.num_steps": 3}
  config = helpers.tiny_config(model_dir, "unused", **overrides)
  model, variables, _, _ = load.build_model(config)
  cfg = model.config
  source, target = _pairs_domain("s", 10, 0), _pairs_domain("t", 10, 1)
  kw = dict(batch_size=2, grad_accum_steps=1, buckets=batching.bucket_lengths(64, 64), seed=0)

  bottom_cfg, top_cfg = prefix_cache.split_config(cfg, 1)
  bottom, top = prefix_cache.split_params(variables["params"], cfg.num_layers, 1)
  cache = prefix_cache.compute_prefix_cache(bottom_cfg, bottom, prefix_cache.token_lists_of([source, target]),
                                            pad_id=cfg.pad_token_id, batch_size=4, max_length=64, min_bucket=64)
  top_model = prefix_cache.top_model(top_cfg, cache.shape[0])
  top_vars = prefix_cache.top_variables(cache, top, variables["params"]["score"]["kernel"])
  runs = []
  for m, v, domains, pad in ((model, variables, (source, target), cfg.pad_token_id),
                             (top_model, top_vars, prefix_cache.reindex([source, target]), cache.shape[0] - 1)):
    tx, critic_tx = state_lib.make_optimizer(config), state_lib.make_critic_optimizer(config)
    state, shardings = state_lib.create_train_state(v, config, m.config.num_layers, cfg.hidden_size, tx, critic_tx)
    state0 = jax.device_get(state)
    step = make_step(m, state_lib.make_critic(config), tx, critic_tx, config, shardings)
    batches = pipeline.PairedBatches(*domains, pad_id=pad, **kw)
    history = []
    for i in range(3):
      state, metrics = step(state, batches.batch(i))
      history.append(jax.device_get(metrics))
    runs.append((state0, jax.device_get(state), history))
  (f0, f3, fh), (t0, t3, th) = runs
  np.testing.assert_allclose([m["loss"] for m in th], [m["loss"] for m in fh], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose([m["wasserstein"] for m in th], [m["wasserstein"] for m in fh], rtol=1e-3, atol=1e-5)

  def delta(s0, s3, path):
    get = lambda s: flax.traverse_util.flatten_dict(s.trainable)
    return np.asarray(get(s3)[path]) - np.asarray(get(s0)[path])

  top_paths = _paths(t3.trainable)
  assert {p[2] for p in top_paths if p[1] == "backbone"} == {"layers_0", "norm"}
  for path in top_paths:
    full_path = path[:2] + ("layers_3",) + path[3:] if path[2:3] == ("layers_0",) else path
    d_full, d_top = delta(f0, f3, full_path), delta(t0, t3, path)
    scale = np.max(np.abs(d_full))
    assert scale > 0, path
    np.testing.assert_allclose(d_top, d_full, atol=1e-3 * scale, rtol=0, err_msg=str(path))
  for name in ("critic",):
    d_full = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), getattr(f3, name), getattr(f0, name))
    d_top = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), getattr(t3, name), getattr(t0, name))
    for a, b in zip(jax.tree.leaves(d_top), jax.tree.leaves(d_full), strict=True):
      np.testing.assert_allclose(a, b, atol=1e-3 * np.max(np.abs(b)) + 1e-9, rtol=0)
