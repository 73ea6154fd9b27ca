"""The CPU experiment runner: the prefix-cache shortcut is exact, and a short real run fills the results file."""
from pathlib import Path

import numpy as np
import pytest

from dial_jax.data import batching
from dial_jax.data.pipeline import Domain
from dial_jax.experiments import prefix_cache, runner
from dial_jax.hf import load
from dial_jax.models.reward import RewardModel
from tests import helpers

REPO = Path(__file__).resolve().parents[1]


def _token_lists(n, seed=0):
  rng = np.random.default_rng(seed)
  return [list(rng.integers(3, 256, int(rng.integers(2, 40)))) for _ in range(n)]


@pytest.mark.parametrize("family,top_layers", [("gemma3", 1), ("gemma3", 2), ("llama", 1)])
def test_top_model_on_prefix_cache_equals_full_model(tmp_path, family, top_layers):
  """Rewards and embeddings of the top model over cached bottom-layer outputs (final layer on the last token
  only) match the full model run on the tokens, to 1e-4."""
  model_dir = helpers.make_tiny_model_dir(tmp_path / family, family)
  model, variables, _ = load.load_reward_model(model_dir)
  cfg = model.config
  texts = _token_lists(11)
  domain = Domain(name="d", kind="scored", texts=texts, scores=np.zeros(len(texts), np.float32))

  ids, mask = batching.pad(texts, 40, cfg.pad_token_id)
  full = model.apply(variables, ids, mask)

  bottom_cfg, top_cfg = prefix_cache.split_config(cfg, top_layers)
  bottom, top = prefix_cache.split_params(variables["params"], cfg.num_layers, top_layers)
  cache = prefix_cache.compute_prefix_cache(bottom_cfg, bottom, prefix_cache.token_lists_of([domain]),
                                            pad_id=cfg.pad_token_id, batch_size=4, max_length=64, min_bucket=8)
  assert cache.shape == (sum(map(len, texts)) + 1, cfg.hidden_size)
  (rows,) = prefix_cache.reindex([domain])
  top_model = prefix_cache.top_model(top_cfg, cache.shape[0])
  top_vars = prefix_cache.top_variables(cache, top, variables["params"]["score"]["kernel"])
  rid, rmask = batching.pad(rows.texts, 40, top_model.config.pad_token_id)
  out = top_model.apply(top_vars, rid, rmask)
  np.testing.assert_allclose(out["embeddings"], full["embeddings"], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(out["rewards"], full["rewards"], atol=1e-4, rtol=1e-4)


class _Killed(Exception):
  pass


def test_prefix_cache_build_resumes_after_a_kill(tmp_path):
  """A build killed after its second checkpoint resumes there (only the remaining batches run) and gives the
  same array, bit for bit, as an uninterrupted build; a partial build with another plan is started over."""
  model_dir = helpers.make_tiny_model_dir(tmp_path / "m", "gemma3")
  model, variables, _ = load.load_reward_model(model_dir)
  cfg = model.config
  bottom_cfg, _ = prefix_cache.split_config(cfg, 1)
  bottom, _ = prefix_cache.split_params(variables["params"], cfg.num_layers, 1)
  texts = _token_lists(23, seed=2)
  shape = prefix_cache.cache_shape(texts, cfg.hidden_size)
  plan = dict(pad_id=cfg.pad_token_id, batch_size=2, max_length=64, min_bucket=8, checkpoint_every=3)
  expected = prefix_cache.compute_prefix_cache(bottom_cfg, bottom, texts, **plan)

  calls = []

  def fill(kill_at=None):
    def run(out, done, checkpoint):
      calls.append(done)

      def maybe_kill(n):
        checkpoint(n)
        if n == kill_at:
          raise _Killed
      return prefix_cache.compute_prefix_cache(bottom_cfg, bottom, texts, **plan, out=out, batches_done=done,
                                               checkpoint=maybe_kill)
    return run

  path = tmp_path / "cache" / "s-key.npy"
  with pytest.raises(_Killed):
    prefix_cache.load_or_compute(path, shape, fill(kill_at=6), plan)
  assert not path.exists() and path.with_name("s-key.partial.npy").exists()
  cache, seconds = prefix_cache.load_or_compute(path, shape, fill(), plan)
  assert calls == [0, 6]
  np.testing.assert_array_equal(cache, expected)
  assert seconds > 0 and not path.with_name("s-key.partial.json").exists()
  assert prefix_cache.load_or_compute(path, shape, fill(), plan)[1] == seconds  # finished: loaded, not rebuilt
  assert calls == [0, 6]

  other = tmp_path / "cache" / "t-key.npy"
  with pytest.raises(_Killed):
    prefix_cache.load_or_compute(other, shape, fill(kill_at=3), plan)
  # The recorded plan differs from the one the partial build was made with (the fill itself is unchanged).
  cache, _ = prefix_cache.load_or_compute(other, shape, fill(), {**plan, "batch_size": 4})
  assert calls[-1] == 0  # another plan: started over
  np.testing.assert_array_equal(cache, expected)


def test_last_token_only_matches_full_final_layer(tmp_path):
  """RewardModel(last_token_only=True) gives the same rewards as computing the final layer everywhere."""
  model_dir = helpers.make_tiny_model_dir(tmp_path / "m", "gemma3")
  model, variables, _ = load.load_reward_model(model_dir)
  fast = RewardModel(model.config, pooling="last", last_token_only=True)
  ids, mask = batching.pad(_token_lists(5, seed=1), 48, model.config.pad_token_id)
  np.testing.assert_allclose(fast.apply(variables, ids, mask)["rewards"], model.apply(variables, ids, mask)["rewards"],
                             atol=1e-5, rtol=1e-5)


def _row(mode, lam, seed, val, src):
  """A finished run without a target_test entry: a rule that read the test split would raise KeyError."""
  return {"setting": "s", "mode": mode, "domain_loss": "wdgrl", "learning_rate": 5e-5, "lambda": lam, "seed": seed,
          "eval": {"target_val": {"accuracy": val, "n": 200}, "source_val": {"accuracy": src, "n": 150}},
          "history": [{"step": 10, "wasserstein": 2.0}, {"step": 20, "wasserstein": 1.0}]}


def test_selection_uses_target_val_never_test():
  from dial_jax.experiments import selection
  so = [_row("source_only", 0.0, s, 0.6, 0.8) for s in range(3)]
  dial = {lam: [_row("dial", lam, s, 0.6 + 0.1 * (lam == 10.0), 0.8 - 0.3 * (lam == 100.0)) for s in range(3)]
          for lam in (1.0, 10.0, 100.0)}
  assert selection.target_val_lambda(dial) == 10.0
  assert selection.label_free_lambda(so, dial) == 10.0  # 100 loses the source fit
  assert selection.label_free_lambda(so, {}) is None and selection.target_val_lambda({}) is None


def test_variant_overrides_one_key_of_the_run_config():
  from configs import experiments
  from dial_jax.experiments import runner
  exp = experiments.get_config()
  spec = runner.RunSpec("few_shot", "dial", "wdgrl", 0.1, 2e-4, 0, "dial.lambda_=0.001")
  c = runner.run_config(exp, spec)
  assert (c.dial.lambda_, c.train.learning_rate, c.dial.mode) == (0.001, 2e-4, "dial")
  assert runner.run_config(exp, runner.RunSpec("few_shot", "dial", "wdgrl", 0.1, 2e-4, 0,
                                               "dial.critic_activation=gelu")).dial.critic_activation == "gelu"
  assert spec.run_id.endswith("/seed=0/dial.lambda_=0.001")


def test_results_file_torn_last_line_ignored_bad_middle_line_named(tmp_path):
  from dial_jax.experiments import runner
  path = tmp_path / "r.jsonl"
  runner.append_result(path, {"run_id": "a"})
  with open(path, "a") as f:
    f.write('{"run_id": "b", "eval')
  assert [r["run_id"] for r in runner.read_results(path)] == ["a"]
  path.write_text('{"run_id": "a"}\nnot json\n{"run_id": "c"}\n')
  with pytest.raises(ValueError, match="line 2"):
    runner.read_results(path)


@pytest.fixture(scope="module")
def quick_grid(tmp_path_factory):
  """CI's short version: the quick preset on the real Gemma-3-270M and real prepared few-shot data."""
  from configs import experiments
  from dial_jax.experiments import runner
  root = tmp_path_factory.mktemp("exp")
  exp = experiments.get_config("quick")
  exp.data_dir = str(helpers.prepare_data(root / "data", settings=("few_shot",)))
  exp.results, exp.cache_dir, exp.artifacts_dir = str(root / "results.jsonl"), str(root / "cache"), str(root / "art")
  first = runner.run_grid(exp)
  return exp, root, first


def test_quick_grid_runs_appends_and_skips_done(quick_grid):
  from dial_jax.experiments import runner
  exp, root, first = quick_grid
  from dial_jax.experiments import rows as row_format
  compact = runner.read_results(exp.results)
  assert "history" not in compact[3] and compact[3]["history_ends"]["critic_slope"]  # the row keeps the ends only
  rows = [row_format.with_history(r, exp.artifacts_dir) for r in compact]
  # frozen-feature baselines (source, oracle) + source-only, DIAL (one lambda), oracle for seed 0
  assert first == 5 and len(rows) == 5
  assert [r["mode"] for r in rows] == ["frozen_source", "frozen_oracle", "source_only", "dial", "oracle"]
  for r in rows:
    assert r["data_sizes"] == {"source_train": 8, "target_train": 8, "target_val": 8, "target_test": 8}
    scores = np.asarray(row_format.scores_of(r))
    assert r["eval"]["target_test"]["n"] == 8 and len(scores) == 8
    acc = np.mean((scores > 0) + 0.5 * (scores == 0))
    assert r["eval"]["target_test"]["accuracy"] == pytest.approx(acc)  # per-example scores match the metric
    gap = r["heldout_gap"]  # few-shot has no source_val: its source check split is source_train (8 pairs)
    assert (gap["source_split"], gap["target_split"], gap["n_source"], gap["n_target"]) == (
        "source_train", "target_val", 16, 16)
    assert 0 < gap["mean"] < 2 and np.isfinite(gap["mmd"]), gap
  assert rows[0]["heldout_gap"] == rows[1]["heldout_gap"]  # both probes measure the untrained model
  assert rows[2]["heldout_gap"]["mean"] != rows[0]["heldout_gap"]["mean"]  # training moved the embeddings
  for r in rows[2:]:
    assert len(r["history"]) == exp.train_config.train.num_steps and np.isfinite(r["history"][-1]["loss"])
  dial = rows[3]
  last = dial["history"][-1]
  assert "target_accuracy" not in last and "monitor/target_accuracy" in last  # monitoring only, named so
  for key in ("critic_slope", "critic_input_scale", "gradient_penalty", "balance/source_grad_norm",
              "balance/domain_grad_norm"):
    assert np.isfinite(last[key]) and last[key] > 0, key
  assert "wasserstein" not in rows[2]["history"][-1]  # source-only runs no critic
  for r in rows[2:]:  # train.eval_every=2 of 3 steps: the held-out gap at step 2 and at the end
    curve = r["heldout_gap_curve"]
    assert [s for s, _ in curve["mean"]] == [2, 3] and [s for s, _ in curve["mmd"]] == [2, 3]
    assert curve["mean"][-1][1] == pytest.approx(r["heldout_gap"]["mean"], rel=1e-3)
    assert sorted(r["eval_curve"]) == ["source_train", "target_test", "target_val"]  # few-shot: source_train checks
    for split, points in r["eval_curve"].items():
      assert [s for s, _ in points] == [2, 3]
      assert points[-1][1] == pytest.approx(r["eval"][split]["accuracy"], rel=1e-3)
  assert "heldout_gap_curve" not in rows[0]  # the frozen baselines do not train
  assert runner.run_grid(exp) == 0  # everything is done: nothing reruns
  assert len(list((root / "cache").glob("*.npy"))) == 1 and len(list((root / "cache").glob("*.json"))) == 1


def test_quick_grid_report(quick_grid):
  from dial_jax.experiments import report
  exp, root, _ = quick_grid
  text = report.write_report(exp, str(root / "REPORT.md"), num_samples=50)
  assert "| few-shot-to-full (TL;DR) | 8 | — | 8 | 8 | 8 | 64 | keep the end |" in text  # split sizes used
  assert "| few-shot-to-full (TL;DR) | accuracy |" in text
  # the held-out gap during training (eval_every=2 of 3 steps): the untrained model's, then steps 2 and 3
  assert "| setting | run | n | 0 | 2 | 3 |" in text
  rows = {r["mode"]: r for r in runner.read_results(exp.results)}
  start, so = rows["frozen_source"]["heldout_gap"]["mean"], rows["source_only"]["heldout_gap_curve"]["mean"]
  assert f"| few-shot-to-full (TL;DR) | source-only | 1 | {start:.3f} | {so[0][1]:.3f} | {so[1][1]:.3f} |" in text
  test_curve = rows["dial"]["eval_curve"]["target_test"]
  assert f"| few-shot-to-full (TL;DR) | DIAL λ=10 | 1 | — | {test_curve[0][1]:.3f} | {test_curve[1][1]:.3f} |" in text
  from matplotlib import image
  for name in ("target_metric", "loss_balance", "embeddings"):
    assert f"](figures/{name}.png)" in text, name  # the report shows it
    pixels = image.imread(root / "figures" / f"{name}.png")  # a decodable PNG, not an empty or blank canvas
    assert pixels.ndim == 3 and min(pixels.shape[:2]) >= 200, (name, pixels.shape)
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 16, name


def test_committed_results_hold_current_grid_rows_from_committed_code():
  """The results file keeps earlier grids' rows as history (the report ignores them); a config change that alters
  the grid fingerprint would orphan the current rows, and a row from a dirty tree is not reproducible."""
  from configs import experiments as exp_config
  exp = exp_config.get_config()
  rows = runner.read_results(REPO / "experiments" / "results.jsonl")
  current = [r for r in rows if r["grid"] == runner.grid_fingerprint(exp)]
  assert current, "no committed row belongs to the current grid"
  assert not [r["run_id"] for r in current if r["commit"].endswith("-dirty")]


def test_the_one_loop_equals_the_runners_former_loop(tmp_path):
  """The experiment runner now trains through ``loop.train``; its former hand-written loop (kept here as the
  reference: PairedBatches + the jitted step on one device, padded batches) gives the same parameters and eval."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec
  from dial_jax import parallel
  from dial_jax.data import pipeline as pl
  from dial_jax.inference import Scorer, evaluate_domain
  from dial_jax.train import loop, state as state_lib, step as step_lib, writers
  dirs = (helpers.make_tiny_model_dir(tmp_path / "m"), helpers.prepare_data(tmp_path / "d"))
  config = helpers.tiny_config(*dirs, **{"train.trainable": "top_k", "train.top_k_layers": 1, "data.packing": "none",
                                         "train.num_steps": 3, "dial.lambda_": 0.1})
  model, variables, tokenizer, _ = load.build_model(config)
  source, target, evals = loop.load_data(config, tokenizer)
  evals = {"target_test": evals["target_test"]}
  fresh = lambda: jax.tree.map(lambda a: np.array(a, copy=True), variables)

  # The former runner loop.
  tx, critic_tx = state_lib.make_optimizer(config), state_lib.make_critic_optimizer(config)
  critic = state_lib.make_critic(config)
  state, shardings = state_lib.create_train_state(fresh(), config, model.config.num_layers,
                                                  model.config.hidden_size, tx, critic_tx)
  batches = pl.PairedBatches(source, target, batch_size=config.train.batch_size, grad_accum_steps=1,
                             buckets=batching.bucket_lengths(config.data.max_length, config.data.min_bucket),
                             pad_id=model.config.pad_token_id, seed=config.train.seed)
  step_fn = step_lib.make_train_step(model, critic, tx, critic_tx, config, state_shardings=shardings,
                                     batch_sharding=NamedSharding(shardings.step.mesh, PartitionSpec()))
  for step in range(config.train.num_steps):
    state, _ = step_fn(state, batches.batch(step))
  reference = state_lib.merge(state.trainable, state.frozen)
  ref_eval = evaluate_domain(Scorer(model, reference, None, batch_size=8, max_length=64), evals["target_test"])

  outcome = loop.train(config, model, fresh(), source, target, evals, mesh=parallel.make_mesh(config.mesh),
                       pad_id=model.config.pad_token_id, writer=writers.MemoryWriter(), progress=False)
  for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(outcome.variables)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
  assert outcome.results["eval"]["target_test"]["accuracy"] == ref_eval["accuracy"]
  assert outcome.results["eval"]["target_test"]["margin"] == pytest.approx(ref_eval["margin"], abs=1e-6)


def test_heldout_gap_is_logged_at_every_evaluation_from_that_steps_model(tmp_path):
  import jax
  """With ``train.eval_every`` the held-out domain gap is measured during training too, on the model as it is at that
  step: the gap logged at step 2 of a 4-step run is the final gap of the same run stopped at step 2."""
  from dial_jax import parallel
  from dial_jax.train import loop, writers
  dirs = (helpers.make_tiny_model_dir(tmp_path / "m"), helpers.prepare_data(tmp_path / "d"))
  config = helpers.tiny_config(*dirs, **{"train.trainable": "top_k", "train.top_k_layers": 1, "data.packing": "none",
                                         "train.num_steps": 4, "train.eval_every": 2, "dial.lambda_": 0.1,
                                         "train.learning_rate": 1e-2, "train.lr_schedule": "constant",
                                         "train.warmup_steps": 0})  # so steps 1-2 are the same in both runs
  model, variables, tokenizer, _ = load.build_model(config)
  source, target, evals = loop.load_data(config, tokenizer)
  evals = {"target_val": evals["target_val"]}  # few-shot: no source_val, so the gap reads source_train

  def gaps(num_steps, eval_every=2):
    config.train.num_steps, config.train.eval_every = num_steps, eval_every
    memory = writers.MemoryWriter()
    out = loop.train(config, model, jax.tree.map(lambda a: np.array(a, copy=True), variables), source, target, evals,
                     mesh=parallel.make_mesh(config.mesh), pad_id=model.config.pad_token_id, writer=memory,
                     progress=False)
    return {r["step"]: r for r in memory.rows if r["kind"] == "heldout_gap"}, out.variables

  (four, trained), (two, _), (end_only, trained_without) = gaps(4), gaps(2), gaps(4, eval_every=0)
  assert sorted(four) == [2, 4] and sorted(two) == [2] and sorted(end_only) == [4]
  # evaluating mid-run changes nothing in the training itself
  for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(trained_without)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert four[2]["mean"] == pytest.approx(two[2]["mean"], rel=1e-5)
  assert four[2]["mmd"] == pytest.approx(two[2]["mmd"], rel=1e-4, abs=1e-7)
  assert four[4]["mean"] != pytest.approx(four[2]["mean"], rel=1e-5)  # training between the two moved it
