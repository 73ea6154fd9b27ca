"""Fixtures' building blocks: a tiny random Gemma 3 HF directory with a real tokenizer, prepared real data."""
from __future__ import annotations

from pathlib import Path

from configs import base
from tests.conftest import RAW_DATA


def make_tiny_model_dir(path: Path, family: str = "gemma3") -> Path:
  from tests.models.hf_reference import make_reference, make_tokenizer
  make_reference(family).save_pretrained(path)
  make_tokenizer().save_pretrained(path)
  return path


def prepare_data(out_dir: Path, settings=("few_shot",)) -> Path:
  from dial_jax.data.settings import prepare_settings
  prepare_settings(RAW_DATA, out_dir, seed=0, settings=settings)
  return out_dir


def tiny_model_and_data(tmp_path_factory, name: str, settings=("few_shot",)) -> tuple[Path, Path]:
  """(model dir, data dir): the tiny model and the prepared real data in a new temporary folder ``name``."""
  root = tmp_path_factory.mktemp(name)
  return make_tiny_model_dir(root / "model"), prepare_data(root / "data", settings=settings)


def flatten(tree, prefix=()):
  """(path, leaf) pairs of a nested dict/list/tuple tree, paths as tuples of keys and indices."""
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from flatten(v, prefix + (k,))
  elif isinstance(tree, (list, tuple)):
    for i, v in enumerate(tree):
      yield from flatten(v, prefix + (i,))
  else:
    yield prefix, tree


def tiny_config(model_dir, data_dir, setting="few_shot", **overrides):
  """A config that trains the tiny model for a few steps on the real prepared data."""
  c = base.get_base_config()
  c.model.name = str(model_dir)
  c.data.dir = str(data_dir)
  c.data.setting = setting
  c.data.max_length = 64
  c.data.min_bucket = 64
  c.data.max_eval_examples = 16
  c.train.num_steps = 4
  c.train.log_every = 1
  c.train.checkpoint_every = 0
  c.lora.rank = 4
  c.lora.alpha = 8.0
  c.dial.critic_widths = (32, 16)
  for key, value in overrides.items():
    section, name = key.split(".")
    c[section][name] = value
  return c


def trained_head_and_probe(config):
  """(reward head after ``loop.train`` under ``config``, the probe fitted independently on the starting model's
  source embeddings, L2 chosen on source_val when there is one): what a head-init test compares."""
  import numpy as np
  from dial_jax import parallel, probe
  from dial_jax.hf import load
  from dial_jax.inference import Scorer
  from dial_jax.train import loop, writers
  model, variables, tokenizer, _ = load.build_model(config)
  source, target, evals = loop.load_data(config, tokenizer)
  ref = Scorer(model, variables, None, batch_size=8, max_length=64)
  val = evals.get("source_val")
  coef, _ = probe.fit(probe.pair_differences(source, probe.embeddings(ref, source)),
                      probe.pair_differences(val, probe.embeddings(ref, val))[0] if val is not None else None)
  outcome = loop.train(config, model, variables, source, target, {}, mesh=parallel.make_mesh(config.mesh),
                       pad_id=model.config.pad_token_id, writer=writers.MemoryWriter(), progress=False)
  return np.asarray(outcome.variables["params"]["score"]["kernel"])[:, 0], coef


def assert_page_cli_keeps_a_foreign_file(module: str, tmp_path: Path, *args: str) -> None:
  """The page CLI ``python -m module`` refuses (non-zero, a one-line reason) to replace a file it did not write when
  --overwrite is not given, and leaves that file as it was."""
  import subprocess
  import sys
  foreign = tmp_path / "mine.md"
  foreign.write_text("my notes\n")
  proc = subprocess.run([sys.executable, "-m", module, *args, f"--out={foreign}"], capture_output=True, text=True,
                        cwd=Path(__file__).resolve().parents[1])
  assert proc.returncode != 0 and "is not a page this tool wrote; pass --overwrite" in proc.stderr
  assert foreign.read_text() == "my notes\n"
