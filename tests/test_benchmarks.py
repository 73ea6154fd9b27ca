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
