"""Every paper-setting config file: its keys, its ':paper' preset, and a short real run (tiny model, real data)."""
import importlib
import json

import pytest

from dial_jax.train import loop
from tests import helpers

SETTINGS = ("few_shot", "cross_lingual", "clean_to_noisy", "simple_to_complex")
REQUIRED_KEYS = ("model.name", "data.dir", "train.num_steps", "train.batch_size", "train.learning_rate",
                 "train.seed", "dial.mode", "dial.domain_loss", "dial.lambda_", "dial.critic_iter")


@pytest.mark.parametrize("setting", SETTINGS)
def test_config_files_and_presets(setting):
  module = importlib.import_module(f"configs.{setting}")
  default, paper = module.get_config(), module.get_config("paper")
  for key in REQUIRED_KEYS:
    section, name = key.split(".")
    assert name in default[section] and name in paper[section], key
  assert default.data.setting == setting and default.model.name == "gemma-3-270m"
  assert paper.model.name == "google/gemma-2b" and paper.lora.rank == 64 and paper.train.grad_accum_steps == 2
  assert (paper.dial.lambda_, paper.dial.gamma, paper.dial.critic_iter) == (0.01, 1.0, 3)
  with pytest.raises(ValueError):
    module.get_config("nonsense")
  # The CPU preset trains as its study grid's runs did, at the lambda the grid's label-free rule chose for the setting:
  # every key equal but batching, evaluation batch, checkpointing and lambda (the grid reads padded cache rows).
  from configs import base, experiments
  from dial_jax import config as config_lib
  from dial_jax.experiments import runner
  grid = config_lib.flatten(runner.run_config(experiments.get_config(base.STUDY_GRID),
                                              runner.RunSpec(setting, "dial", "wdgrl", 1.0, 5e-5, 0)))
  mine = config_lib.flatten(default)
  differ = {k for k in mine if mine[k] != grid[k]}
  assert differ <= {"data.packing", "data.eval_batch_size", "train.checkpoint_every", "dial.lambda_",
                    "model.probe_max_pairs"}, differ
  assert (default.train.trainable, default.model.head_init, default.train.weight_decay_target) == ("top_k", "probe",
                                                                                                 "start")
  assert default.dial.lambda_ == base.STUDY_LAMBDA[setting] and paper.dial.critic_input_scale == "none"
  assert paper.model.head_init == "normal" and paper.train.weight_decay_target == "zero"
  assert default.data.truncation == ("start" if setting == "simple_to_complex" else "end")


def test_preset_lambdas_are_the_label_free_choices_of_the_committed_grid():
  """``base.STUDY_LAMBDA`` is what the report's label-free rule picks from experiments/results.jsonl, for every
  setting whose grid has all its source-only and DIAL runs."""
  from pathlib import Path
  from configs import base, experiments
  from dial_jax.experiments import grid_summary, runner, selection
  exp = experiments.get_config(base.STUDY_GRID)
  results = Path(__file__).resolve().parents[1] / "experiments/results.jsonl"
  rows = grid_summary.grid_rows(exp, runner.read_results(results))
  checked = []
  for setting in exp.settings:
    mine = [r for r in rows if r["setting"] == setting and not r["variant"] and r["seed"] in exp.seeds]
    so = [r for r in mine if r["mode"] == "source_only"]
    dial = {lam: [r for r in mine if r["mode"] == "dial" and r["lambda"] == lam] for lam in exp.lambdas}
    if len(so) < len(exp.seeds) or any(len(v) < len(exp.seeds) for v in dial.values()):
      continue  # that setting's grid is not finished
    choice = selection.label_free_lambda(so, dial)
    want = choice if choice is not None else min(exp.lambdas)
    assert base.STUDY_LAMBDA[setting] == want, setting
    checked.append(setting)
  assert set(checked) == set(SETTINGS)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return helpers.tiny_model_and_data(tmp_path_factory, "configs", settings=SETTINGS[1:])


# few_shot runs end to end in test_checkpoint.py; CI trains one more setting, the full run all three
@pytest.mark.parametrize("setting", [s if s == "clean_to_noisy" else pytest.param(s, marks=pytest.mark.slow)
                                     for s in SETTINGS[1:]])
def test_setting_trains_and_writes_results(dirs, setting, tmp_path):
  config = importlib.import_module(f"configs.{setting}").get_config()
  tiny = helpers.tiny_config(*dirs, setting=setting, **{"train.num_steps": 2})
  config.model, config.data, config.lora, config.train = tiny.model, tiny.data, tiny.lora, tiny.train
  config.dial.critic_widths = (32, 16)
  loop.train_and_evaluate(config, str(tmp_path))
  results = json.loads((tmp_path / "results.json").read_text())
  test = results["eval"]["target_test"]
  assert test["n"] == 16 and results["data_sizes"]["target_train"] > 0
  # the reported metrics are those of the saved final model, re-evaluated here on the same examples
  from dial_jax import workdir
  from dial_jax.inference import evaluate_domain
  scorer = workdir.load_scorer(tmp_path, batch_size=16, max_length=config.data.max_length)
  _, _, evals = loop.load_data(config, scorer.tokenizer)
  again = evaluate_domain(scorer, evals["target_test"])
  keys = ("pearson", "spearman") if setting == "simple_to_complex" else ("accuracy", "margin")
  for key in keys:
    assert test[key] == pytest.approx(again[key], abs=1e-6), key


def test_every_experiment_preset_builds_and_an_unknown_one_is_named_with_the_choices():
  """``configs/experiments.py:NAME`` for every registered preset is a grid that knows its name (the report's rerun
  command); an unknown name is one error listing every preset, so the list cannot fall behind the registry."""
  from configs import experiments
  for name in ("", *experiments.PRESETS):
    c = experiments.get_config(name)
    assert c.preset == name and c.settings and c.train_config.train.top_k_layers == c.top_layers, name
  with pytest.raises(ValueError, match="unknown preset 'nope'") as err:
    experiments.get_config("nope")
  assert all(name in str(err.value) for name in experiments.PRESETS)
