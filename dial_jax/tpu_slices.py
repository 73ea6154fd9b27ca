"""TPU slices by their Cloud names (``v5e-16``, ``v4-8``, ...): the libtpu topology to compile for, the hosts, and
each chip's HBM, bf16 peak and HBM bandwidth, for ahead-of-time compilation on a machine that has no TPU.

Chip figures are Google Cloud's published per-chip numbers. A ``v4-N`` / ``v5p-N`` slice counts TensorCores (two per
chip, one JAX device per chip in megacore mode), a ``v5e-N`` / ``v6e-N`` slice counts chips (one core each).
"""
from __future__ import annotations

import dataclasses
import os
import re

# Compile-only use never touches a chip, so several processes (tests, sweeps) may load libtpu at once; without this
# the second one fails on libtpu's lock file.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_gib: float       # HBM per chip (one JAX device)
  bf16_tflops: float   # peak bf16 matmul throughput per chip
  hbm_gbps: float      # HBM bandwidth per chip, GB/s


CHIPS = {
    "v4": Chip("v4", 32, 275, 1228),
    "v5e": Chip("v5e", 16, 197, 819),
    "v5p": Chip("v5p", 95, 459, 2765),
    "v6e": Chip("v6e", 32, 918, 1640),
}
MEGACORE = ("v4", "v5p")  # two TensorCores per chip, seen by JAX as one device


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str                    # e.g. v5e-16
  chip: Chip
  topology: str                # libtpu topology name, e.g. v5e:4x4
  chips: int
  chips_per_host: tuple[int, int, int]

  @property
  def hosts(self) -> int:
    per_host = self.chips_per_host[0] * self.chips_per_host[1] * self.chips_per_host[2]
    return max(self.chips // per_host, 1)


def _bounds(topology: str) -> tuple[int, ...]:
  return tuple(int(x) for x in topology.split(":")[1].split("x"))


def _make(name: str, chip: str, topology: str, chips_per_host=(2, 2, 1)) -> Slice:
  bounds = (_bounds(topology) + (1, 1))[:3]
  chips = bounds[0] * bounds[1] * bounds[2]
  return Slice(name, CHIPS[chip], topology, chips, tuple(min(h, b) for h, b in zip(chips_per_host, bounds)))


# Single-host v5e-8 / v6e-8 VMs hold 8 chips; larger v5e / v6e slices have 4 chips per host; v4 / v5p hosts hold 4.
SLICES = {s.name: s for s in (
    _make("v4-8", "v4", "v4:2x2x1"), _make("v4-16", "v4", "v4:2x2x2"), _make("v4-32", "v4", "v4:2x2x4"),
    _make("v5e-1", "v5e", "v5e:1x1"), _make("v5e-4", "v5e", "v5e:2x2"),
    _make("v5e-8", "v5e", "v5e:2x4", (2, 4, 1)), _make("v5e-16", "v5e", "v5e:4x4"), _make("v5e-32", "v5e", "v5e:4x8"),
    _make("v5p-8", "v5p", "v5p:2x2x1"), _make("v5p-16", "v5p", "v5p:2x2x2"), _make("v5p-32", "v5p", "v5p:2x2x4"),
    _make("v6e-1", "v6e", "v6e:1x1"), _make("v6e-4", "v6e", "v6e:2x2"),
    _make("v6e-8", "v6e", "v6e:2x4", (2, 4, 1)), _make("v6e-16", "v6e", "v6e:4x4"),
)}


def get_slice(name: str) -> Slice:
  """A slice from its Cloud name (``v5e-16``) or a libtpu topology name (``v5e:2x2``, 4 chips per host)."""
  if name in SLICES:
    return SLICES[name]
  m = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(x\d+)+)", name)
  if not m:
    raise ValueError(f"--topology={name!r}: unknown TPU slice; use one of {', '.join(SLICES)} or a libtpu "
                     "topology name such as v5e:2x2 or v4:2x2x1")
  return _make(name, m.group(1), name)


def devices(s: Slice) -> list:
  """Compile-only TPU devices of the slice (needs libtpu, e.g. ``pip install -e '.[tpu]'``; no TPU)."""
  from jax.experimental import topologies
  try:
    topo = topologies.get_topology_desc(
        topology_name=s.topology, platform="tpu", chip_config_name="megacore" if s.chip.name in MEGACORE else "default",
        chips_per_host_bounds=s.chips_per_host)
  except Exception as e:  # no libtpu, or a topology this libtpu does not know
    raise RuntimeError(f"cannot describe TPU topology {s.topology} ({type(e).__name__}: {e}); compiling for a TPU "
                       "needs libtpu: pip install -e '.[tpu]'") from e
  devs = list(topo.devices)
  if len(devs) != s.chips:
    raise RuntimeError(f"topology {s.topology} gave {len(devs)} devices, expected {s.chips} chips")
  return devs
