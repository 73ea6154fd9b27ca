"""Helpers the benchmark scripts share: compile-time accounting and a machine-load reading."""
from __future__ import annotations

import os
from pathlib import Path


class CompileEvents:
  """Seconds JAX spends tracing, lowering and compiling (``jax.monitoring`` events), and the number of XLA compiles."""

  def __init__(self):
    self.seconds, self.compiles = {}, 0

  def __call__(self, event: str, duration: float, **kwargs):
    if event.startswith("/jax/core/compile/"):
      name = event.rsplit("/", 1)[1].removesuffix("_duration")
      self.seconds[name] = self.seconds.get(name, 0.0) + duration
      self.compiles += name == "backend_compile"

  def take(self) -> tuple[dict, int]:
    out = (dict(self.seconds), self.compiles)
    self.seconds, self.compiles = {}, 0
    return out


def machine_busy_s() -> float | None:
  """CPU seconds all processes have spent busy since boot (Linux ``/proc/stat``), to see how quiet the machine was."""
  try:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
  except (OSError, ValueError, IndexError):
    return None
