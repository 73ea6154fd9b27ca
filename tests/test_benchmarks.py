"""`benchmarks/score_throughput.py --quick` runs end to end (tiny random Gemma 3, real HH texts)."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_score_throughput_quick(raw_data_dir, tmp_path):
  out = tmp_path / "result.json"
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # conftest's 8 fake host devices: not what the benchmark measures
  proc = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "score_throughput.py"), "--quick", f"--output={out}"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["dial_jax"]["texts_per_s"] > 0
  assert result["torch"]["texts_per_s"] > 0
  assert result["max_abs_reward_diff"] < 1e-3
  assert result["texts"]["num_texts"] == result["config"]["num_texts"]
  assert result["dial_jax"]["compiles_during_timing"] == 0  # one bucket, compiled in the warm-up
  assert "| dial_jax" in proc.stdout


def test_train_step_quick(raw_data_dir, tmp_path):
  """`benchmarks/train_step.py --quick`: dial_jax and the PyTorch reference agree on one step, and every
  implementation is timed (tiny random Gemma 3, real HH / TL;DR texts)."""
  out = tmp_path / "train_step.json"
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--quick", f"--output={out}"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads(out.read_text())
  numerics = result["numerics"]
  assert numerics["ok"] and numerics["rtol"] <= 1e-3
  for key in ("source_loss", "wasserstein", "grad_norm"):
    v = numerics["values"][key]
    assert abs(v["dial_jax"] - v["torch"]) <= 1e-5 + 1e-3 * abs(v["torch"]), (key, v)
  head = result["headline"]
  assert set(head["impls"]) == {"dial_jax", "dial_jax_packed", "torch"}
  for impl, s in head["impls"].items():
    assert s["tokens_per_s"] > 0 and 0 < s["mfu"] < 1 and s["peak_memory_mib"] > 0, impl
    assert len(s["raw"]["steps"]) == result["config"]["steps"]
  assert head["impls"]["dial_jax"]["raw"]["compiles_during_timing"] == 0
  assert head["impls"]["dial_jax"]["ratio_over_torch"] > 0
  assert result["matmul_peak"]["peak_gflops"] > 0
  assert {"machine", "command", "date", "flops_formula", "sweep"} <= set(result)
  assert (tmp_path / "train_step.png").stat().st_size > 0
  assert "| tiny random gemma3 | 64 | 2 | dial_jax |" in proc.stdout


def test_packed_step_matches_padded_step(raw_data_dir, tmp_path):
  """The packed-sequence prototype (benchmarks/packed_step.py) gives dial_jax's padded-step losses and gradient norm
  on real batches (several sequences per packed row)."""
  sys.path.insert(0, str(REPO / "benchmarks"))
  import jax
  import packed_step
  import train_step as ts
  from dial_jax.hf import load
  from dial_jax.train import state as state_lib

  if not ts.FLAGS.is_parsed():
    ts.FLAGS(["test"])
  ts.FLAGS.min_bucket, ts.FLAGS.lora_rank, ts.FLAGS.lora_alpha = 16, 8, 16.0
  model_dir = ts.resolve_model("quick", tmp_path)
  tokenizer = load.load_tokenizer(model_dir)
  length = 256
  domains = ts.real_domains(tokenizer, length)
  batches = ts.make_batches(domains, pairs=2, max_length=length, n=2, pad_id=tokenizer.pad_token_id, seed=0)
  config = ts.dial_config(model_dir, length, 2, "float32")
  built = ts.build_dial_jax(config, donate=False)
  model, state = built["model"], built["state"]
  packed = packed_step.make_packed_train_step(model, state_lib.make_critic(config), state_lib.make_optimizer(config),
                                             state_lib.make_critic_optimizer(config), config, donate=False)
  for batch in batches:
    rows = packed_step.pack(batch, length, tokenizer.pad_token_id)
    assert rows["ids"].shape[0] < 8  # real packing: fewer rows than sequences
    new_padded, m = built["step"](state, batch)
    new_packed, pm = packed(state, rows)
    for key in ("loss", "source_loss", "wasserstein", "critic_loss", "gradient_penalty", "grad_norm"):
      assert abs(float(m[key]) - float(pm[key])) <= 1e-5 + 1e-4 * abs(float(m[key])), key
    for a, b in zip(jax.tree.leaves(new_padded.trainable), jax.tree.leaves(new_packed.trainable)):
      assert abs(a - b).max() <= 1e-6
