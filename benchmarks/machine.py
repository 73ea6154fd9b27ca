"""The machine a benchmark runs on: its CPUs and load, versions, memory readings and matmul peak."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from benchmarks.common import machine_busy_s


def usable_cpus() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def other_busy_cpus(seconds: float = 2.0) -> float | None:
  """CPUs that other processes kept busy over the next ``seconds`` (this process sleeps meanwhile)."""
  before = machine_busy_s()
  if before is None:
    return None
  time.sleep(seconds)
  return max(machine_busy_s() - before, 0.0) / seconds


def rss_mib(field: str = "VmRSS") -> float:
  """This process' resident memory (``VmRSS``) or its high-water mark (``VmHWM``), MiB. (``ru_maxrss`` is not used: on
  Linux a child inherits its parent's value through fork and exec.)"""
  try:
    for line in Path("/proc/self/status").read_text().splitlines():
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024
  except OSError:
    pass
  return float("nan")


def machine_info() -> dict:
  import jax
  import torch
  import transformers
  import flax

  cpu_model = platform.processor()
  try:
    cpu_model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  info = {"cpu_count": os.cpu_count(), "usable_cpus": usable_cpus(), "cpu_model": cpu_model,
          "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
          "platform": platform.platform(), "python": platform.python_version(), "jax": jax.__version__,
          "flax": flax.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
          "jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()],
          "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""), "loadavg_before": list(os.getloadavg()),
          "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
  if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name(0)
  try:
    import peft
    info["peft"] = peft.__version__
  except ImportError:
    pass
  return info


def on_gpu() -> bool:
  import jax
  return jax.default_backend() == "gpu"


def _best_gflops(fn, sync, flop: float, repeats: int = 10) -> float:
  sync(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - start)
  return flop / min(times) / 1e9


def jax_matmul_gflops(dtype: str, gpu: bool) -> float:
  """Best-of-10 GFLOP/s of an n x n x n matmul in JAX (n = 8192 on a GPU, 2048 on a CPU)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  n = 8192 if gpu else 2048
  x = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32),
                  jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
  f = jax.jit(lambda x: jnp.matmul(x, x, precision="highest" if dtype == "float32" else None))
  return _best_gflops(lambda: f(x), jax.block_until_ready, 2 * n**3)


def torch_matmul_gflops(dtype: str, gpu: bool) -> float:
  """The same in PyTorch."""
  import torch

  n = 8192 if gpu else 2048
  t = torch.randn(n, n, generator=torch.Generator().manual_seed(0)).to(
      device="cuda" if gpu else "cpu", dtype=torch.bfloat16 if dtype == "bfloat16" else torch.float32)
  sync = (lambda _: torch.cuda.synchronize()) if gpu else (lambda _: None)
  return _best_gflops(lambda: torch.matmul(t, t), sync, 2 * n**3)


def matmul_peak(dtype: str, gpu: bool) -> dict:
  """Both frameworks' matmul GFLOP/s and the larger one: the peak MFU is measured against."""
  out = {"n": 8192 if gpu else 2048, "dtype": dtype, "jax_gflops": jax_matmul_gflops(dtype, gpu),
         "torch_gflops": torch_matmul_gflops(dtype, gpu)}
  out["peak_gflops"] = max(out["jax_gflops"], out["torch_gflops"])
  return out
