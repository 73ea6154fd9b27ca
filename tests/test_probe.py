"""The linear probe on frozen features (``dial_jax.probe``): the experiments' frozen-feature baseline and
``model.head_init='probe'`` (LP-FT), which starts the reward head at the probe."""
import numpy as np
import pytest

from dial_jax import probe
from dial_jax.data import pipeline
from dial_jax.hf import load
from dial_jax.inference import Scorer
from dial_jax.train import loop, state as state_lib
from tests import helpers


def test_fit_recovers_a_planted_preference_direction():
  rng = np.random.default_rng(0)
  d = 16
  w_true = rng.normal(size=d)
  diffs = rng.normal(size=(400, d)) * 50.0  # the scale of LLM features: the fit scales them itself
  flip = (diffs @ w_true) < 0
  diffs[flip] *= -1  # chosen - rejected always agrees with w_true
  noisy = diffs.copy()
  noisy[:40] *= -1   # 10 % label noise
  val = rng.normal(size=(200, d)) * 50.0
  val[(val @ w_true) < 0] *= -1
  coef, l2 = probe.fit((noisy, np.ones(len(noisy))), val)
  assert l2 in probe.L2_GRID
  cos = coef @ w_true / np.linalg.norm(coef) / np.linalg.norm(w_true)
  assert cos > 0.95, cos
  assert probe.pairwise_accuracy(val @ coef) > 0.9
  # the coefficients apply to unscaled features: margins are O(1) logits, not O(scale)
  assert 0.5 < np.median(np.abs(diffs @ coef)) < 50


def test_fit_minimises_the_regularised_pairwise_loss():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(60, 5))
  weights = rng.uniform(0.5, 1.5, size=60)
  w = probe.fit_pairwise_logreg(x, weights, l2=0.1)
  loss = lambda v: np.sum(weights / weights.sum() * np.logaddexp(0, -x @ v)) + 0.05 * v @ v
  for _ in range(20):  # no nearby point is lower: the Newton solution is the optimum
    assert loss(w) <= loss(w + rng.normal(size=5) * 1e-3) + 1e-12


def test_fit_at_a_given_l2_skips_the_validation_choice():
  rng = np.random.default_rng(2)
  x, val = rng.normal(size=(80, 6)) * 30.0, rng.normal(size=(40, 6)) * 30.0
  weights = np.ones(80)
  coef, l2 = probe.fit((x, weights), val, l2=0.5)
  scale = np.sqrt(np.mean(np.sum(x * x, axis=1)))
  assert l2 == 0.5
  np.testing.assert_allclose(coef, probe.fit_pairwise_logreg(x / scale, weights, 0.5) / scale, rtol=1e-6)
  assert probe.fit((x, weights), val)[1] in probe.L2_GRID


def test_scored_texts_become_weighted_pairs_higher_first():
  scores = np.array([1.0, 3.0, 2.0, 2.0])
  hi, lo, w = probe.scored_pairs(scores, 200, seed=0)
  assert np.all(scores[hi] >= scores[lo]) and np.all((w == 0) == (scores[hi] == scores[lo]))


def test_take_is_a_seeded_ordered_draw_of_pairs_or_scored_texts():
  pairs = pipeline.Domain("p", "pairs", chosen=[[i] for i in range(50)], rejected=[[100 + i] for i in range(50)])
  got = pipeline.take(pairs, 7, seed=3)
  assert len(got) == 7 and [c[0] + 100 for c in got.chosen] == [r[0] for r in got.rejected]  # rows stay paired
  assert [c[0] for c in got.chosen] == sorted(c[0] for c in got.chosen)
  assert pipeline.take(pairs, 7, seed=3) == got and pipeline.take(pairs, 7, seed=4) != got
  assert pipeline.take(pairs, 0, seed=3) is pairs and pipeline.take(pairs, 50, seed=3) is pairs
  scored = pipeline.Domain("s", "scored", texts=[[i] for i in range(20)], scores=np.arange(20.0) * 2)
  got = pipeline.take(scored, 5, seed=0)
  np.testing.assert_array_equal(got.scores, [t[0] * 2.0 for t in got.texts])
  # The texts' lengths (load_domain sets them; the evaluation's length check reads them) follow the draw.
  pairs.lengths = np.array([[i, 3] for i in range(50)])
  got = pipeline.take(pairs, 7, seed=3)
  np.testing.assert_array_equal(got.lengths[:, 0], [c[0] for c in got.chosen])
  scored.lengths = np.arange(20) + 1000
  got = pipeline.take(scored, 5, seed=0)
  np.testing.assert_array_equal(got.lengths, [t[0] + 1000 for t in got.texts])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return helpers.tiny_model_and_data(tmp_path_factory, "probe")


@pytest.mark.parametrize("mode,cap,l2", [("source_only", 0, 0.0), ("source_only", 3, 0.0), ("oracle", 0, 1.0),
                                         pytest.param("oracle", 0, 0.0, marks=pytest.mark.slow)])
def test_head_starts_at_the_probe_of_the_labelled_training_pairs(tiny, mode, cap, l2):
  """``cap``: ``model.probe_max_pairs``, the probe fits a seeded draw of that many pairs (``pipeline.take``);
  ``l2``: ``model.probe_l2``, the probe's L2 weight, fixed instead of chosen on the validation split."""
  config = helpers.tiny_config(*tiny, **{"model.head_init": "probe", "dial.mode": mode, "dial.lambda_": 0.0,
                                         "model.probe_max_pairs": cap, "model.probe_l2": l2})
  model, variables, tokenizer, _ = load.build_model(config)
  source, target, evals = loop.load_data(config, tokenizer)
  tx, critic_tx = state_lib.make_optimizer(config), state_lib.make_critic_optimizer(config)
  state, _ = state_lib.create_train_state(variables, config, model.config.num_layers, model.config.hidden_size, tx,
                                          critic_tx)
  scorer = Scorer(model, None, None, batch_size=8, max_length=64)
  before = state_lib.merge(state.trainable, state.frozen)
  state = loop.head_at_probe(state, config, scorer, source, target, evals)
  after = state_lib.merge(state.trainable, state.frozen)

  # Independently: the probe on the starting model's embeddings of the mode's labelled pairs.
  fit_domain, val_domain = (target, evals["target_val"]) if mode == "oracle" else (source, None)
  if cap:
    assert len(fit_domain) > cap
    fit_domain = pipeline.take(fit_domain, cap, config.train.seed)
    assert len(fit_domain) == cap
  ref = Scorer(model, before, None, batch_size=8, max_length=64)
  diffs = lambda d: probe.pair_differences(d, probe.embeddings(ref, d), seed=config.train.seed)
  coef, chosen = probe.fit(diffs(fit_domain), diffs(val_domain)[0] if val_domain is not None else None,
                          l2=l2 or None)
  assert chosen == (l2 or chosen)
  np.testing.assert_allclose(np.asarray(after["params"]["score"]["kernel"])[:, 0], coef, rtol=1e-5, atol=1e-7)
  # Only the head changed, and the new model's margins are the probe's (its Bradley-Terry loss is the lower one).
  flat_before, flat_after = dict(helpers.flatten(before)), dict(helpers.flatten(after))
  changed = [k for k in flat_before if not np.array_equal(flat_before[k], flat_after[k])]
  assert changed == [("params", "score", "kernel")]
  x = diffs(fit_domain)[0]
  margins = lambda v: (lambda r: r[:len(fit_domain)] - r[len(fit_domain):])(Scorer(
      model, v, None, batch_size=8, max_length=64).score_tokens(list(fit_domain.chosen) + list(fit_domain.rejected)))
  np.testing.assert_allclose(margins(after), x @ coef, rtol=1e-4, atol=1e-5)
  assert np.mean(np.logaddexp(0, -margins(after))) < np.mean(np.logaddexp(0, -margins(before)))


def test_the_loop_uses_the_probe_head_only_when_asked(tiny):
  """``loop.train`` starts from the probe with ``head_init='probe'`` (one near-zero-lr step leaves it there)."""
  def head_after(head_init):
    return helpers.trained_head_and_probe(helpers.tiny_config(*tiny, **{
        "model.head_init": head_init, "train.num_steps": 1, "train.learning_rate": 1e-12, "train.warmup_steps": 0}))
  head, coef = head_after("probe")
  np.testing.assert_allclose(head, coef, rtol=1e-4, atol=1e-6)
  head, coef = head_after("normal")
  assert not np.allclose(head, coef, rtol=1e-2, atol=1e-4)


MESH_WORKER = """
import sys
import numpy as np
from dial_jax import parallel, probe
from dial_jax.hf import load
from dial_jax.inference import Scorer
from dial_jax.train import loop, writers
from tests import helpers
config = helpers.tiny_config(sys.argv[1], sys.argv[2], **{"model.head_init": "probe", "train.num_steps": 1,
                             "train.learning_rate": 1e-12, "train.warmup_steps": 0, "train.batch_size": 4})
config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
model, variables, tokenizer, _ = load.build_model(config)
source, target, evals = loop.load_data(config, tokenizer)
coef, _ = probe.fit(probe.pair_differences(source, probe.embeddings(Scorer(model, variables, None, batch_size=8,
                                                                           max_length=64), source)))
out = loop.train(config, model, variables, source, target, {}, mesh=parallel.make_mesh(config.mesh),
                 pad_id=model.config.pad_token_id, writer=writers.MemoryWriter(), progress=False)
head = np.asarray(out.variables["params"]["score"]["kernel"])[:, 0]
print("MAXDIFF", float(np.abs(head - coef).max()), float(np.abs(coef).max()))
"""


def test_the_probe_head_on_a_sharded_mesh(tiny):
  """On 8 CPU devices as a (2, 2, 2) mesh, the head is fitted from the mesh-sharded scorer's embeddings and placed
  with the head's sharding: it equals the probe fitted on one device."""
  import os
  import subprocess
  import sys
  from pathlib import Path
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", MESH_WORKER, str(tiny[0]), str(tiny[1])], capture_output=True,
                        text=True, env=env, cwd=Path(__file__).resolve().parents[1], timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("MAXDIFF ")][0]
  diff, scale = map(float, line.split()[1:])
  assert scale > 1e-3 and diff < 1e-5 * max(scale, 1.0), line


def test_length_direction_recovers_a_planted_direction_without_the_target_labels():
  """``probe.length_direction`` finds the direction along which features grow with length, within pairs (a shared
  prompt part cancels) and within a scored domain (a shared shift cancels); swapping pairs' texts, all a target's
  labels could change, changes nothing; equal lengths are an error."""
  rng = np.random.default_rng(0)
  d, n, m = 32, 400, 300
  u = rng.normal(size=d)
  u /= np.linalg.norm(u)
  lengths = rng.integers(5, 60, (n, 2))
  prompt = 5.0 * rng.normal(size=(n, d))  # large and shared by a pair's two texts
  h_c, h_r = (prompt + 0.05 * lengths[:, k, None] * u + 0.05 * rng.normal(size=(n, d)) for k in (0, 1))
  words = rng.integers(100, 500, m)
  h_t = 3.0 + 0.05 * words[:, None] * u + 0.5 * rng.normal(size=(m, d))  # the same slope
  got, r = probe.length_direction([((h_c, h_r), lengths), ((h_t, None), words)])
  assert got @ u > 0.99 and r > 0.9 and np.linalg.norm(got) == pytest.approx(1.0)
  swap = rng.random(n) < 0.5
  h_c2, h_r2 = np.where(swap[:, None], h_r, h_c), np.where(swap[:, None], h_c, h_r)
  got2, r2 = probe.length_direction([((h_c2, h_r2), np.where(swap[:, None], lengths[:, ::-1], lengths)),
                                     ((h_t, None), words)])
  np.testing.assert_allclose(got2, got, atol=1e-12)
  assert r2 == pytest.approx(r, abs=1e-12)
  with pytest.raises(ValueError, match="no length direction"):
    probe.length_direction([((h_c, h_r), np.full((n, 2), 7))])


def test_the_loop_fits_the_length_direction_on_the_starting_model(tiny):
  """With ``dial.length_blind`` the loop fits the direction on the starting model's embeddings of both training
  domains (equal to fitting it independently), trains with it, and refuses, before any work, domains without
  lengths."""
  from dial_jax import parallel
  from dial_jax.train import writers
  config = helpers.tiny_config(*tiny, **{"dial.length_blind": True, "train.num_steps": 1})
  model, variables, tokenizer, _ = load.build_model(config)
  source, target, _ = loop.load_data(config, tokenizer)
  ref = Scorer(model, variables, None, batch_size=8, max_length=64)
  want, _ = probe.length_direction([(probe.embeddings(ref, d), d.lengths) for d in (source, target)])
  mesh = parallel.make_mesh(config.mesh)
  tx, critic_tx = state_lib.make_optimizer(config), state_lib.make_critic_optimizer(config)
  state, _ = state_lib.create_train_state(variables, config, model.config.num_layers, model.config.hidden_size, tx,
                                          critic_tx)
  got = loop.fit_length_direction(state, config, Scorer(model, None, None, batch_size=8, max_length=64), source,
                                  target)
  np.testing.assert_allclose(got, want, atol=1e-5)
  out = loop.train(config, model, variables, source, target, {}, mesh=mesh, pad_id=model.config.pad_token_id,
                   writer=writers.MemoryWriter(), progress=False)
  assert np.isfinite(np.asarray(out.variables["params"]["score"]["kernel"])).all()
  target.lengths = None
  with pytest.raises(ValueError, match="dial.length_blind needs each text's length in words; domain"):
    loop.train(config, model, variables, source, target, {}, mesh=mesh, pad_id=model.config.pad_token_id,
               writer=writers.MemoryWriter(), progress=False)
