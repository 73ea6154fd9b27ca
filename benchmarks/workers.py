"""Timing workers: each (point, implementation) runs in a fresh interpreter, so its peak memory is its own.

  python benchmarks/workers.py SPEC.json     # what ``spawn_worker`` runs; the result goes to the spec's "output"
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and str(REPO) not in sys.path:  # run as a script: this checkout's dial_jax and benchmarks
  sys.path.insert(0, str(REPO))

from absl import logging  # noqa: E402

from benchmarks.common import CompileEvents, machine_busy_s  # noqa: E402
from benchmarks.machine import jax_matmul_gflops, other_busy_cpus, rss_mib, torch_matmul_gflops, usable_cpus  # noqa: E402
from benchmarks.step_data import PACKING, PARTS, load_batches  # noqa: E402


def timed_steps(run_step, batches, sync) -> list[dict]:
  """Wall and CPU seconds of ``run_step(batch)`` per batch, and how busy other processes kept the CPUs."""
  out = []
  for batch in batches:
    busy, cpu, start = machine_busy_s(), time.process_time(), time.perf_counter()
    sync(run_step(batch))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    row = {"wall_s": wall, "cpu_s": cpu}
    if busy is not None:
      row["other_busy_cpus"] = max(machine_busy_s() - busy - cpu, 0.0) / wall
    out.append(row)
    logging.info("  step: %.3f s wall, %.3f s CPU", wall, cpu)
  return out


def worker_dial_jax(spec: dict) -> dict:
  """dial_jax's jitted step, with the data.packing of ``spec["impl"]``."""
  import jax

  from benchmarks.dial_side import Settings, build_dial_jax, dial_config
  from dial_jax import parallel

  if spec["dtype"] == "float32":
    jax.config.update("jax_default_matmul_precision", "highest")  # true float32 on GPUs too (no TF32), like torch
  packed = PACKING[spec["impl"]] != "none"
  batches = load_batches(Path(spec["batches"][spec["impl"]]))  # PairedBatches' output: padded or packed host-side
  config = dial_config(Settings(**spec["settings"]), Path(spec["model_dir"]), spec["max_length"], spec["pairs"],
                       spec["dtype"], PACKING[spec["impl"]])
  start = time.perf_counter()
  built = build_dial_jax(config, batches[0])
  jax.block_until_ready(built["state"])
  setup_s, setup_rss = time.perf_counter() - start, rss_mib()
  shape_of = (lambda b: b["packed_ids"].shape[1]) if packed else (lambda b: b["source_chosen_ids"].shape[-1])
  put = lambda b: parallel.global_batch(b, built["batch_shardings"])
  warm, timed = batches[:spec["warmup"]], batches[spec["warmup"]:]
  holder = {"state": built.pop("state")}
  step = built["step"]

  def run(batch):
    holder["state"], metrics = step(holder["state"], put(batch))
    return metrics

  sync = jax.block_until_ready
  events = CompileEvents()
  jax.monitoring.register_event_duration_secs_listener(events)
  # Warm-up: the first batch of every shape the timed batches use (padded length, or packed rows): all compiles.
  seen, warmup = set(), []
  for batch in warm + timed:
    if shape_of(batch) in seen:
      continue
    seen.add(shape_of(batch))
    (row,) = timed_steps(run, [batch], sync)
    row["compile_s_parts"], row["compiles"] = events.take()
    row["compile_s"] = sum(row["compile_s_parts"].values())
    row["shape"] = int(shape_of(batch))
    warmup.append(row)
  steps = timed_steps(run, timed, sync)
  _, compiles_during_timing = events.take()
  jax.monitoring.unregister_event_duration_listener(events)
  out = {"setup_s": setup_s, "warmup": warmup, "steps": steps, "compiles_during_timing": compiles_during_timing,
         "compile_s": sum(w["compile_s"] for w in warmup), "setup_rss_mib": setup_rss,
         "peak_rss_mib": rss_mib("VmHWM"), "shape_kind": "packed rows" if packed else "padded length"}
  dev = jax.devices()[0]
  if dev.platform == "gpu":
    stats = dev.memory_stats() or {}
    out["peak_device_mib"] = stats.get("peak_bytes_in_use", float("nan")) / 2**20
  out["matmul_gflops"] = jax_matmul_gflops(spec["dtype"], spec["gpu"])  # this framework, just after the steps
  return out


def worker_torch(spec: dict) -> dict:
  """The PyTorch reference's step (``benchmarks/torch_reference.py``)."""
  import torch

  from benchmarks import torch_reference as tr

  gpu = spec["gpu"]
  device = "cuda" if gpu else "cpu"
  if not gpu:
    torch.set_num_threads(usable_cpus())
  batches = load_batches(Path(spec["batches"]["torch"]))
  warm, timed = batches[:spec["warmup"]], batches[spec["warmup"]:]
  start = time.perf_counter()
  h = spec["hparams"]
  model = tr.load_model(spec["model_dir"], lora_rank=h["lora_rank"], lora_alpha=h["lora_alpha"],
                        lora_targets=h["lora_targets"], device=device)
  critic = tr.Critic(h["hidden_size"], h["critic_widths"], h["critic_activation"]).to(device)
  ref = tr.DialStep(model, critic, **h["step"],
                    autocast_dtype=torch.bfloat16 if spec["dtype"] == "bfloat16" else None)
  setup_s, setup_rss = time.perf_counter() - start, rss_mib()

  def run(batch):
    return ref.step({p: tr.trim(batch[f"{p}_ids"][0], batch[f"{p}_mask"][0], device) for p in PARTS})

  sync = (lambda _: torch.cuda.synchronize()) if gpu else (lambda _: None)
  if gpu:
    torch.cuda.reset_peak_memory_stats()
  warmup = timed_steps(run, warm, sync)
  steps = timed_steps(run, timed, sync)
  out = {"setup_s": setup_s, "warmup": warmup, "steps": steps, "compile_s": 0.0, "setup_rss_mib": setup_rss,
         "peak_rss_mib": rss_mib("VmHWM"), "num_threads": torch.get_num_threads(),
         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
         "other_busy_cpus_before": spec.get("other_busy_cpus_before"),
         "attn_implementation": model.config._attn_implementation}
  if gpu:
    out["peak_device_mib"] = torch.cuda.max_memory_allocated() / 2**20
  out["matmul_gflops"] = torch_matmul_gflops(spec["dtype"], gpu)  # this framework, just after the steps
  return out


def run_worker(spec_path: str) -> None:
  """Run the timing job of a spec file and write its result where the spec says."""
  spec = json.loads(Path(spec_path).read_text())
  result = (worker_torch if spec["impl"] == "torch" else worker_dial_jax)(spec)
  result.setdefault("peak_rss_mib", rss_mib("VmHWM"))
  Path(spec["output"]).write_text(json.dumps(result))


def spawn_worker(spec: dict, workdir: Path, glibc_tunables: str) -> dict:
  """Run one timing job in a fresh interpreter (its own peak memory) and return its result; ``glibc_tunables``
  (if not '') is the worker's ``GLIBC_TUNABLES``."""
  name = f"{spec['impl']}_{spec['tag']}"
  spec = {**spec, "output": str(workdir / f"{name}.result.json")}
  env = dict(os.environ)
  if glibc_tunables:
    env["GLIBC_TUNABLES"] = glibc_tunables
  if spec["impl"] == "torch" and not spec["gpu"] and "OMP_WAIT_POLICY" not in env:
    # libgomp's default busy-waiting makes torch's multi-threaded ops crawl when another process holds a core (seen
    # here: 2-5x slower steps on the 270M model, 100x on a tiny one), while on an idle machine it is ~20% faster
    # than passive waiting. So the reference gets whichever suits the machine's load right now.
    busy = other_busy_cpus()
    env["OMP_WAIT_POLICY"] = "PASSIVE" if busy is not None and busy > 0.3 else "ACTIVE"
    spec["other_busy_cpus_before"] = busy
  spec_path = workdir / f"{name}.spec.json"
  spec_path.write_text(json.dumps(spec))
  logging.info("%s: starting worker", name)
  proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(spec_path)],
                        capture_output=True, text=True, env=env)
  if proc.returncode != 0:
    raise RuntimeError(f"worker {name} failed (status {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                       f"{proc.stderr[-5000:]}")
  return json.loads(Path(spec["output"]).read_text())


if __name__ == "__main__":
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  run_worker(sys.argv[1])
