"""Device mesh, the logical-axis sharding rules, shardings for state and batches, multi-host start-up.

Every model parameter carries logical axis names (``dial_jax/models/layers.py``); ``LOGICAL_AXIS_RULES`` is the
one table that maps them onto the mesh axes ``data``, ``fsdp`` and ``tensor``, the way MaxText does it. A
dimension that a mesh axis does not divide evenly is replicated instead. The critic, the reward head, the step
counter and the RNG are replicated.
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes (or None: replicated)
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("lora_rank", None),
)
BATCH_AXES = ("data", "fsdp")


def initialize_distributed() -> None:
  """``jax.distributed.initialize`` when this is one process of several (TPU pod worker, SLURM task, or
  ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` set); a no-op otherwise."""
  env = os.environ
  if "JAX_COORDINATOR_ADDRESS" in env:
    local = env.get("JAX_LOCAL_DEVICE_IDS")
    jax.distributed.initialize(
        coordinator_address=env["JAX_COORDINATOR_ADDRESS"], num_processes=int(env["JAX_NUM_PROCESSES"]),
        process_id=int(env["JAX_PROCESS_ID"]), local_device_ids=[int(x) for x in local.split(",")] if local else None)
  elif "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()  # SLURM cluster auto-detection
  elif env.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
    jax.distributed.initialize()  # TPU pod auto-detection
  else:
    return
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
  """Resolve one -1 entry to "all remaining devices" and check the product."""
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {sizes}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"mesh {sizes}: {num_devices} devices are not divisible by {known}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, there are {num_devices}")
  return tuple(sizes)


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ``data x fsdp x tensor`` mesh (Auto axis types) from ``config.mesh``."""
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_config.data, mesh_config.fsdp, mesh_config.tensor, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules=LOGICAL_AXIS_RULES) -> P:
  """Mesh PartitionSpec for one array from its logical axis names; uneven dimensions stay replicated and a
  mesh axis is used at most once per array."""
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name, dim in zip(logical, shape):
    axes = table.get(name) if name is not None else None
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
    size = math.prod(mesh.shape[a] for a in axes)
    if not axes or dim % size:
      out.append(None)
      continue
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else axes)
  return P(*out)


def variable_shardings(boxed_abstract, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """NamedShardings for a variables tree whose leaves are ``nn.Partitioned`` (as ``model.init`` returns them
  under ``jax.eval_shape``); unannotated leaves are replicated."""
  def one(leaf):
    if isinstance(leaf, nn.Partitioned):
      return NamedSharding(mesh, logical_to_spec(leaf.names, leaf.value.shape, mesh, rules))
    return NamedSharding(mesh, P())
  return jax.tree.map(one, boxed_abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_shardings(global_shapes: dict[str, tuple[int, ...]], mesh: Mesh) -> dict[str, NamedSharding]:
  """Batch arrays are ``[accum, rows, ...]``: rows are split over data x fsdp (where they divide evenly)."""
  return {k: NamedSharding(mesh, logical_to_spec((None, "batch") + (None,) * (len(shape) - 2), shape, mesh))
          for k, shape in global_shapes.items()}


def global_batch(local: dict[str, np.ndarray], shardings: dict[str, NamedSharding]) -> dict[str, jax.Array]:
  """Global arrays from each process's own rows (axis 1); with one process, just a sharded device_put."""
  out = {}
  for k, x in local.items():
    shape = list(x.shape)
    shape[1] *= jax.process_count()
    out[k] = jax.make_array_from_process_local_data(shardings[k], x, tuple(shape))
  return out


def rows_sharded_on_all(x: np.ndarray, mesh: Mesh) -> jax.Array:
  """A global array, rows split over data x fsdp where they divide, from host data every process holds in full
  (evaluation inputs)."""
  spec = logical_to_spec(("batch",) + (None,) * (x.ndim - 1), x.shape, mesh)
  return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda idx: x[idx])
