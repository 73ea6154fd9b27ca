"""A gs:// workdir, against a local Cloud Storage emulator (tests/conftest.py: gcs_emulator): the run's files go to
the bucket and nowhere on local disk, a SIGTERM-interrupted run resumes bit-identically from the bucket, evaluate /
score / export read the bucket workdir and read and write their other paths in the bucket too (evaluate --data,
score --input/--output, export --output), and two processes (jax.distributed) save to and resume from it."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests import helpers

REPO = Path(__file__).resolve().parents[1]
N, STEPS = 3, 24  # checkpoint every N steps; enough steps that a SIGTERM sent once checkpoint N exists lands mid-run
SETTING = "few_shot"
WALL_CLOCK = ("time", "step_time_s")  # the only metrics that may differ between identical runs


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("gcs_run")
  return helpers.make_tiny_model_dir(root / "model"), helpers.prepare_data(root / "data")


def bucket_fs():
  """A gcsfs client without listing caches (the test reads what other processes wrote)."""
  import gcsfs
  return gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True, use_listings_cache=False)


def objects(prefix: str) -> list[str]:
  """Object names under gs://<prefix>/, relative to it."""
  return sorted(name[len(prefix) + 1:] for name in bucket_fs().find(prefix))


def command(dirs, workdir, steps=STEPS, every=N, data_dir=None):
  model_dir, data_dir = dirs[0], data_dir or dirs[1]
  return [sys.executable, "-m", "dial_jax.main", f"--config={REPO / 'configs' / f'{SETTING}.py'}",
          f"--workdir={workdir}", f"--config.model.name={model_dir}", f"--config.data.dir={data_dir}",
          "--config.data.max_length=64", "--config.data.max_eval_examples=8", "--config.lora.rank=4",
          "--config.dial.critic_widths=(32,16)", f"--config.train.num_steps={steps}",
          f"--config.train.checkpoint_every={every}", "--config.train.log_every=1",
          "--config.train.keep_checkpoints=20"]


def env(**extra):
  return {**os.environ, "PYTHONPATH": str(REPO), **extra}  # os.environ holds the emulator's variables


def run(cmd, cwd, **extra_env):
  p = subprocess.run(cmd, cwd=cwd, env=env(**extra_env), capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stderr[-3000:]
  return p


@pytest.fixture(scope="module")
def bucket_data(gcs_emulator, dirs):
  """The prepared data (manifest and few_shot splits) copied to gs://bucket/data."""
  bucket_fs().put(f"{dirs[1]}/", "bucket/data/", recursive=True)
  return "gs://bucket/data"


@pytest.fixture(scope="module")
def full_run(gcs_emulator, dirs, tmp_path_factory):
  """An uninterrupted run into gs://bucket/full, started in an empty directory; (workdir, that directory)."""
  cwd = tmp_path_factory.mktemp("cwd")
  run(command(dirs, "gs://bucket/full"), cwd)
  return "gs://bucket/full", cwd


def event_records(data: bytes) -> int:
  """Records in a TensorBoard event file (TFRecord framing: length, its crc, data, data crc)."""
  n = pos = 0
  while pos < len(data):
    pos += 8 + 4 + int.from_bytes(data[pos:pos + 8], "little") + 4
    n += 1
  assert pos == len(data)
  return n


def read_json(uri):
  return json.loads(bucket_fs().cat(uri[len("gs://"):]))


def train_metrics(uri):
  rows = [json.loads(line) for line in bucket_fs().cat(uri[len("gs://"):] + "/metrics.jsonl").decode().splitlines()]
  by_step = {r["step"]: r for r in rows if r["kind"] == "train"}  # a re-run step's last record wins
  return {s: {k: v for k, v in r.items() if k not in WALL_CLOCK} for s, r in sorted(by_step.items())}


def final_state(uri, step=STEPS):
  import orbax.checkpoint as ocp
  from etils import epath
  manager = ocp.CheckpointManager(epath.Path(uri) / "checkpoints")
  restored = manager.restore(step, args=ocp.args.StandardRestore())
  manager.close()
  return restored


def test_gs_workdir_holds_the_run_and_nothing_is_written_locally(full_run):
  workdir, cwd = full_run
  names = objects(workdir[len("gs://"):])
  for name in ("config.json", "metrics.jsonl", "results.json"):
    assert name in names, names
  (events,) = [n for n in names if n.startswith("tensorboard/events.out.tfevents.")]
  assert event_records(bucket_fs().cat(f"{workdir[len('gs://'):]}/{events}")) > STEPS * 10  # every step's scalars
  steps = {int(n.split("/")[1]) for n in names if n.startswith("checkpoints/") and n.endswith("/commit_success.txt")}
  assert steps == set(range(N, STEPS + 1, N)), names
  assert "lock" not in names and not any(n.endswith(".tmp") for n in names), names  # released, temporaries removed
  assert list(cwd.iterdir()) == []  # no gs:/bucket/... (or anything else) under the current directory
  assert not (REPO / "gs:").exists()
  results = read_json(workdir + "/results.json")
  assert results["trained_steps"] == STEPS and results["eval"]["target_test"]["n"] == 8
  assert sorted(train_metrics(workdir)) == list(range(1, STEPS + 1))
  from dial_jax import workdir as workdir_lib
  assert workdir_lib.is_workdir(workdir) and workdir_lib.checkpoint_steps(workdir) == sorted(steps)
  assert workdir_lib.load_config(workdir).train.num_steps == STEPS


def test_sigterm_on_gs_saves_and_resume_from_the_bucket_is_exact(full_run, dirs, tmp_path):
  workdir = "gs://bucket/preempted"
  proc = subprocess.Popen(command(dirs, workdir), cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  fs, deadline = bucket_fs(), time.time() + 600
  while not fs.exists(f"bucket/preempted/checkpoints/{N}/commit_success.txt"):
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    assert time.time() < deadline
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 143, err[-2000:]
  assert "SIGTERM received: saved a checkpoint at step" in err
  from dial_jax import workdir as workdir_lib
  saved = workdir_lib.checkpoint_steps(workdir)
  assert N <= saved[-1] < STEPS and not fs.exists("bucket/preempted/results.json") and not fs.exists(
      "bucket/preempted/lock")
  run(command(dirs, workdir), tmp_path)
  assert list(tmp_path.iterdir()) == []
  a, b = final_state(full_run[0]), final_state(workdir)
  for key in ("trainable", "critic", "opt_state", "rng"):
    flat_a, flat_b = dict(_flatten(a[key])), dict(_flatten(b[key]))
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
      np.testing.assert_array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k]), err_msg=f"{key} {k}")
  assert train_metrics(full_run[0]) == train_metrics(workdir)
  assert read_json(workdir + "/results.json")["eval"] == read_json(full_run[0] + "/results.json")["eval"]


def test_evaluate_score_and_export_read_and_write_the_bucket(full_run, bucket_data, tmp_path):
  """evaluate --data=gs://, score --input=gs:// --output=gs:// and export --output=gs://, all with the gs:// workdir:
  the results are right and nothing is written locally (the CLIs run in an empty directory)."""
  workdir = full_run[0]
  data = f"{bucket_data}/{SETTING}/target_test.jsonl"
  out = run([sys.executable, "-m", "dial_jax.evaluate", f"--model={workdir}", f"--data={data}", "--limit=8",
             "--max_length=64"], tmp_path).stdout
  result = json.loads(out.strip().splitlines()[-1])
  # the same 8 examples (the seeded subset) as the run's final evaluation, scored with the same trained weights
  assert result["data"] == data and result["n"] == 8
  assert result["accuracy"] == read_json(workdir + "/results.json")["eval"]["target_test"]["accuracy"]

  rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(3)] + [{"text": "Grüße, 世界"}]
  bucket_fs().pipe("bucket/scores/in.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
  run([sys.executable, "-m", "dial_jax.score", f"--model={workdir}", "--input=gs://bucket/scores/in.jsonl",
       "--output=gs://bucket/scores/out.jsonl", "--max_length=64"], tmp_path)
  assert objects("bucket/scores") == ["in.jsonl", "out.jsonl"]  # the temporary out.jsonl.tmp is gone
  scored = [json.loads(line) for line in bucket_fs().cat("bucket/scores/out.jsonl").decode("utf-8").splitlines()]
  assert [{k: v for k, v in r.items() if k != "reward"} for r in scored] == rows
  assert all(np.isfinite(r["reward"]) for r in scored)

  out = run([sys.executable, "-m", "dial_jax.export", f"--workdir={workdir}", "--output=gs://bucket/exported/cli",
             f"--step={N}"], tmp_path).stdout
  info = json.loads(out.strip().splitlines()[-1])
  assert info["step"] == N and info["output"] == "gs://bucket/exported/cli"
  assert objects("bucket/exported") == [f"cli/{name}" for name in info["files"]]  # no temporary prefix left
  assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(info["files"])
  assert list(tmp_path.iterdir()) == []
  # The exported directory, copied back, loads with dial_jax's loader and gives the workdir's step-N rewards.
  from dial_jax import workdir as workdir_lib
  from dial_jax.inference import Scorer
  local = tmp_path / "copy"
  bucket_fs().get("bucket/exported/cli/", f"{local}/", recursive=True)
  texts = ["How do I bake bread? Knead, let it rise, bake.", "Hello there.", "q0 a0"]
  expected = workdir_lib.load_scorer(workdir, N, batch_size=4, max_length=64).score(texts)
  np.testing.assert_allclose(Scorer.from_pretrained(local, batch_size=4, max_length=64).score(texts), expected,
                             atol=1e-5, rtol=0)


def fake_bucket_workdir(prefix: str) -> str:
  """A workdir in the bucket as the export checks see it (config.json, a finished checkpoint), plus run outputs."""
  fs = bucket_fs()
  fs.pipe(f"{prefix}/config.json", json.dumps({"model": {"name": "nowhere"}}).encode())
  fs.pipe(f"{prefix}/checkpoints/2/commit_success.txt", b"")
  fs.pipe(f"{prefix}/model.safetensors", b"looks like an export, but is a run")
  return "gs://" + prefix


def test_argument_checks_on_bucket_paths(full_run, tmp_path):
  """The CLIs' checks before loading, on bucket paths: a gs:// workdir is accepted, its steps listed from the
  bucket; a bucket path that is not a workdir is refused; evaluate's and score's gs:// files are checked like local
  ones; a gs:// export --output that is, holds or lies inside the workdir, or that --overwrite would replace but is
  not a previous export, is refused in one line and the bucket is left as it was."""
  from dial_jax import cli_checks
  from dial_jax.cli_checks import UsageError
  workdir = full_run[0]
  cli_checks.check_model(workdir)
  with pytest.raises(UsageError, match="gs://bucket/nothing: not a training workdir"):
    cli_checks.check_model("gs://bucket/nothing")
  # evaluate --data / score --input, score --output
  fs = bucket_fs()
  fs.pipe("bucket/checks/in.jsonl", b'{"text": "a"}\n')
  cli_checks.check_input_file("data", "gs://bucket/checks/in.jsonl")
  with pytest.raises(UsageError, match="--data=gs://bucket/checks/no.jsonl: no such file"):
    cli_checks.check_input_file("data", "gs://bucket/checks/no.jsonl")
  with pytest.raises(UsageError, match="--data=gs://bucket/checks is a directory"):
    cli_checks.check_input_file("data", "gs://bucket/checks")
  cli_checks.check_output_file("gs://bucket/checks/out.jsonl", "gs://bucket/checks/in.jsonl")
  cli_checks.check_output_file("gs://bucket/checks/out.jsonl", str(tmp_path / "in.jsonl"))
  for same in ("gs://bucket/checks/in.jsonl", "gs://bucket/checks/./in.jsonl", "gs://bucket//checks/in.jsonl"):
    with pytest.raises(UsageError, match="is the --input file"):
      cli_checks.check_output_file(same, "gs://bucket/checks/in.jsonl")
  with pytest.raises(UsageError, match="its temporary file gs://bucket/checks/x.jsonl.tmp is the --input file"):
    cli_checks.check_output_file("gs://bucket/checks/x.jsonl", "gs://bucket/checks/x.jsonl.tmp")
  with pytest.raises(UsageError, match="gs://bucket/checks is a directory"):
    cli_checks.check_output_file("gs://bucket/checks", "gs://bucket/checks/in.jsonl")
  with pytest.raises(UsageError, match="gs://no-such-bucket/out.jsonl: the bucket does not exist"):
    cli_checks.check_output_file("gs://no-such-bucket/out.jsonl", "gs://bucket/checks/in.jsonl")
  # export: a gs:// workdir to a local or a gs:// output; the step is checked against the bucket's checkpoints
  cli_checks.check_export_args(workdir, str(tmp_path / "hf"), N, False)
  cli_checks.check_export_args(workdir, "gs://bucket/exported/ok", N, False)
  with pytest.raises(UsageError, match=f"no such checkpoint in {workdir}/checkpoints .*: {N}, {2 * N},"):
    cli_checks.check_export_args(workdir, "gs://bucket/exported/ok", 1, False)
  wd = fake_bucket_workdir("bucket/runs/wd")
  fs.pipe("bucket/notes/todo.txt", b"keep me")
  fs.pipe("bucket/file", b"an object, not a directory")
  before = {name: fs.cat(name) for name in fs.find("bucket/runs") + fs.find("bucket/notes") + ["bucket/file"]}
  refused = {"gs://bucket/runs/wd": "is the workdir", "gs://bucket/runs/wd/": "is the workdir",
             "gs://bucket/runs/x/../wd": "is the workdir", "gs://bucket/runs/wd/checkpoints": "is inside --workdir",
             "gs://bucket/runs/wd/hf": "is inside --workdir", "gs://bucket/runs": "contains --workdir",
             "gs://bucket": "not the bucket itself", "gs://bucket/": "not the bucket itself",
             "gs://no-such-bucket/hf": "the bucket does not exist",
             "gs://bucket/notes": "does not look like a previous export",
             "gs://bucket/file": "exists and is not a directory"}
  for output, message in refused.items():
    with pytest.raises(UsageError, match=message):
      cli_checks.check_export_args(wd, output, None, True)
  with pytest.raises(UsageError, match="--overwrite"):
    cli_checks.check_export_args(wd, "gs://bucket/notes", None, False)
  assert {name: fs.cat(name) for name in before} == before and sorted(fs.find("bucket/notes")) == [
      "bucket/notes/todo.txt"]
  cli_checks.check_export_args(wd, "gs://bucket/runs/wd2", None, True)  # a sibling whose name extends the workdir's
  cli_checks.check_export_args(wd, str(tmp_path / "runs" / "wd"), None, True)  # same name, local: another place


def test_export_to_a_bucket_publishes_complete_directories_and_overwrites_only_an_export(full_run, tmp_path,
                                                                                         monkeypatch):
  """export_hf to gs://: byte for byte the local export; config.json appears last (whoever sees it sees every other
  file); a failed upload leaves the output as it was and no temporary prefix; --overwrite replaces a previous export
  (also with another file set) and nothing else."""
  from dial_jax import paths
  from dial_jax import workdir as workdir_lib
  from dial_jax.hf import export
  workdir, fs = full_run[0], bucket_fs()
  model, variables, tokenizer, model_dir, _, _ = workdir_lib.load_trained(workdir, N)
  args = (export.merge_lora(variables, model), model, model_dir, tokenizer)
  model, variables, tokenizer, model_dir, _, _ = workdir_lib.load_trained(workdir)
  latest = (export.merge_lora(variables, model), model, model_dir, tokenizer)

  def local_export(params_etc, name, **kwargs):
    info = export.export_hf(*params_etc, tmp_path / name, **kwargs)
    return {f: (info.output_dir / f).read_bytes() for f in info.files}

  def in_bucket(prefix="bucket/exp/out"):
    return {name[len(prefix) + 1:]: fs.cat(name) for name in fs.find(prefix)}

  # The bucket client export uses, watched: before each copy into the output, the output's listing (config.json must
  # not be there yet); an upload can be made to fail.
  seen, puts, fail_at, fail_copy_at = [], [], [], []  # [n]: the n-th upload / copy into the output fails

  class Watched:
    def __init__(self, fs):
      self._fs = fs

    def __getattr__(self, name):
      return getattr(self._fs, name)

    def copy(self, path1, path2, **kwargs):
      if path2.startswith("bucket/exp/out/"):
        seen.append((path2.rsplit("/", 1)[1], sorted(n.rsplit("/", 1)[1] for n in fs.find("bucket/exp/out"))))
        if fail_copy_at and len(seen) == fail_copy_at[0]:
          raise OSError("copy failed (simulated)")
      return self._fs.copy(path1, path2, **kwargs)

    def put_file(self, lpath, rpath, **kwargs):
      puts.append(rpath)
      if fail_at and len(puts) == fail_at[0]:
        raise OSError("upload failed (simulated)")
      return self._fs.put_file(lpath, rpath, **kwargs)

  real_fs_and_key = paths.fs_and_key
  monkeypatch.setattr(paths, "fs_and_key", lambda p: (Watched(real_fs_and_key(p)[0]), real_fs_and_key(p)[1]))

  info = export.export_hf(*args, "gs://bucket/exp/out")
  assert str(info.output_dir) == "gs://bucket/exp/out"
  first = local_export(args, "local")
  assert in_bucket() == first and sorted(first) == info.files
  assert [name for name, _ in seen][-1] == "config.json" and all("config.json" not in listing for _, listing in seen)
  assert sorted(n.rsplit("/", 1)[1] for n in fs.ls("bucket/exp")) == ["out"]  # the temporary prefix is gone
  with pytest.raises(FileExistsError, match="--overwrite"):
    export.export_hf(*args, "gs://bucket/exp/out")

  # A failed upload (the 2nd file) with overwrite: the previous export is untouched, no temporary prefix is left.
  puts.clear()
  fail_at.append(2)
  with pytest.raises(OSError, match="simulated"):
    export.export_hf(*latest, "gs://bucket/exp/out", overwrite=True)
  assert len(puts) == 2 and in_bucket() == first
  assert sorted(n.rsplit("/", 1)[1] for n in fs.ls("bucket/exp")) == ["out"]
  fail_at.clear()

  # Overwrite with another file set (shards + index instead of model.safetensors): exactly the new files remain, and
  # the old config.json was deleted before the first copy (the prefix never looks complete while mixed).
  seen.clear()
  export.export_hf(*latest, "gs://bucket/exp/out", overwrite=True, max_shard_size="40KB")
  second = local_export(latest, "sharded", max_shard_size="40KB")
  assert in_bucket() == second and "model.safetensors" not in second and "model.safetensors.index.json" in second
  assert [name for name, _ in seen][-1] == "config.json" and all("config.json" not in listing for _, listing in seen)
  assert sorted(n.rsplit("/", 1)[1] for n in fs.ls("bucket/exp")) == ["out"]

  # A copy into the output fails (the 2nd) during an overwrite: what is left of the output (the old export's files and
  # the new ones) is deleted, so it never holds a mix, and a plain export then works again.
  seen.clear()
  fail_copy_at.append(2)
  with pytest.raises(OSError, match="copy failed"):
    export.export_hf(*args, "gs://bucket/exp/out", overwrite=True)
  assert len(seen) == 2 and fs.find("bucket/exp") == []
  fail_copy_at.clear()
  export.export_hf(*args, "gs://bucket/exp/out")
  assert in_bucket() == first

  # Never replaces a prefix that is not an export, nor an object.
  fs.pipe("bucket/exp/notes/todo.txt", b"keep me")
  fs.pipe("bucket/exp/notes/config.json", b"{}")
  with pytest.raises(FileExistsError, match="not a model directory"):
    export.export_hf(*args, "gs://bucket/exp/notes", overwrite=True)
  fs.pipe("bucket/exp/file", b"an object")
  with pytest.raises(FileExistsError, match="not a directory"):
    export.export_hf(*args, "gs://bucket/exp/file", overwrite=True)
  assert in_bucket("bucket/exp/notes") == {"todo.txt": b"keep me", "config.json": b"{}"}
  assert fs.cat("bucket/exp/file") == b"an object"
  assert sorted(n.rsplit("/", 1)[1] for n in fs.ls("bucket/exp")) == ["file", "notes", "out"]


def test_a_missing_bucket_is_one_line(gcs_emulator, dirs, tmp_path):
  p = subprocess.run(command(dirs, "gs://no-such-bucket/run"), cwd=tmp_path, env=env(), capture_output=True, text=True,
                     timeout=600)
  assert p.returncode == 1
  assert p.stderr.strip().splitlines()[-1] == ("error: gs://no-such-bucket/run: the bucket does not exist or cannot "
                                               "be read; create it first")
  assert not bucket_fs().exists("no-such-bucket") and list(tmp_path.iterdir()) == []


def test_lock_in_a_bucket(gcs_emulator):
  """A second launch into a gs:// workdir stops naming the holder; a lock its holder stopped renewing is taken
  over (a preempted VM that could not release it)."""
  from dial_jax.train.loop import WorkdirLock
  first = WorkdirLock("gs://bucket/locked")
  first.acquire()
  holder = read_json("gs://bucket/locked/lock")
  assert holder["pid"] == os.getpid()
  with pytest.raises(RuntimeError, match="gs://bucket/locked is in use by process"):
    WorkdirLock("gs://bucket/locked").acquire()
  first.release()
  assert not bucket_fs().exists("bucket/locked/lock")
  bucket_fs().pipe("bucket/locked/lock", json.dumps({"host": "gone-vm", "pid": 1, "time": time.time() - 3600}).encode())
  second = WorkdirLock("gs://bucket/locked")
  second.acquire()
  assert read_json("gs://bucket/locked/lock")["pid"] == os.getpid()
  second.release()


@pytest.mark.slow  # CI: one process saving to and resuming from the bucket; tests/test_parallel.py: two processes
def test_two_processes_save_to_and_resume_from_a_gs_workdir(gcs_emulator, dirs, bucket_data, tmp_path):
  """2 processes (jax.distributed, gloo on CPU, 1 device each) write one run into gs://bucket/two, checkpointing
  every step; rerun with one more step, they resume from its last checkpoint. The prepared data is read from the
  bucket too. Kept short for CI: 2 + 1 steps, and XLA's CPU backend optimizations off
  (--xla_backend_optimization_level=0 cuts the compile time of the train step, the largest cost of each process, by
  about 40%; both runs use it, and what is tested here, the bucket I/O and the processes' coordination, does not
  depend on it)."""
  workdir = "gs://bucket/two"

  def both(steps):
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    cmd = command(dirs, workdir, steps=steps, every=1, data_dir=bucket_data)
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i),
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        XLA_FLAGS="--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"))
        for i in range(2)]
    for i, p in enumerate(procs):
      _, err = p.communicate(timeout=600)
      assert p.returncode == 0, err[-3000:]
      assert f"jax.distributed: process {i} of 2, 1 local / 2 global devices" in err
    return err

  both(2)
  from dial_jax import workdir as workdir_lib
  assert workdir_lib.checkpoint_steps(workdir) == [1, 2]
  assert read_json(workdir + "/results.json")["trained_steps"] == 2
  assert "resumed from step 2" in both(3)
  assert workdir_lib.checkpoint_steps(workdir) == [1, 2, 3]
  assert read_json(workdir + "/results.json")["trained_steps"] == 1  # resumed at step 2
  assert sorted(train_metrics(workdir)) == list(range(1, 4))
  assert list(tmp_path.iterdir()) == []


_flatten = helpers.flatten
