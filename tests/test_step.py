"""The jitted DIAL train step on a tiny random Gemma 3 and real prepared data."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from dial_jax import config as config_lib
from dial_jax.hf import load
from dial_jax.train import loop
from dial_jax.train import state as state_lib
from dial_jax.train import step as step_lib
from tests import helpers


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return helpers.tiny_model_and_data(tmp_path_factory, "step", settings=("few_shot", "simple_to_complex"))


def setup(config):
  model, variables, tokenizer, _ = load.build_model(config)
  source, target, _ = loop.load_data(config, tokenizer)
  batches = loop.paired_batches(config, source, target, model.config.pad_token_id,
                               loop.parallel.make_mesh(config.mesh))
  tx, critic_tx = state_lib.make_optimizer(config), state_lib.make_critic_optimizer(config)
  state, shardings = state_lib.create_train_state(variables, config, model.config.num_layers,
                                                  model.config.hidden_size, tx, critic_tx)
  return model, state, batches, (state_lib.make_critic(config), tx, critic_tx, shardings)


def make_step(model, critic, tx, critic_tx, config, shardings):
  """The jitted step as the loop builds it: explicit state shardings, batch replicated on the 1-device mesh."""
  batch_sharding = NamedSharding(shardings.step.mesh, PartitionSpec())
  return step_lib.make_train_step(model, critic, tx, critic_tx, config, state_shardings=shardings,
                                  batch_sharding=batch_sharding, donate=False)


def run_steps(config, n):
  model, state, batches, (critic, tx, critic_tx, shardings) = setup(config)
  step = make_step(model, critic, tx, critic_tx, config, shardings)
  history = []
  for i in range(n):
    state, metrics = step(state, batches.batch(i))
    history.append(jax.device_get(metrics))
  return state, history, step


@pytest.mark.parametrize("trainable", ["lora", "top_k"])
def test_compiles_once_and_updates_only_trainable(dirs, trainable):
  """The trainable set is exactly the mode's (LoRA: adapters + head; top_k=1: the last layer, final norm, head),
  every trainable leaf moves and every frozen one stays."""
  config = helpers.tiny_config(*dirs, **{"train.trainable": trainable, "train.top_k_layers": 1})
  model, state0, batches, (critic, tx, critic_tx, shardings) = setup(config)
  every = set(flax.traverse_util.flatten_dict(state_lib.merge(state0.trainable, state0.frozen)))
  last = f"layers_{model.config.num_layers - 1}"
  top = {("params", "backbone", last), ("params", "backbone", "norm")}
  chosen = (lambda k: k[0] == "lora") if trainable == "lora" else (lambda k: k[:3] in top)
  expected = {k for k in every if k[:2] == ("params", "score") or chosen(k)}
  assert set(flax.traverse_util.flatten_dict(state0.trainable)) == expected
  assert len(expected) > 2 and any(k[0] == "lora" for k in expected) == (trainable == "lora")
  frozen_before = jax.tree.map(np.asarray, state0.frozen)
  trainable_before = jax.tree.map(np.asarray, state0.trainable)
  step = make_step(model, critic, tx, critic_tx, config, shardings)
  state = state0
  for i in range(3):
    state, metrics = step(state, batches.batch(i))
  assert step._cache_size() == 1
  assert int(state.step) == 3
  for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(state.frozen), strict=True):
    np.testing.assert_array_equal(a, np.asarray(b))
  changed = [not np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(trainable_before),
                                                                   jax.tree.leaves(state.trainable), strict=True)]
  assert all(changed), f"every trainable leaf ({trainable}) should move"
  assert set(flax.traverse_util.flatten_dict(state.trainable)) == expected
  for key in ("source_loss", "monitor/target_accuracy", "wasserstein", "gradient_penalty", "reward_std", "grad_norm",
              "learning_rate", "critic_slope", "balance/source_grad_norm", "balance/domain_grad_norm"):
    assert np.isfinite(metrics[key]), key


def test_source_only_equals_lambda_zero_exactly(dirs):
  s1, h1, _ = run_steps(helpers.tiny_config(*dirs, **{"dial.mode": "source_only"}), 3)
  s2, h2, _ = run_steps(helpers.tiny_config(*dirs, **{"dial.lambda_": 0.0}), 3)
  for a, b in zip(jax.tree.leaves(s1.trainable), jax.tree.leaves(s2.trainable)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert [m["loss"] for m in h1] == [m["loss"] for m in h2]


def test_domain_loss_pulls_source_and_target_together(dirs):
  """With lambda > 0 the critic's W falls over training compared with a negligible lambda (same data, seed; at
  lambda = 0 exactly the critic is not run at all)."""
  common = {"train.trainable": "full", "train.learning_rate": 1e-3, "train.lr_schedule": "constant",
            "dial.critic_iter": 5, "dial.critic_learning_rate": 1e-2}
  _, h0, _ = run_steps(helpers.tiny_config(*dirs, **common, **{"dial.lambda_": 1e-6}), 25)
  _, h1, _ = run_steps(helpers.tiny_config(*dirs, **common, **{"dial.lambda_": 1.0}), 25)
  w0 = np.mean([m["wasserstein"] for m in h0[-5:]])
  w1 = np.mean([m["wasserstein"] for m in h1[-5:]])
  assert w1 < 0.5 * w0, (w0, w1)


def test_pair_differences_features_ignore_domain_shifts_and_pair_order():
  """``dial.align=pair_differences``: the domain loss sees each pair's h_chosen - h_rejected with both signs, so a
  shift of a whole domain and which side of an (unlabelled) pair is called chosen change nothing; ``embeddings``
  passes the embeddings through unchanged."""
  rng = np.random.default_rng(0)
  b_s, b_t, dim = 3, 2, 5
  h = jnp.asarray(rng.standard_normal((2 * b_s + 2 * b_t, dim)), jnp.float32)
  np.testing.assert_array_equal(step_lib.domain_features(h, b_s, b_t, "embeddings"), h)
  f = np.asarray(step_lib.domain_features(h, b_s, b_t, "pair_differences"))
  assert f.shape == h.shape
  np.testing.assert_allclose(f[:b_s], h[:b_s] - h[b_s:2 * b_s])
  np.testing.assert_allclose(f[b_s:2 * b_s], -f[:b_s])
  np.testing.assert_allclose(f[2 * b_s:2 * b_s + b_t], h[2 * b_s:2 * b_s + b_t] - h[2 * b_s + b_t:])
  shifted = h.at[:2 * b_s].add(7.0).at[2 * b_s:].add(jnp.arange(dim, dtype=jnp.float32) * 30)
  np.testing.assert_allclose(step_lib.domain_features(shifted, b_s, b_t, "pair_differences"), f, atol=1e-4)
  swapped = h.at[2 * b_s].set(h[2 * b_s + b_t]).at[2 * b_s + b_t].set(h[2 * b_s])  # target pair 0 reversed
  g = np.asarray(step_lib.domain_features(swapped, b_s, b_t, "pair_differences"))
  sort = lambda x: x[np.lexsort(x.T)]
  np.testing.assert_allclose(sort(g[2 * b_s:]), sort(f[2 * b_s:]))
  # So MMD between the domains' difference features is unchanged by the shift; between the embeddings it is not.
  from dial_jax import losses
  mmd = lambda x, align: float(losses.mmd_loss(*jnp.split(step_lib.domain_features(x, b_s, b_t, align), [2 * b_s])))
  assert mmd(shifted, "pair_differences") == pytest.approx(mmd(h, "pair_differences"), rel=1e-4)
  assert abs(mmd(shifted, "embeddings") - mmd(h, "embeddings")) > 0.1
  # And a linear critic cannot see them: each domain's both-sign features average to 0, so its W is its bias - bias.
  a, b = rng.standard_normal(dim), 0.7
  w = lambda x: float(np.mean(x[:2 * b_s] @ a + b) - np.mean(x[2 * b_s:] @ a + b))
  assert w(f) == pytest.approx(0.0, abs=1e-5) and abs(w(np.asarray(h))) > 1e-2


def test_pair_differences_is_what_the_step_aligns(dirs):
  """The option reaches the step: the first step's source loss is the same, its W is another (the critic sees other
  inputs), and every metric stays finite over a few steps. A linear critic is refused: on both-sign differences its
  W is identically 0 (each domain's features average to 0), which is what a first grid with it measured."""
  common = {"dial.critic_input_scale": "rms", "dial.lambda_": 1.0, "dial.critic_activation": "gelu"}
  linear = helpers.tiny_config(*dirs, **{**common, "dial.critic_activation": "none"})
  linear.dial.align = "pair_differences"
  with pytest.raises(config_lib.ConfigError, match="needs a nonlinear critic"):
    config_lib.validate(linear)
  _, h_emb, _ = run_steps(helpers.tiny_config(*dirs, **common), 3)
  _, h_diff, _ = run_steps(helpers.tiny_config(*dirs, **common, **{"dial.align": "pair_differences"}), 3)
  assert h_diff[0]["source_loss"] == pytest.approx(h_emb[0]["source_loss"], rel=1e-6)
  assert abs(h_diff[0]["wasserstein"] - h_emb[0]["wasserstein"]) > 1e-4
  for m in h_diff:
    for key in ("loss", "wasserstein", "critic_slope", "gradient_penalty", "balance/domain_grad_norm"):
      assert np.isfinite(m[key]), key
    assert m["loss"] == pytest.approx(m["source_loss"] + m["domain_weight"] * m["domain_loss"], rel=1e-5)


# CI: WDGRL; the other losses train in test_every_option_trains, and log their gap here in the full run
@pytest.mark.parametrize("domain_loss", ["wdgrl", *(pytest.param(d, marks=pytest.mark.slow)
                                                    for d in ("mmd", "coral", "dann"))])
def test_domain_gap_is_logged_for_the_distance_losses(dirs, domain_loss):
  """``domain_gap`` (what the label-free lambda rule reads) is the distance the domain loss estimated: W for WDGRL,
  MMD² or CORAL's value; DANN's loss is a classifier's cross-entropy, not a distance, so it logs none."""
  _, history, _ = run_steps(helpers.tiny_config(*dirs, **{"dial.domain_loss": domain_loss, "dial.lambda_": 1.0,
                                                          "dial.critic_activation": "gelu"}), 1)
  m = history[0]
  if domain_loss == "dann":
    assert "domain_gap" not in m
  else:
    assert m["domain_gap"] == pytest.approx(m["domain_loss"], rel=1e-6) and m["domain_gap"] > 0
  assert ("wasserstein" in m) == (domain_loss == "wdgrl")
  _, source_only, _ = run_steps(helpers.tiny_config(*dirs, **{"dial.domain_loss": domain_loss,
                                                              "dial.mode": "source_only"}), 1)
  assert "domain_gap" not in source_only[0]


@pytest.mark.parametrize("overrides", [
    {"dial.domain_loss": "mmd", "dial.mode": "oracle", "dial.aux": "source_sft"},
    {"dial.domain_loss": "coral", "dial.aux": "target_ntp", "train.trainable": "top_k", "train.top_k_layers": 1},
    {"dial.domain_loss": "dann", "train.trainable": "full", "dial.lambda_warmup_steps": 2},
    pytest.param({"dial.critic_activation": "gelu", "data.setting": "simple_to_complex"}, marks=pytest.mark.slow),
    pytest.param({"dial.domain_loss": "dann", "dial.align": "pair_differences", "dial.critic_activation": "relu",
                  "data.setting": "simple_to_complex"}, marks=pytest.mark.slow),
])
def test_every_option_trains(dirs, overrides):
  config = helpers.tiny_config(*dirs, **overrides)
  state, history, _ = run_steps(config, 2)
  assert all(np.isfinite(m["loss"]) for m in history)
  assert int(state.step) == 2
  if "dial.aux" in overrides:  # the LM loss of a random model over a 256-token vocabulary, added to the loss
    for m in history:
      assert 0.5 * np.log(256) < m["aux_loss"] < 3 * np.log(256), m["aux_loss"]
      main = m["source_loss"] + (m["target_loss"] if "target_loss" in m else 0.0)
      assert m["loss"] == pytest.approx(main + m["domain_weight"] * m["domain_loss"] + m["aux_loss"], rel=1e-5)
  if overrides.get("dial.lambda_warmup_steps"):
    assert history[0]["domain_weight"] == 0 and history[1]["domain_weight"] == pytest.approx(0.005)
  if overrides.get("dial.mode") == "oracle":  # oracle: source + target BT, lambda forced to 0
    m = history[0]
    assert m["domain_weight"] == 0
    assert m["loss"] == pytest.approx(m["source_loss"] + m["target_loss"] + m["aux_loss"],
                                      rel=1e-5)


def test_shuffled_domain_labels_change_only_what_the_domain_loss_compares(dirs):
  """The control ``dial.domain_labels=shuffled``: same forward pass and source loss as DIAL from the same start, but
  the critic compares random halves of the mixed rows, so its W differs; source-only ignores the option."""
  _, true, _ = run_steps(helpers.tiny_config(*dirs), 1)
  _, shuffled, _ = run_steps(helpers.tiny_config(*dirs, **{"dial.domain_labels": "shuffled"}), 1)
  assert shuffled[0]["source_loss"] == pytest.approx(true[0]["source_loss"], rel=1e-6)
  assert shuffled[0]["wasserstein"] != pytest.approx(true[0]["wasserstein"], rel=1e-3)
  _, so_true, _ = run_steps(helpers.tiny_config(*dirs, **{"dial.mode": "source_only"}), 1)
  _, so_shuffled, _ = run_steps(helpers.tiny_config(*dirs, **{"dial.mode": "source_only",
                                                              "dial.domain_labels": "shuffled"}), 1)
  assert so_shuffled[0]["loss"] == so_true[0]["loss"]


@pytest.mark.parametrize("trainable", ["lora", pytest.param("full", marks=pytest.mark.slow)])
def test_last_token_only_does_not_change_losses_or_updates(dirs, trainable):
  """model.last_token_only (final layer on the last real token only) is a pure speed-up: same losses, W,
  gradient norms and parameters after 3 steps (float32, 1e-5)."""
  runs = [run_steps(helpers.tiny_config(*dirs, **{"model.last_token_only": flag, "train.trainable": trainable}), 3)
          for flag in (False, True)]
  (s0, h0, _), (s1, h1, _) = runs
  for key in ("loss", "source_loss", "wasserstein", "grad_norm"):
    np.testing.assert_allclose([m[key] for m in h1], [m[key] for m in h0], rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(s1.trainable), jax.tree.leaves(s0.trainable)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_grad_accumulation_matches_one_big_batch(dirs):
  """4 micro-batches of 2 pairs give the update of one batch of 8 when lambda = 0 (BT is a mean over pairs)."""
  kw = {"dial.lambda_": 0.0, "train.batch_size": 8, "train.max_grad_norm": 0.0}
  s1, h1, _ = run_steps(helpers.tiny_config(*dirs, **kw), 1)
  s2, h2, _ = run_steps(helpers.tiny_config(*dirs, **kw, **{"train.grad_accum_steps": 4}), 1)
  np.testing.assert_allclose(h1[0]["grad_norm"], h2[0]["grad_norm"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s1.trainable), jax.tree.leaves(s2.trainable)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_nonfinite_step_is_skipped(dirs):
  config = helpers.tiny_config(*dirs)
  model, state, batches, (critic, tx, critic_tx, shardings) = setup(config)
  step = make_step(model, critic, tx, critic_tx, config, shardings)
  poisoned = state.replace(trainable=jax.tree.map(lambda x: x.at[...].set(jnp.nan) if x.ndim == 2 and
                                                  x.shape[-1] == 1 else x, state.trainable))
  new, metrics = step(poisoned, batches.batch(0))
  assert int(metrics["nonfinite"]) == 1
  assert int(new.step) == 1
  for a, b in zip(jax.tree.leaves(poisoned.opt_state), jax.tree.leaves(new.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_project_out_leaves_the_domain_gradient_nothing_along_the_direction():
  """``dial.length_blind``'s projection: the features lose their component along the direction, and so does the
  gradient of any domain loss computed from them (without it, it has one)."""
  rng = np.random.default_rng(0)
  h = jnp.asarray(50.0 * rng.normal(size=(16, 24)), jnp.float32)
  u = rng.normal(size=24)
  u /= np.linalg.norm(u)
  w1, w2 = jnp.asarray(rng.normal(size=(24, 8)), jnp.float32), jnp.asarray(rng.normal(size=8), jnp.float32)
  critic = lambda x: jax.nn.gelu(x @ w1 / 50.0) @ w2
  w_estimate = lambda x: jnp.mean(critic(x[:8])) - jnp.mean(critic(x[8:]))
  projected = step_lib.project_out(h, u)
  np.testing.assert_allclose(np.asarray(projected) @ u, 0.0, atol=1e-3)
  np.testing.assert_allclose(np.asarray(h - projected), np.outer(np.asarray(h) @ u, u), rtol=1e-4, atol=1e-3)
  plain = np.asarray(jax.grad(w_estimate)(h)) @ u
  blind = np.asarray(jax.grad(lambda x: w_estimate(step_lib.project_out(x, u)))(h)) @ u
  assert np.abs(plain).max() > 1e-3 and np.abs(blind).max() < 1e-6


def test_length_blind_step_changes_only_what_the_domain_loss_sees(dirs):
  """With ``dial.length_blind`` the step needs its direction (and refuses one without the flag); from the same start
  the forward pass and source loss are DIAL's, the critic's features (so W) are not."""
  config = helpers.tiny_config(*dirs, **{"dial.length_blind": True})
  model, state, batches, (critic, tx, critic_tx, shardings) = setup(config)
  with pytest.raises(ValueError, match="length_direction is needed with dial.length_blind"):
    make_step(model, critic, tx, critic_tx, config, shardings)
  u = np.random.default_rng(0).normal(size=model.config.hidden_size)
  with pytest.raises(ValueError, match="length_direction is needed with dial.length_blind"):
    step_lib.make_train_step(model, critic, tx, critic_tx, helpers.tiny_config(*dirs), length_direction=u)
  # The starting (linear) critic's own slope as the direction: it then sees nothing but its bias until it moves.
  slope = np.asarray(jax.grad(lambda x: critic.apply(state.critic, x[None])[0])(jnp.zeros(u.shape, jnp.float32)))
  step = step_lib.make_train_step(model, critic, tx, critic_tx, config, state_shardings=shardings,
                                  batch_sharding=NamedSharding(shardings.step.mesh, PartitionSpec()), donate=False,
                                  length_direction=slope / np.linalg.norm(slope))
  _, blind = step(state, batches.batch(0))
  _, plain, _ = run_steps(helpers.tiny_config(*dirs), 1)
  assert float(blind["source_loss"]) == pytest.approx(float(plain[0]["source_loss"]), rel=1e-6)
  assert abs(float(blind["wasserstein"])) < 0.5 * abs(float(plain[0]["wasserstein"]))
