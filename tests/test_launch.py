"""The launch scripts (launch/*.sh, launch/gpu_slurm.sbatch), exercised through --dry_run.

Nothing here needs gcloud, sbatch or a GPU: ``gcloud``/``sbatch``/``srun``/... on PATH are stubs that
record any call, and every dry run must leave them untouched. Each printed ``+ `` line is parsed
with ``shlex.split``; remote (ssh --command=...) scripts are parsed again and syntax-checked with
``bash -n``. Two tests also run the real (non-dry) code paths that need no cloud: the TPU worker's
start/stop script against a fake $HOME, and the sbatch job body against stub srun/scontrol.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
TPU = LAUNCH / "tpu_pod.sh"
GPU1 = LAUNCH / "gpu_single_node.sh"
SLURM = LAUNCH / "gpu_slurm.sh"
SBATCH = LAUNCH / "gpu_slurm.sbatch"
SCRIPTS = (TPU, GPU1, SLURM, SBATCH)
OVR = "--config.train.num_steps=7 --config.mesh.fsdp=4"
STUBS = ("gcloud", "sbatch", "srun", "scontrol", "squeue", "scancel", "git", "nvidia-smi", "curl", "uv")
TPU_BASE = ["--dry_run", "--name=dial-test", "--zone=us-central2-b"]


@pytest.fixture
def sandbox(tmp_path):
  """A clean environment whose PATH starts with stubs that log any call to ``calls.log``."""
  stub_dir = tmp_path / "stubs"
  stub_dir.mkdir()
  log = tmp_path / "calls.log"
  for name in STUBS:
    stub = stub_dir / name
    stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexit 97\n')
    stub.chmod(0o755)
  home = tmp_path / "home"
  home.mkdir()
  env = {"PATH": f"{stub_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(home),
         "TMPDIR": str(tmp_path), "LC_ALL": "C"}

  class Box:
    path, calls = tmp_path, log

    def run(self, script, *args, extra_env=None, cwd=ROOT, check_no_calls=True):
      e = dict(env, **(extra_env or {}))
      p = subprocess.run(["bash", str(script), *args], env=e, cwd=cwd, capture_output=True, text=True,
                         timeout=30)
      if check_no_calls:
        assert not log.exists(), f"the dry run ran commands: {log.read_text()}"
      return p

    env_ = env
  return Box()


def cmds(out: str) -> list[list[str]]:
  """The printed commands, as argv lists."""
  return [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ ")]


def find(commands, *prefix):
  return [c for c in commands if c[:len(prefix)] == list(prefix)]


def remote(cmd: list[str]) -> str:
  (arg,) = [a for a in cmd if a.startswith("--command=")]
  return arg[len("--command="):]


def bash_syntax_ok(script: str) -> None:
  p = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True, timeout=10)
  assert p.returncode == 0, f"{p.stderr}\n{script}"


def sublist(seq, sub) -> bool:
  return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def ok(p):
  assert p.returncode == 0, f"rc={p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
  return p.stdout


def fails(p, *words):
  assert p.returncode != 0, p.stdout
  assert "error" in p.stderr
  for w in words:
    assert w in p.stderr, p.stderr


# --- common ------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.name)
def test_help_and_strict_mode(sandbox, script):
  out = ok(sandbox.run(script, "--help"))
  assert "Usage" in out and "--setting" in out and "--workdir" in out
  text = script.read_text()
  assert "set -euo pipefail" in text
  assert os.access(script, os.X_OK)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_clean():
  p = subprocess.run(["shellcheck", "-s", "bash", *map(str, SCRIPTS)], capture_output=True, text=True)
  assert p.returncode == 0, p.stdout


# --- TPU ---------------------------------------------------------------------------------------

def test_tpu_full_dry_run(sandbox):
  wd = "gs://my-bucket/dial/few_shot"
  out = ok(sandbox.run(TPU, *TPU_BASE, "--setting=few_shot", f"--workdir={wd}", "--spot",
                       f"--config_overrides={OVR}", "--run_name=r1"))
  c = cmds(out)
  assert c[0][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "describe"] and "dial-test" in c[0]
  (create,) = find(c, "gcloud", "compute", "tpus", "tpu-vm", "create")
  assert create[5] == "dial-test"
  for tok in ("--zone=us-central2-b", "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base", "--spot"):
    assert tok in create
  assert "--preemptible" not in create
  (archive,) = find(c, "git")
  assert "archive" in archive and archive[-1] == "HEAD"
  (scp,) = find(c, "gcloud", "compute", "tpus", "tpu-vm", "scp")
  assert "--worker=all" in scp
  ssh = find(c, "gcloud", "compute", "tpus", "tpu-vm", "ssh")
  assert len(ssh) == 4  # unpack code, install, prepare data, run
  for s in ssh:
    assert "--worker=all" in s and "--zone=us-central2-b" in s
    bash_syntax_ok(remote(s))
  assert "jax[tpu]" in shlex.split(remote(ssh[1]))
  prep = shlex.split(remote(ssh[2]))
  assert sublist(prep, ["-m", "dial_jax.prepare"]) and "--settings=few_shot" in prep
  run = shlex.split(remote(ssh[3]))
  i = run.index("dial_jax.main")
  assert run[i - 1] == "-m" and run[i - 2].endswith("/bin/python")
  assert run[i + 1:i + 6] == ["--config=configs/few_shot.py:paper", f"--workdir={wd}",
                              "--config.data.dir=$HOME/dial_data", "--config.train.num_steps=7",
                              "--config.mesh.fsdp=4"]
  assert "setsid" in run and "nohup" in run
  assert sublist(run, [">", "$log"]) and any("dial_logs/r1-" in t and "hostname" in t for t in run)
  assert not find(c, "gcloud", "compute", "tpus", "tpu-vm", "delete")
  assert "rerun this same command" in out


def test_tpu_skip_create_and_preemptible(sandbox):
  args = [*TPU_BASE, "--setting=clean_to_noisy", "--workdir=gs://b/w"]
  c = cmds(ok(sandbox.run(TPU, *args, "--skip_create")))
  assert find(c, "gcloud", "compute", "tpus", "tpu-vm", "describe")
  assert not find(c, "gcloud", "compute", "tpus", "tpu-vm", "create")
  c = cmds(ok(sandbox.run(TPU, *args, "--preemptible", "--accelerator_type=v5litepod-16", "--project=p-1")))
  (create,) = find(c, "gcloud", "compute", "tpus", "tpu-vm", "create")
  assert {"--preemptible", "--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite",
          "--project=p-1"} <= set(create)
  assert all("--project=p-1" in x for x in c if x[0] == "gcloud")


def test_tpu_delete_after_and_actions(sandbox):
  c = cmds(ok(sandbox.run(TPU, *TPU_BASE, "--setting=few_shot", "--workdir=gs://b/w", "--delete_after")))
  assert c[-1][:7] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "dial-test", "--zone=us-central2-b"]
  assert "--quiet" in c[-1]
  (logs,) = cmds(ok(sandbox.run(TPU, *TPU_BASE, "--action=logs", "--worker=1")))
  assert "--worker=1" in logs and "tail" in remote(logs)
  (stop,) = cmds(ok(sandbox.run(TPU, *TPU_BASE, "--action=stop")))
  assert "--worker=all" in stop and "kill -TERM" in remote(stop)
  bash_syntax_ok(remote(stop))
  (delete,) = cmds(ok(sandbox.run(TPU, *TPU_BASE, "--action=delete")))
  assert delete[4] == "delete"


def test_tpu_repo_ref_env_and_data_sources(sandbox):
  env = {"TPU_NAME": "from-env", "TPU_ZONE": "europe-west4-a", "DIAL_SETTING": "simple_to_complex",
         "DIAL_WORKDIR": "gs://b/s2c", "DIAL_REPO": "https://example.org/dial_jax.git", "DIAL_REF": "v1.2"}
  out = ok(sandbox.run(TPU, "--dry_run", "--raw_from=gs://b/raw", "--data_dir=/mnt/data", extra_env=env))
  c = cmds(out)
  assert not find(c, "git") and not find(c, "gcloud", "compute", "tpus", "tpu-vm", "scp")
  ssh = find(c, "gcloud", "compute", "tpus", "tpu-vm", "ssh")
  assert all(s[5] == "from-env" and "--zone=europe-west4-a" in s for s in ssh)
  clone = shlex.split(remote(ssh[0]))
  assert sublist(clone, ["git", "clone", "--quiet", "https://example.org/dial_jax.git"])
  assert clone[-3:] == ["checkout", "--quiet", "v1.2"]
  data = shlex.split(remote(ssh[2]))
  assert sublist(data, ["gcloud", "storage", "rsync", "--recursive", "gs://b/raw", "/mnt/data/raw;"])
  assert "--raw_dir=/mnt/data/raw" in data and "--out_dir=/mnt/data" in data
  run = shlex.split(remote(ssh[3]))
  assert "--config=configs/simple_to_complex.py:paper" in run and "--config.data.dir=/mnt/data" in run

  c = cmds(ok(sandbox.run(TPU, *TPU_BASE, "--setting=few_shot", "--workdir=gs://b/w",
                          "--data_from=gs://b/splits", "--skip_create", "--skip_install")))
  ssh = find(c, "gcloud", "compute", "tpus", "tpu-vm", "ssh")
  assert len(ssh) == 2 and "gcloud storage rsync --recursive gs://b/splits" in remote(ssh[0])
  assert "dial_jax.prepare" not in remote(ssh[0])


def test_tpu_overrides_verbatim(sandbox):
  c = cmds(ok(sandbox.run(TPU, *TPU_BASE, "--setting=cross_lingual", "--workdir=gs://b/w", "--scale=default",
                          "--config_overrides=--config.train.num_steps=7 \"--config.model.name=a b's\"",
                          "--", "--config.mesh.fsdp=4")))
  run = shlex.split(remote(find(c, "gcloud", "compute", "tpus", "tpu-vm", "ssh")[-1]))
  i = run.index("--config=configs/cross_lingual.py")
  assert run[i + 3:i + 6] == ["--config.train.num_steps=7", "--config.model.name=a b's", "--config.mesh.fsdp=4"]


@pytest.mark.parametrize("args,words", [
    (["--setting=bogus", "--workdir=gs://b/w"], ["unknown --setting", "bogus"]),
    (["--setting=few_shot"], ["--workdir is required"]),
    (["--setting=few_shot", "--workdir=/local/dir"], ["gs://"]),
    (["--workdir=gs://b/w"], ["--setting is required"]),
    (["--setting=few_shot", "--workdir=gs://b/w", "--spot", "--preemptible"], ["exclusive"]),
    (["--setting=few_shot", "--workdir=gs://b/w", "--config_overrides=--config.x='a"], ["--config_overrides"]),
    (["--setting=few_shot", "--workdir=gs://b/w", "--no_such_flag=1"], ["unknown flag"]),
    (["--setting=few_shot", "--workdir=gs://b/w", "stray"], ["unexpected argument"]),
])
def test_tpu_invalid(sandbox, args, words):
  fails(sandbox.run(TPU, *TPU_BASE, "--dry_run", *args), *words)


def test_tpu_missing_name_zone(sandbox):
  fails(sandbox.run(TPU, "--dry_run", "--zone=z", "--setting=few_shot", "--workdir=gs://b"), "--name")
  fails(sandbox.run(TPU, "--dry_run", "--name=n", "--setting=few_shot", "--workdir=gs://b"), "--zone")


def test_tpu_worker_start_and_stop_scripts(sandbox):
  """The run/stop remote scripts, executed locally against a fake worker $HOME and python."""
  home = Path(sandbox.env_["HOME"])
  (home / "dial_jax").mkdir()
  py = home / "dial_venv" / "bin" / "python"
  py.parent.mkdir(parents=True)
  py.write_text('#!/bin/bash\necho "cwd=$PWD args=$*"\n'
                'if [[ $* == *wait* ]]; then trap \'echo saved; exit 0\' TERM; while :; do sleep 0.05; done; fi\n'
                'exit 3\n')
  py.chmod(0o755)

  def start(run_name, *extra):
    c = cmds(ok(sandbox.run(TPU, *TPU_BASE, "--setting=few_shot", "--workdir=gs://b/w", f"--run_name={run_name}",
                            "--skip_create", "--skip_install", "--skip_data", "--", *extra)))
    return remote(c[-1])

  def wait_for(path: Path):
    for _ in range(200):
      if path.exists() and path.read_text().strip():
        return path.read_text().strip()
      time.sleep(0.05)
    raise AssertionError(f"{path} never written")

  def wait_gone(pid: int):  # the launcher exits right after writing the exit file (zombies count as gone)
    for _ in range(200):
      st = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
      if not st or st.startswith("Z"):
        return
      time.sleep(0.05)
    raise AssertionError(f"pid {pid} still running")

  env = dict(sandbox.env_)
  logs = home / "dial_logs"
  p = subprocess.run(["bash", "-c", start("once", "--config.x=1")], env=env, capture_output=True, text=True,
                     timeout=10)
  assert p.returncode == 0, p.stderr
  assert wait_for(logs / "once.exit") == "3"
  wait_gone(int((logs / "train.pid").read_text()))
  log = (logs / "latest.log").resolve()
  assert log.name.startswith("once-") and "--config.x=1" in log.read_text()
  assert f"cwd={home / 'dial_jax'}" in log.read_text()

  script = start("long", "--config.wait=1")
  p = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=10)
  assert p.returncode == 0, p.stderr
  try:
    again = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=10)
    assert again.returncode != 0 and "still going" in again.stderr
  finally:
    (stop,) = cmds(ok(sandbox.run(TPU, *TPU_BASE, "--action=stop")))
    p = subprocess.run(["bash", "-c", remote(stop)], env=env, capture_output=True, text=True, timeout=10)
  assert "sent SIGTERM" in p.stdout
  assert wait_for(logs / "long.exit") == "0"
  assert "saved" in (logs / "latest.log").read_text()


# --- GPU, one node -----------------------------------------------------------------------------

def test_gpu_single_node(sandbox, tmp_path):
  out = ok(sandbox.run(GPU1, "--setting=few_shot", "--workdir=runs/fs", "--num_gpus=4", f"--config_overrides={OVR}",
                       "--data_dir=/data", "--dry_run", cwd=tmp_path))
  c = cmds(out)
  assert c[0] == ["cd", str(ROOT)]
  main = c[-1]
  assert main[0] == "env" and "CUDA_VISIBLE_DEVICES=0,1,2,3" in main
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.90" in main
  i = main.index("dial_jax.main")
  assert main[i - 1] == "-m"
  assert main[i + 1:] == ["--config=configs/few_shot.py:paper", f"--workdir={tmp_path}/runs/fs",
                          "--config.data.dir=/data", "--config.train.num_steps=7", "--config.mesh.fsdp=4"]


def test_gpu_single_node_env_handling(sandbox):
  env = {"CUDA_VISIBLE_DEVICES": "3,5,7", "JAX_COORDINATOR_ADDRESS": "x:1", "JAX_PROCESS_ID": "2",
         "DIAL_SETTING": "clean_to_noisy", "DIAL_WORKDIR": "gs://b/w", "DIAL_CONFIG_OVERRIDES": OVR}
  out = ok(sandbox.run(GPU1, "--num_gpus=2", "--mem_fraction=.75", "--prepare", "--data_dir=/d",
                       "--raw_dir=/raw", "--dry_run", extra_env=env))
  c = cmds(out)
  prep = c[1]
  assert sublist(prep, ["-m", "dial_jax.prepare"]) and {"--out_dir=/d", "--settings=clean_to_noisy",
                                                        "--raw_dir=/raw"} <= set(prep)
  main = c[2]
  assert sublist(main, ["-u", "JAX_COORDINATOR_ADDRESS"]) and sublist(main, ["-u", "JAX_PROCESS_ID"])
  assert "CUDA_VISIBLE_DEVICES=3,5" in main and "XLA_PYTHON_CLIENT_MEM_FRACTION=.75" in main
  assert main[-2:] == ["--config.train.num_steps=7", "--config.mesh.fsdp=4"]
  assert "--config=configs/clean_to_noisy.py:paper" in main and "--workdir=gs://b/w" in main


@pytest.mark.parametrize("args,words", [
    (["--setting=nope", "--workdir=w"], ["unknown --setting"]),
    (["--setting=few_shot"], ["--workdir is required"]),
    (["--setting=few_shot", "--workdir=w", "--num_gpus=0"], ["--num_gpus"]),
    (["--setting=few_shot", "--workdir=w", "--mem_fraction=1.5"], ["--mem_fraction"]),
    (["--setting=few_shot", "--workdir=w", "--prepare"], ["--data_dir"]),
])
def test_gpu_single_node_invalid(sandbox, args, words):
  fails(sandbox.run(GPU1, "--dry_run", *args), *words)


# --- GPU, SLURM --------------------------------------------------------------------------------

def test_slurm_dry_run(sandbox):
  out = ok(sandbox.run(SLURM, "--setting=cross_lingual", "--workdir=/shared/runs/cl", "--nodes=4",
                       "--gpus_per_node=8", "--partition=gpu", "--account=acct", "--time=12:00:00",
                       "--data_dir=/shared/data", f"--config_overrides={OVR}", "--requeue_on_timeout", "--dry_run"))
  c = cmds(out)
  (sb,) = find(c, "sbatch")
  for tok in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=gpu", "--account=acct",
              "--time=12:00:00", "--requeue", "--signal=TERM@120", "--job-name=dial-cross_lingual"):
    assert tok in sb, tok
  i = sb.index(str(SBATCH))
  job = sb[i + 1:]
  assert {"--setting=cross_lingual", "--workdir=/shared/runs/cl", f"--code_dir={ROOT}",
          "--data_dir=/shared/data", "--requeue_on_timeout"} <= set(job)
  assert job[-3:] == ["--", "--config.train.num_steps=7", "--config.mesh.fsdp=4"]

  assert "resolved job script" in out
  (head,) = [x for x in c if x[0].startswith("head_node=")]
  assert sublist(head, ["show", "hostnames", "$SLURM_JOB_NODELIST", "|", "head", "-n"])
  (export,) = find(c, "export")
  assert "JAX_COORDINATOR_ADDRESS=$head_node:$port" in export and "JAX_NUM_PROCESSES=$SLURM_NNODES" in export
  (srun,) = find(c, "srun")
  assert "--ntasks-per-node=1" in srun and "--nodes=$SLURM_NNODES" in srun
  j = srun.index("-c")
  assert 'JAX_PROCESS_ID="$SLURM_PROCID"' in srun[j + 1]
  k = srun.index("dial_jax.main")
  assert srun[k + 1:] == ["--config=configs/cross_lingual.py:paper", "--workdir=/shared/runs/cl",
                          "--config.data.dir=/shared/data", "--config.train.num_steps=7", "--config.mesh.fsdp=4"]
  assert find(c, "scontrol", "requeue")
  bash_syntax_ok("\n".join(line[2:] for line in out.splitlines() if line.startswith("+ ")))


def test_slurm_defaults_and_no_requeue_line(sandbox):
  c = cmds(ok(sandbox.run(SLURM, "--setting=few_shot", "--workdir=gs://b/w", "--dry_run", "--no_exclusive",
                          "--sbatch_args=--constraint=h100 --mem=0")))
  (sb,) = find(c, "sbatch")
  assert "--nodes=2" in sb and "--exclusive" not in sb and "--constraint=h100" in sb and "--mem=0" in sb
  assert not any("--partition" in t for t in sb)
  assert not find(c, "scontrol", "requeue")


@pytest.mark.parametrize("args,words", [
    (["--setting=bad", "--workdir=/w"], ["unknown --setting"]),
    (["--setting=few_shot"], ["--workdir is required"]),
    (["--setting=few_shot", "--workdir=/w", "--nodes=0"], ["--nodes"]),
    (["--setting=few_shot", "--workdir=/w", "--gpus_per_node=x"], ["--gpus_per_node"]),
])
def test_slurm_invalid(sandbox, args, words):
  fails(sandbox.run(SLURM, "--dry_run", *args), *words)


def test_sbatch_script_outside_slurm_refuses(sandbox):
  fails(sandbox.run(SBATCH, "--setting=few_shot", "--workdir=/w"), "not inside a SLURM job")


def test_sbatch_job_body_with_stub_slurm(sandbox, tmp_path):
  """The real (non-dry) job body: stub scontrol/srun/squeue; each task gets its own JAX_PROCESS_ID."""
  stubs = tmp_path / "slurm"
  stubs.mkdir()
  (stubs / "scontrol").write_text('#!/bin/bash\nif [[ $1 == show ]]; then printf "gpu-a%02d\\n" 1 2 3; '
                                  'else echo "scontrol $*"; fi\n')
  (stubs / "srun").write_text('#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n'
                              'for i in $(seq 0 $((SLURM_NNODES-1))); do SLURM_PROCID=$i "$@" & done; wait\n')
  (stubs / "squeue").write_text("#!/bin/bash\necho 1:30\n")
  py = stubs / "python"
  py.write_text('#!/bin/bash\necho "task $JAX_PROCESS_ID/$JAX_NUM_PROCESSES at $JAX_COORDINATOR_ADDRESS: $*"\n')
  for f in stubs.iterdir():
    f.chmod(0o755)
  env = {"PATH": f"{stubs}{os.pathsep}{sandbox.env_['PATH']}", "SLURM_JOB_ID": "4242",
         "SLURM_JOB_NODELIST": "gpu-a[01-03]", "SLURM_NNODES": "3", "JAX_PROCESS_ID": "9"}
  out = ok(sandbox.run(SBATCH, f"--code_dir={ROOT}", "--setting=few_shot", "--workdir=/w", f"--python={py}",
                       "--requeue_on_timeout", "--", "--config.train.num_steps=7", extra_env=env))
  tasks = sorted(line for line in out.splitlines() if line.startswith("task "))
  assert [t.split(" at ")[0] for t in tasks] == ["task 0/3", "task 1/3", "task 2/3"]
  assert all("gpu-a01:24242: -m dial_jax.main --config=configs/few_shot.py:paper --workdir=/w "
             "--config.train.num_steps=7" in t for t in tasks)
  assert "scontrol requeue 4242" in out
