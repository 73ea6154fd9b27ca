"""Exact resume after SIGKILL and after SIGTERM (preemption), on the tiny model with real data."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests import helpers

REPO = Path(__file__).resolve().parents[1]
N = 3        # checkpoint every N steps
STEPS = 30   # long enough that the signal, sent once checkpoint N exists, lands mid-run


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return helpers.tiny_model_and_data(tmp_path_factory, "ckpt")


def command(dirs, workdir):
  model_dir, data_dir = dirs
  return [sys.executable, "-m", "dial_jax.main", "--config=configs/few_shot.py", f"--workdir={workdir}",
          f"--config.model.name={model_dir}", f"--config.data.dir={data_dir}", "--config.data.max_length=64",
          "--config.data.max_eval_examples=8", "--config.lora.rank=4", "--config.dial.critic_widths=(32,16)",
          f"--config.train.num_steps={STEPS}", f"--config.train.checkpoint_every={N}", "--config.train.log_every=1",
          "--config.train.keep_checkpoints=20"]


def final_state(workdir):
  manager = ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints")
  restored = manager.restore(STEPS, args=ocp.args.StandardRestore())
  manager.close()
  return restored


def train_metrics(workdir):
  rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  by_step = {r["step"]: r for r in rows if r["kind"] == "train"}  # a re-run step's last record wins
  return {s: {k: v for k, v in r.items() if k not in ("time", "step_time_s")} for s, r in sorted(by_step.items())}


def interrupt_after_checkpoint(dirs, workdir, sig):
  """Start a run, wait until checkpoint N is complete, send ``sig``; return the exit code."""
  proc = subprocess.Popen(command(dirs, workdir), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  deadline = time.time() + 600
  while not (Path(workdir) / "checkpoints" / str(N)).exists():
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    assert time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=600)
  return proc.returncode, err


def assert_identical(a_dir, b_dir):
  a, b = final_state(a_dir), final_state(b_dir)
  for key in ("trainable", "critic", "opt_state", "rng"):
    flat_a = {k: v for k, v in helpers.flatten(a[key])}
    flat_b = {k: v for k, v in helpers.flatten(b[key])}
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
      np.testing.assert_array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k]), err_msg=f"{key} {k}")
  assert train_metrics(a_dir) == train_metrics(b_dir)


@pytest.fixture(scope="module")
def uninterrupted(dirs, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run") / "full"
  subprocess.run(command(dirs, workdir), cwd=REPO, check=True, capture_output=True)
  return workdir


def test_resume_after_sigkill_is_exact(dirs, uninterrupted, tmp_path):
  workdir = tmp_path / "killed"
  code, _ = interrupt_after_checkpoint(dirs, workdir, signal.SIGKILL)
  assert code == -signal.SIGKILL
  assert not (workdir / "results.json").exists()
  subprocess.run(command(dirs, workdir), cwd=REPO, check=True, capture_output=True)
  assert_identical(uninterrupted, workdir)
  assert json.loads((workdir / "results.json").read_text())["eval"] == \
      json.loads((uninterrupted / "results.json").read_text())["eval"]


def test_sigterm_saves_and_resume_is_exact(dirs, uninterrupted, tmp_path):
  workdir = tmp_path / "preempted"
  code, err = interrupt_after_checkpoint(dirs, workdir, signal.SIGTERM)
  assert code == 143, err[-2000:]
  assert "SIGTERM received: saved a checkpoint at step" in err
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert N <= saved[-1] < STEPS and not (workdir / "results.json").exists()
  subprocess.run(command(dirs, workdir), cwd=REPO, check=True, capture_output=True)
  assert_identical(uninterrupted, workdir)
