"""Runs you can trust (issue 14: resume rules, config.json kept, non-finite guard, lock, corrupt checkpoint) and what
a user sees (issue 15: TensorBoard events, progress bar, strict results.json with intervals), on the tiny model."""
import fcntl
import json
import os
import pty
import shutil
import socket
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests import helpers

REPO = Path(__file__).resolve().parents[1]
STEPS = 3


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return helpers.tiny_model_and_data(tmp_path_factory, "safety")


def command(dirs, workdir, *extra):
  model_dir, data_dir = dirs
  return [sys.executable, "-m", "dial_jax.main", "--config=configs/few_shot.py", f"--workdir={workdir}",
          f"--config.model.name={model_dir}", f"--config.data.dir={data_dir}", "--config.data.max_length=64",
          "--config.data.max_eval_examples=8", "--config.lora.rank=4", "--config.dial.critic_widths=(32,16)",
          f"--config.train.num_steps={STEPS}", "--config.train.checkpoint_every=1", "--config.train.log_every=1",
          "--config.train.keep_checkpoints=5", *extra]


def run(cmd, **kwargs):
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, **kwargs)


def run_on_a_terminal(cmd) -> tuple[int, str]:
  """Run with stderr on a pseudo-terminal (as a user sees it); returns (exit code, what the terminal showed)."""
  master, slave = pty.openpty()
  fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=slave)
  os.close(slave)
  chunks = []

  def read():
    while True:
      try:
        data = os.read(master, 65536)
      except OSError:
        return
      if not data:
        return
      chunks.append(data)

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  code = proc.wait(timeout=900)
  reader.join(timeout=10)
  os.close(master)
  return code, b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def finished(dirs, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run") / "w"
  code, screen = run_on_a_terminal(command(dirs, workdir))
  assert code == 0, screen[-3000:]
  return workdir, screen


def read_scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
  """Scalars of TensorBoard event files, read back from the TFRecord framing with tensorboardX's protos."""
  from tensorboardX.proto import event_pb2
  out = {}
  for path in sorted(event_dir.rglob("events.out.tfevents.*")):
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out


def test_tensorboard_events_hold_train_and_eval_scalars(finished):
  workdir, _ = finished
  scalars = read_scalars(workdir / "tensorboard")
  assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
  assert {"train/source_accuracy", "train/wasserstein", "train/critic_slope", "train/monitor/target_accuracy",
          "eval/target_test/accuracy", "eval/target_val/accuracy"} <= set(scalars)
  results = json.loads((workdir / "results.json").read_text())
  assert scalars["eval/target_test/accuracy"][-1] == (STEPS, pytest.approx(results["eval"]["target_test"]["accuracy"]))
  jsonl = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in jsonl if r["kind"] == "train"]
  assert [r["loss"] for r in train] == pytest.approx([v for _, v in scalars["train/loss"]], rel=1e-6)


def test_progress_bar_on_a_terminal(finished):
  _, screen = finished
  assert "train: 100%" in screen and f"{STEPS}/{STEPS}" in screen, screen[-2000:]
  assert "eval target_test" in screen
  assert "Unable to initialize backend" not in screen and "CheckpointManagerOptions" not in screen


def test_results_json_is_strict_with_intervals_and_chance(finished):
  workdir, _ = finished
  def no_constants(name):
    raise AssertionError(f"results.json holds {name}")
  results = json.loads((workdir / "results.json").read_text(), parse_constant=no_constants)
  test = results["eval"]["target_test"]
  lo, hi = test["accuracy_ci95"]
  assert lo <= test["accuracy"] <= hi and 0 < hi - lo < 1 and test["chance"] == 0.5 and test["n"] == 8


def test_results_json_holds_the_heldout_gap_of_the_trained_model(dirs, finished):
  """results.json's held-out domain gap (what the label-free held-out rule reads) is ``metrics.domain_gap`` of the
  trained model's embeddings of the source check split and target_val, recomputed here from the saved workdir."""
  workdir, _ = finished
  gap = json.loads((workdir / "results.json").read_text())["heldout_gap"]
  from dial_jax import metrics, workdir as workdir_lib
  from dial_jax.inference import texts_of
  from dial_jax.train import loop
  config = workdir_lib.load_config(workdir)
  scorer = workdir_lib.load_scorer(workdir, batch_size=config.data.eval_batch_size, max_length=64)
  source, _, evals = loop.load_data(config, scorer.tokenizer)
  domains = {"source_train": source, **evals}
  assert gap["source_split"] == ("source_val" if "source_val" in evals else "source_train")
  embed = lambda split: scorer.score_tokens(texts_of(domains[split]), return_embeddings=True)[1]
  h_s, h_t = embed(gap["source_split"]), embed("target_val")
  assert (gap["n_source"], gap["n_target"]) == (len(h_s), len(h_t)) and len(h_t) == 16  # 8 pairs, both sides
  want = metrics.domain_gap(h_s, h_t)
  assert gap["mean"] == pytest.approx(want["mean"], rel=1e-4) and gap["mmd"] == pytest.approx(want["mmd"], rel=1e-3)
  jsonl = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["mean"] for r in jsonl if r["kind"] == "heldout_gap"] == [pytest.approx(gap["mean"])]


def test_select_reads_real_workdirs(finished, tmp_path):
  """``dial_jax.select`` on a real run's results.json and metrics.jsonl (the finished DIAL run, and a copy relabelled
  source-only): it reads the source check, W's history, the held-out gap and the loss balance, and prints the
  choice."""
  workdir, _ = finished
  results = json.loads((workdir / "results.json").read_text())
  source_only = tmp_path / "so"
  shutil.copytree(workdir, source_only)
  (source_only / "results.json").write_text(json.dumps({**results, "mode": "source_only", "lambda": 0.0}))
  proc = run([sys.executable, "-m", "dial_jax.select", str(source_only), str(workdir)])
  assert proc.returncode == 0, proc.stderr[-2000:]
  lam = results["lambda"]
  row = next(line for line in proc.stdout.splitlines() if line.startswith(f"| DIAL λ={lam:g} | 1 |"))
  assert f"| {results['heldout_gap']['mean']:.4f} |" in row
  history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  last = [r for r in history if r["kind"] == "train" and "balance/domain_grad_norm" in r][-1]
  assert row.endswith(f"| {last['source_loss']:.3f} | "
                      f"{last['balance/domain_grad_norm'] / last['balance/source_grad_norm']:.3g} |")
  # The same gap as source-only's is not below it, so the held-out rule picks nothing.
  assert json.loads(proc.stdout.strip().splitlines()[-1])["label_free_heldout"] is None


def test_resuming_another_run_is_refused_and_config_json_kept(dirs, finished, tmp_path):
  workdir = tmp_path / "w"
  shutil.copytree(finished[0], workdir)
  saved = (workdir / "config.json").read_bytes()
  steps = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  proc = run(command(dirs, workdir, "--config.dial.lambda_=0.5", "--config.lora.rank=8"))
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  from configs import few_shot
  preset_lambda = few_shot.get_config().dial.lambda_
  assert last.startswith("error: ") and "holds another run" in last and f"dial.lambda_: {preset_lambda} -> 0.5" in last
  assert "lora.rank: 4 -> 8" in last
  assert (workdir / "config.json").read_bytes() == saved  # the run's own config survives the failed rerun
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == steps
  # Every reader of the workdir takes the run's saved config: evaluate agrees with the run's own results.
  data = Path(dirs[1]) / "few_shot" / "target_test.jsonl"
  proc = run([sys.executable, "-m", "dial_jax.evaluate", f"--model={workdir}", f"--data={data}", "--max_length=64",
              "--limit=8"])
  assert proc.returncode == 0, proc.stderr[-2000:]
  evaluated = json.loads(proc.stdout.strip().splitlines()[-1])
  results = json.loads((workdir / "results.json").read_text())
  assert evaluated["accuracy"] == results["eval"]["target_test"]["accuracy"]
  assert evaluated["margin"] == pytest.approx(results["eval"]["target_test"]["margin"], abs=1e-6)
  # ... and so does score, on the same 8 pairs (the seeded subset load_domain draws) as prompt/response rows.
  from dial_jax.data import pipeline
  rows = [json.loads(line) for line in data.read_text().splitlines()]
  picked = [rows[i] for i in pipeline.subset_indices([r.get("group") or r["id"] for r in rows], 8, seed=0)]
  texts = tmp_path / "texts.jsonl"
  texts.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r[side]}) + "\n"
                           for side in ("response_chosen", "response_rejected") for r in picked))
  proc = run([sys.executable, "-m", "dial_jax.score", f"--model={workdir}", f"--input={texts}",
              f"--output={tmp_path / 'scored.jsonl'}", "--max_length=64"])
  assert proc.returncode == 0, proc.stderr[-2000:]
  rewards = [json.loads(line)["reward"] for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
  assert np.mean(np.subtract(rewards[:8], rewards[8:])) == pytest.approx(evaluated["margin"], abs=1e-5)


def test_more_steps_resume_the_same_run(dirs, finished, tmp_path):
  workdir = tmp_path / "w"
  shutil.copytree(finished[0], workdir)
  proc = run(command(dirs, workdir, f"--config.train.num_steps={STEPS + 1}"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  results = json.loads((workdir / "results.json").read_text())
  assert results["trained_steps"] == 1 and results["num_steps"] == STEPS + 1


def evaluate(workdir, data_dir):
  return run([sys.executable, "-m", "dial_jax.evaluate", f"--model={workdir}",
              f"--data={Path(data_dir) / 'few_shot' / 'target_test.jsonl'}", "--max_length=64", "--limit=4"])


def test_a_relative_model_name_is_stored_absolute(dirs, tmp_path):
  """A local model directory named relative to the working directory is saved absolute in config.json, so that the
  workdir's readers find it from any directory (evaluate runs from the repository root here)."""
  model_dir = Path(dirs[0])
  workdir = tmp_path / "w"
  cmd = [a.replace("--config=configs/", f"--config={REPO / 'configs'}/")
         for a in command(dirs, workdir, f"--config.model.name={model_dir.name}", "--config.train.num_steps=1")]
  proc = subprocess.run(cmd, cwd=model_dir.parent, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.loads((workdir / "config.json").read_text())["model"]["name"] == str(model_dir.absolute())
  proc = evaluate(workdir, dirs[1])
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_an_older_config_json_takes_the_defaults_of_newer_keys(dirs, finished, tmp_path, caplog):
  """config.json of a run saved before model.attention and model.scan_layers existed: readers (score, evaluate,
  export) fill them with the base config's defaults and warn, naming them; an unknown key is still an error."""
  from configs import base
  from dial_jax import config as config_lib
  from dial_jax import workdir as workdir_lib
  workdir = tmp_path / "w"
  shutil.copytree(finished[0], workdir)
  saved = json.loads((workdir / "config.json").read_text())
  del saved["model"]["attention"], saved["model"]["scan_layers"]
  (workdir / "config.json").write_text(json.dumps(saved))
  with caplog.at_level("WARNING"):
    config = workdir_lib.load_config(workdir)
  warned = [r.getMessage() for r in caplog.records if "has no model.attention, model.scan_layers" in r.getMessage()]
  assert len(warned) == 1 and "model.attention='xla', model.scan_layers=False" in warned[0]
  default = base.get_base_config()
  assert (config.model.attention, config.model.scan_layers) == (default.model.attention, default.model.scan_layers)
  assert config_lib.flatten(config) == {**config_lib.flatten(saved), "model.attention": "xla",
                                        "model.scan_layers": False}
  proc = evaluate(workdir, dirs[1])
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "has no model.attention, model.scan_layers" in proc.stderr
  saved["model"]["attension"] = "xla"
  (workdir / "config.json").write_text(json.dumps(saved))
  with pytest.raises(config_lib.ConfigError, match=r"config.json: unknown config key 'model.attension'"):
    workdir_lib.load_config(workdir)


def test_a_second_launch_into_a_busy_workdir_names_the_holder(dirs, tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
  proc = run(command(dirs, workdir))
  assert proc.returncode == 1
  assert f"is in use by process {os.getpid()} on {socket.gethostname()}" in proc.stderr.strip().splitlines()[-1]


def test_corrupt_latest_checkpoint_falls_back_to_an_older_one(dirs, finished, tmp_path):
  workdir = tmp_path / "w"
  shutil.copytree(finished[0], workdir)
  (workdir / "results.json").unlink()
  latest = workdir / "checkpoints" / str(STEPS)
  for path in latest.rglob("*"):
    if path.is_file() and path.stat().st_size > 0:
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # truncated array and metadata files
  proc = run(command(dirs, workdir))
  assert proc.returncode == 0, proc.stderr[-3000:]
  moved = workdir / "checkpoints_unreadable" / str(STEPS)
  assert f"checkpoint {latest} is unreadable" in proc.stderr and f"moved it to {moved}" in proc.stderr
  assert "resuming from step 2, the newest readable checkpoint" in proc.stderr
  results = json.loads((workdir / "results.json").read_text())
  assert results["trained_steps"] == 1
  original = json.loads((finished[0] / "results.json").read_text())
  assert results["eval"]["target_test"]["accuracy"] == original["eval"]["target_test"]["accuracy"]
  # Nothing was deleted: the damaged files sit aside, and the final step was saved again (a readable checkpoint).
  assert sorted(p.relative_to(moved) for p in moved.rglob("*")) != [] and latest.is_dir()
  manager = ocp.CheckpointManager(workdir.absolute() / "checkpoints")
  assert STEPS in manager.all_steps()
  manager.restore(STEPS, args=ocp.args.StandardRestore())
  manager.close()
  (workdir / "results.json").unlink()
  again = run(command(dirs, workdir))  # the next rerun finds nothing unreadable
  assert again.returncode == 0 and "unreadable" not in again.stderr, again.stderr[-3000:]


def test_nonfinite_updates_are_never_saved_and_results_stay_strict(dirs, tmp_path):
  workdir = tmp_path / "w"
  # No warm-up: the first step's learning rate would be 0 and its update finite.
  proc = run(command(dirs, workdir, "--config.train.learning_rate=1e30", "--config.train.num_steps=2",
                     "--config.train.warmup_steps=0"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  results = json.loads((workdir / "results.json").read_text(), parse_constant=lambda c: pytest.fail(c))
  assert results["skipped_nonfinite_steps"] == 2
  assert results["eval"]["target_test"]["accuracy"] is not None  # the weights never became non-finite
  manager = ocp.CheckpointManager((workdir / "checkpoints").absolute())
  restored = manager.restore(2, args=ocp.args.StandardRestore())
  manager.close()
  import jax
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored["trainable"]))
  stop = run(command(dirs, tmp_path / "s", "--config.train.learning_rate=1e30", "--config.train.on_nonfinite=stop",
                     "--config.train.warmup_steps=0"))
  assert stop.returncode != 0
  assert "non-finite loss, gradient or parameters at step 1; last good checkpoint: None" in stop.stderr
