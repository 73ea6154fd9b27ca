"""Export to Hugging Face format: LoRA merge, transformers round trip, bf16, shards, atomic writes.

Tiny random Gemma / Gemma 3 / Llama backbones (``tests/models/hf_reference.py``) with the real-text BPE tokenizer
are trained for two steps with LoRA on q/k/v/o and the MLP (learning rate 1e-2, so the adapters move far
enough that merging them changes the rewards), exported, loaded with
``transformers.AutoModelForSequenceClassification`` and compared with dial_jax's own rewards on real texts
(TL;DR pairs of the prepared ``few_shot`` target_test split) to 1e-4 absolute.
"""
import contextlib
import json
import logging
import struct
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from dial_jax import workdir as workdir_lib
from dial_jax.data import tokenize
from dial_jax.hf import export, load
from dial_jax.inference import Scorer
from dial_jax.models.decoder import LORA_TARGETS, LoraConfig
from dial_jax.train import loop
from tests import helpers

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("gemma", "gemma3", "llama")
N_TEXTS = 6
# Words of transformers' loading report / legacy warnings about weights that did not line up.
BAD_LOAD_WORDS = ("missing", "unexpected", "newly initialized", "not used", "not initialized", "mismatch",
                  "load report")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return helpers.prepare_data(tmp_path_factory.mktemp("export_data") / "data")


@pytest.fixture(scope="module")
def tokenizer():
  from tests.models.hf_reference import make_tokenizer
  return make_tokenizer()


@pytest.fixture(scope="module")
def texts(data_dir):
  """The shortest chosen/rejected texts among the first 10 target_test pairs (real TL;DR posts + summaries)."""
  rows = [json.loads(line) for line in (data_dir / "few_shot" / "target_test.jsonl").read_text().splitlines()[:10]]
  joined = [tokenize.join(r["prompt"], r[f"response_{side}"]) for r in rows for side in ("chosen", "rejected")]
  return sorted(joined, key=len)[:N_TEXTS]


class Run:
  """A tiny backbone trained for a few steps in a workdir, and what the tests derive from it (computed once)."""

  def __init__(self, family, root: Path, data_dir, tokenizer, texts):
    from tests.models.hf_reference import make_reference
    self.family, self.root, self.texts = family, root, texts
    self.model_dir = root / "model"
    make_reference(family).save_pretrained(self.model_dir)
    tokenizer.save_pretrained(self.model_dir)
    self.workdir = root / "workdir"
    # CORAL: the cheapest domain loss to compile (the export does not care which loss trained the adapters).
    config = helpers.tiny_config(self.model_dir, data_dir, **{
        "train.num_steps": 2, "train.learning_rate": 1e-2, "train.lr_schedule": "constant",
        "data.max_eval_examples": 2, "lora.targets": LORA_TARGETS, "dial.domain_loss": "coral"})
    loop.train_and_evaluate(config, str(self.workdir))
    self.model, self.variables, self.tokenizer, _, _, self.step = workdir_lib.load_trained(self.workdir)
    self.scorer = Scorer(self.model, self.variables, self.tokenizer, batch_size=N_TEXTS, max_length=1024)
    self.rewards = self.scorer.score(texts)
    self._f32 = None

  @property
  def f32_export(self) -> Path:
    if self._f32 is None:
      params = export.merge_lora(self.variables, self.model)
      out = self.root / "hf_f32"
      export.export_hf(params, self.model, self.model_dir, self.tokenizer, out)
      self._f32 = out
    return self._f32


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir, tokenizer, texts):
  cache = {}

  def get(family):
    if family not in cache:
      cache[family] = Run(family, tmp_path_factory.mktemp(f"export_{family}"), data_dir, tokenizer, texts)
    return cache[family]
  return get


@contextlib.contextmanager
def capture_transformers_warnings():
  """Every warning transformers logs (its loggers do not propagate to the root) or raises as a Python warning."""
  records = []

  class Handler(logging.Handler):
    def emit(self, record):
      records.append(record.getMessage())

  handler = Handler(level=logging.WARNING)
  logger = logging.getLogger("transformers")
  logger.addHandler(handler)
  import warnings
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
      yield records
    finally:
      logger.removeHandler(handler)
  records.extend(str(w.message) for w in caught)


def load_hf_clean(path, **kwargs):
  """``AutoModelForSequenceClassification.from_pretrained`` asserting nothing was missing, unexpected or reinit."""
  with capture_transformers_warnings() as logs:
    model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(path), output_loading_info=True, **kwargs)
  for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
    assert not info[key], (key, info[key])
  bad = [m for m in logs if any(word in m.lower() for word in BAD_LOAD_WORDS)]
  assert not bad, bad
  return model.eval()


def hf_rewards(hf_model, tokenizer, texts):
  """transformers' rewards, one unpadded text at a time (it pools the last token that is not the pad id)."""
  out = []
  for text in texts:
    ids = tokenizer(text)["input_ids"]
    assert ids[-1] not in (tokenizer.pad_token_id, hf_model.config.pad_token_id)  # else HF pools another token
    assert len(ids) <= 1024
    with torch.no_grad():
      out.append(float(hf_model(input_ids=torch.tensor([ids])).logits[0, 0].float()))
  return np.asarray(out)


def safetensors_header(path):
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    return json.loads(f.read(n))


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_lora_model_gives_the_same_rewards(runs, family):
  run = runs(family)
  assert "lora" in run.variables
  params = export.merge_lora(run.variables, run.model)
  assert "lora" not in params
  plain = run.model.clone(lora=LoraConfig())
  scorer = Scorer(plain, {"params": params}, run.tokenizer, batch_size=N_TEXTS, max_length=1024)
  np.testing.assert_allclose(scorer.score(run.texts), run.rewards, atol=1e-5, rtol=0)
  # The adapters matter: the base weights alone give other rewards.
  scorer.variables = {"params": run.variables["params"]}
  base = scorer.score(run.texts)
  assert np.max(np.abs(base - run.rewards)) > 1e-3
  # Every adapted kernel changed, nothing else did.
  flat_before = export._flatten(run.variables["params"])
  flat_after = export._flatten(params)
  assert flat_before.keys() == flat_after.keys()
  adapted = {p.rsplit("/", 1)[0] for p in export._flatten(run.variables["lora"])}
  assert len(adapted) == run.model.config.num_layers * len(LORA_TARGETS)
  for path, value in flat_after.items():
    same = np.array_equal(np.asarray(value), np.asarray(flat_before[path]))
    assert same == (path.rsplit("/", 1)[0] not in adapted), path


@pytest.mark.parametrize("family", FAMILIES)
def test_float32_export_loads_in_transformers_with_the_same_rewards(runs, family):
  run = runs(family)
  out = run.f32_export
  config = json.loads((out / "config.json").read_text())
  expected_arch = {"gemma": "GemmaForSequenceClassification", "gemma3": "Gemma3TextForSequenceClassification",
                   "llama": "LlamaForSequenceClassification"}[family]
  assert config["architectures"] == [expected_arch]
  assert len(config["id2label"]) == 1
  assert config["pad_token_id"] == run.model.config.pad_token_id
  assert config["dtype"] == config["torch_dtype"] == "float32"
  assert (out / "model.safetensors").exists() and not (out / "model.safetensors.index.json").exists()
  names = set(safetensors_header(out / "model.safetensors")) - {"__metadata__"}
  assert "score.weight" in names and not any(n.startswith("lm_head") for n in names)
  assert {"tokenizer.json", "tokenizer_config.json"} <= set(p.name for p in out.iterdir())
  assert not [p for p in out.parent.iterdir() if p.name.startswith(".hf_f32.")], "temporary directories left"

  hf = load_hf_clean(out)
  assert type(hf).__name__ == expected_arch and hf.dtype == torch.float32
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
  np.testing.assert_allclose(hf_rewards(hf, tokenizer, run.texts), run.rewards, atol=1e-4, rtol=0)
  # dial_jax reads its own export back (this is what `dial_jax.score --model=EXPORTED` does).
  from dial_jax import score
  rewards = score.load_scorer(str(out), batch_size=N_TEXTS, max_length=1024, dtype="float32").score(run.texts)
  np.testing.assert_allclose(rewards, run.rewards, atol=1e-5, rtol=0)


def test_bfloat16_export_through_the_cli(runs, tmp_path):
  """`python -m dial_jax.export --dtype=bfloat16`: BF16 tensors, each exactly the float32 export's tensor rounded to
  nearest bf16, that transformers loads as bf16. bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2% per
  weight and per op); through 4 layers computed in bf16 the rewards moved by 0.62% of the largest |reward| (0.32%
  with the same bf16 weights computed in float32), so they must stay within 2% of it."""
  run = runs("gemma3")
  out = tmp_path / "hf_bf16"
  cmd = [sys.executable, "-m", "dial_jax.export", f"--workdir={run.workdir}", f"--output={out}", "--dtype=bfloat16"]
  done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"step {run.step}" in done.stdout and str(out) in done.stdout and "model.safetensors" in done.stdout
  header = safetensors_header(out / "model.safetensors")
  assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
  assert header["__metadata__"] == {"format": "pt"}
  assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
  from safetensors.torch import load_file
  f32, bf16 = load_file(str(run.f32_export / "model.safetensors")), load_file(str(out / "model.safetensors"))
  assert f32.keys() == bf16.keys()
  for key, value in f32.items():
    assert torch.equal(value.to(torch.bfloat16), bf16[key]), key
  hf = load_hf_clean(out)
  assert hf.dtype == torch.bfloat16
  got = hf_rewards(hf, run.tokenizer, run.texts)
  scale = np.max(np.abs(run.rewards))
  np.testing.assert_allclose(got, run.rewards, rtol=0, atol=0.02 * scale)
  # The refusal to overwrite, from the CLI.
  again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
  assert again.returncode != 0 and "--overwrite" in again.stderr


def test_sharded_export_matches_transformers_save_pretrained(runs, tmp_path):
  run = runs("llama")
  params = export.merge_lora(run.variables, run.model)
  out = tmp_path / "sharded"
  info = export.export_hf(params, run.model, run.model_dir, run.tokenizer, out, max_shard_size="40KB")
  assert len(info.weight_files) > 3 and not (out / "model.safetensors").exists()
  index = json.loads((out / "model.safetensors.index.json").read_text())
  assert set(index) == {"metadata", "weight_map"}
  sizes = {}
  for shard in info.weight_files:
    header = safetensors_header(out / shard)
    for name, t in header.items():
      if name != "__metadata__":
        assert index["weight_map"][name] == shard
        sizes[name] = t["data_offsets"][1] - t["data_offsets"][0]
  assert set(sizes) == set(index["weight_map"])
  assert index["metadata"]["total_size"] == sum(sizes.values()) == info.total_size

  hf = load_hf_clean(out)
  np.testing.assert_allclose(hf_rewards(hf, run.tokenizer, run.texts), run.rewards, atol=1e-4, rtol=0)
  # transformers' own save_pretrained of the same model writes an index of the same form: same metadata
  # (total_size, total_parameters), same names, the same shard file names and JSON layout.
  hf.save_pretrained(tmp_path / "by_transformers", max_shard_size="40KB")
  text = (tmp_path / "by_transformers" / "model.safetensors.index.json").read_text()
  theirs = json.loads(text)
  assert theirs["metadata"] == index["metadata"]
  assert theirs["weight_map"].keys() == index["weight_map"].keys()
  assert set(theirs["weight_map"].values()) == set(index["weight_map"].values())
  assert text == json.dumps(theirs, indent=2, sort_keys=True) + "\n"
  assert (out / "model.safetensors.index.json").read_text() == json.dumps(index, indent=2, sort_keys=True) + "\n"
  # dial_jax reads the shards back.
  rewards = Scorer.from_pretrained(out, batch_size=N_TEXTS, max_length=1024).score(run.texts)
  np.testing.assert_allclose(rewards, run.rewards, atol=1e-5, rtol=0)


def test_failed_export_leaves_nothing_and_overwrite_is_atomic(runs, tmp_path, monkeypatch):
  run = runs("llama")
  params = export.merge_lora(run.variables, run.model)
  args = (params, run.model, run.model_dir, run.tokenizer)
  real_save = export._save_shard
  calls = []

  def failing_save(tensors, path):
    calls.append(path)
    if len(calls) == 3:
      raise OSError("disk full (simulated)")
    real_save(tensors, path)

  out = tmp_path / "out"
  monkeypatch.setattr(export, "_save_shard", failing_save)
  with pytest.raises(OSError, match="simulated"):
    export.export_hf(*args, out, max_shard_size="40KB")
  assert len(calls) == 3
  assert list(tmp_path.iterdir()) == [], "a failed export must leave no output and no temporary directory"

  monkeypatch.setattr(export, "_save_shard", real_save)
  export.export_hf(*args, out, max_shard_size="40KB")
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  with pytest.raises(FileExistsError, match="overwrite"):
    export.export_hf(*args, out)
  # A failing overwrite keeps the old export as it was.
  calls.clear()
  monkeypatch.setattr(export, "_save_shard", failing_save)
  with pytest.raises(OSError, match="simulated"):
    export.export_hf(*args, out, max_shard_size="40KB", overwrite=True)
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
  assert [p.name for p in tmp_path.iterdir()] == ["out"]
  # A successful one replaces it (here: shards -> one file).
  monkeypatch.setattr(export, "_save_shard", real_save)
  export.export_hf(*args, out, overwrite=True)
  assert (out / "model.safetensors").exists() and not (out / "model.safetensors.index.json").exists()
  assert [p.name for p in tmp_path.iterdir()] == ["out"]
  # Never replaces a directory that is not a model directory.
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "todo.txt").write_text("keep me")
  with pytest.raises(FileExistsError, match="not a model directory"):
    export.export_hf(*args, tmp_path / "notes", overwrite=True)
  assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_export_refuses_mean_pooling_and_a_foreign_config(runs, tmp_path):
  run = runs("llama")
  params = export.merge_lora(run.variables, run.model)
  with pytest.raises(ValueError, match="pooling"):
    export.export_hf(params, run.model.clone(pooling="mean"), run.model_dir, run.tokenizer, tmp_path / "a")
  with pytest.raises(ValueError, match="does not match"):
    export.export_hf(params, run.model, runs("gemma").model_dir, run.tokenizer, tmp_path / "b")
  assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_real_gemma3_270m_round_trip(tmp_path, texts):
  """Bundled gemma-3-270m with LoRA r=8 on every projection and random nonzero lora_b: merge, export float32,
  load in transformers, same rewards (1e-3 absolute, as the real-weights parity test) on real texts."""
  start = time.time()
  lora = LoraConfig(rank=8, alpha=16.0, targets=LORA_TARGETS)
  model, variables, model_dir = load.load_reward_model("gemma-3-270m", lora=lora)
  tokenizer = load.load_tokenizer(model_dir)
  rng = np.random.default_rng(0)
  variables["lora"] = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.asarray(rng.normal(size=x.shape) * 0.02, x.dtype) if path[-1].key == "lora_b" else x,
      variables["lora"])
  rewards = Scorer(model, variables, tokenizer, batch_size=N_TEXTS, max_length=1024).score(texts)
  params = export.merge_lora(variables, model)
  base = Scorer(model.clone(lora=LoraConfig()), {"params": variables["params"]}, tokenizer, batch_size=N_TEXTS,
                max_length=1024).score(texts)
  del variables
  assert np.max(np.abs(base - rewards)) > 1e-2, "the random adapters should change the rewards"
  out = tmp_path / "gemma-3-270m-reward"
  info = export.export_hf(params, model, model_dir, tokenizer, out)
  del params
  assert info.weight_files == ["model.safetensors"]
  hf = load_hf_clean(out)
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
  got = hf_rewards(hf, hf_tokenizer, texts)
  print(f"gemma-3-270m round trip: max |hf - dial_jax| = {np.max(np.abs(got - rewards)):.2e}, "
        f"rewards {np.round(rewards, 3)}, {time.time() - start:.0f}s")
  np.testing.assert_allclose(got, rewards, atol=1e-3, rtol=0)
