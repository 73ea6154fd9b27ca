"""`benchmarks/score_throughput.py --quick` runs end to end (tiny random Gemma 3, real HH texts)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


ALL_IMPLS = ("dial_jax", "dial_jax_packed", "dial_jax_shared", "torch")


# CI: padded and shared-prefix dial_jax against torch; the full run adds the packed-sequences layout (whose numerics
# tests/test_packing.py checks against padding in CI).
@pytest.mark.parametrize("impls", [("dial_jax", "dial_jax_shared", "torch"),
                                   pytest.param(ALL_IMPLS, marks=pytest.mark.slow)], ids=["short", "all"])
def test_train_step_quick(raw_data_dir, tmp_path, impls):
  """`benchmarks/train_step.py --quick`: dial_jax and the PyTorch reference agree on one step, and every
  implementation asked for is timed (tiny random Gemma 3, real HH / TL;DR texts)."""
  out = tmp_path / "train_step.json"
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--quick", f"--output={out}",
       f"--impls={','.join(impls)}"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads(out.read_text())
  numerics = result["numerics"]
  assert numerics["ok"] and numerics["rtol"] <= 1e-3
  for key in ("source_loss", "wasserstein", "grad_norm"):
    v = numerics["values"][key]
    assert abs(v["dial_jax"] - v["torch"]) <= 1e-5 + 1e-3 * abs(v["torch"]), (key, v)
  head = result["headline"]
  assert set(head["impls"]) == set(impls)
  jax_impls = [i for i in impls if i != "torch"]
  assert "dial_jax" in jax_impls
  for impl in jax_impls:  # every data.packing mode asked for agrees with torch
    for key in ("source_loss", "wasserstein", "grad_norm"):
      assert numerics["impls"][impl][key]["within_tolerance"], (impl, key)
  # the shared-prefix layout computes fewer tokens than the pairs hold; padding computes more
  useful = sum(head["useful_tokens_per_step"])
  assert sum(head["computed_tokens_per_step"]["dial_jax_shared"]) < useful
  assert sum(head["computed_tokens_per_step"]["dial_jax"]) == useful
  if "dial_jax_packed" in impls:
    assert head["slots_per_useful_token"]["dial_jax"] >= head["slots_per_useful_token"]["dial_jax_packed"]
  for impl, s in head["impls"].items():
    assert s["tokens_per_s"] > 0 and 0 < s["mfu"] < 1 and s["peak_memory_mib"] > 0, impl
    assert len(s["raw"]["steps"]) == result["config"]["steps"]
  for impl in jax_impls:
    assert head["impls"][impl]["raw"]["compiles_during_timing"] == 0, impl
  assert head["impls"]["dial_jax"]["ratio_over_torch"] > 0
  assert result["matmul_peak"]["peak_gflops"] > 0
  assert {"machine", "command", "date", "flops_formula", "sweep"} <= set(result)
  assert (tmp_path / "train_step.png").stat().st_size > 0
  assert "| tiny random gemma3 | 64 | 2 | dial_jax |" in proc.stdout
