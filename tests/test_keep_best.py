"""``train.keep_best``: the run returns the parameters of its evaluation with the best source-check metric (label-free
early stopping), in memory and through checkpoints (resume, export)."""
import json

import jax
import numpy as np
import pytest

from dial_jax import config as config_lib
from tests import helpers

# Source-check values the patched metric returns, evaluation by evaluation (steps 2, 4, 6): step 4 is the best.
SEQUENCE = (0.70, 0.90, 0.80)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return helpers.tiny_model_and_data(tmp_path_factory, "keep_best")


def config_for(dirs, **overrides):
  return helpers.tiny_config(*dirs, **{"train.trainable": "top_k", "train.top_k_layers": 1, "data.packing": "none",
                                       "train.num_steps": 6, "train.eval_every": 2, "dial.lambda_": 0.1,
                                       "train.learning_rate": 1e-2, "train.lr_schedule": "constant",
                                       "train.warmup_steps": 0, "train.keep_best": True, **overrides})


def patch_source_check(monkeypatch, values=SEQUENCE):
  from dial_jax.train import loop
  calls = iter(values)
  real = loop.source_check
  monkeypatch.setattr(loop, "source_check", lambda evaluation: real(evaluation) and next(calls))


def train(config):
  from dial_jax import parallel
  from dial_jax.hf import load
  from dial_jax.train import loop, writers
  model, variables, tokenizer, _ = load.build_model(config)
  source, target, evals = loop.load_data(config, tokenizer)
  memory = writers.MemoryWriter()
  out = loop.train(config, model, variables, source, target, evals, mesh=parallel.make_mesh(config.mesh),
                   pad_id=model.config.pad_token_id, writer=memory, progress=False)
  return out, memory.rows


def assert_same_tree(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_keep_best_needs_evaluations_during_training(dirs):
  with pytest.raises(config_lib.ConfigError, match="train.keep_best=True .* train.eval_every"):
    config_lib.validate(config_for(dirs, **{"train.eval_every": 0}))


def test_the_kept_model_is_the_run_stopped_at_the_best_evaluation(dirs, monkeypatch):
  """With the source check best at step 4 of 6, the returned parameters and evaluation are those of the same run
  stopped at step 4 (bit-identical: constant learning rate), not the last step's; the eval rows logged at step 6
  stay the last model's (the curve)."""
  patch_source_check(monkeypatch)
  kept, rows = train(config_for(dirs))
  monkeypatch.undo()
  stopped, _ = train(config_for(dirs, **{"train.num_steps": 4, "train.keep_best": False}))
  last, _ = train(config_for(dirs, **{"train.keep_best": False}))
  assert kept.results["kept_step"] == 4
  assert_same_tree(kept.variables, stopped.variables)
  assert kept.results["eval"] == stopped.results["eval"]
  assert kept.results["heldout_gap"] == stopped.results["heldout_gap"]
  final_rows = {r["kind"]: r for r in rows if r["step"] == 6 and r["kind"].startswith("eval/")}
  assert final_rows["eval/target_test"]["accuracy"] == last.results["eval"]["target_test"]["accuracy"]
  assert [r for r in rows if r["kind"] == "keep_best"] == [
      {"kind": "keep_best", "step": 6, "kept_step": 4, "source_check": 0.90}]


def test_without_patching_the_kept_step_is_the_first_best_logged_source_check(dirs):
  out, rows = train(config_for(dirs))
  checks = {r["step"]: r["accuracy"] for r in rows if r["kind"] == "eval/source_train"}  # few-shot: no source_val
  assert sorted(checks) == [2, 4, 6]
  best = max(checks.values())
  assert out.results["kept_step"] == min(s for s, v in checks.items() if v == best)


def test_a_resumed_run_keeps_the_best_from_before_the_interruption_and_export_reads_it(dirs, monkeypatch, tmp_path):
  """A run stopped at step 4 (its best) and resumed to step 6 keeps step 4 from ``checkpoints_best``: the same
  result as the uninterrupted run in memory; the workdir's readers (export, score, evaluate) load that state unless
  asked for a step."""
  from dial_jax import workdir as workdir_lib
  from dial_jax.train import loop
  patch_source_check(monkeypatch)
  in_memory, _ = train(config_for(dirs))
  monkeypatch.undo()
  patch_source_check(monkeypatch)
  run = tmp_path / "run"
  loop.train_and_evaluate(config_for(dirs, **{"train.num_steps": 4, "train.checkpoint_every": 2}), str(run))
  resumed = loop.train_and_evaluate(config_for(dirs, **{"train.checkpoint_every": 2}), str(run))
  monkeypatch.undo()
  assert resumed["kept_step"] == 4 and resumed["eval"] == in_memory.results["eval"]
  assert json.loads((run / "results.json").read_text())["kept_step"] == 4
  _, variables, *_, step = workdir_lib.load_trained(run)  # the run's result, as export and score read it
  assert step == 4 and (run / "checkpoints" / "6").is_dir()
  assert_same_tree(variables, in_memory.variables)
  *_, step = workdir_lib.load_trained(run, step=6)
  assert step == 6


def test_with_keep_best_the_evaluation_steps_are_part_of_the_run(dirs, tmp_path):
  """``train.eval_every`` may change on resume, except with ``train.keep_best``: there it sets the candidates."""
  from dial_jax.train import loop
  saved = json.loads(config_for(dirs).to_json_best_effort())
  with pytest.raises(config_lib.ConfigError, match="train.eval_every: 2 -> 3"):
    loop.check_resume(saved, config_for(dirs, **{"train.eval_every": 3}), tmp_path)
  saved["train"]["keep_best"] = False
  loop.check_resume(saved, config_for(dirs, **{"train.eval_every": 3, "train.keep_best": False}), tmp_path)
