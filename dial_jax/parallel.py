"""Multi-host start-up (and, as the scale-out work lands, the mesh and the logical-axis sharding rules)."""
from __future__ import annotations

import os

import jax
from absl import logging


def initialize_distributed() -> None:
  """``jax.distributed.initialize`` when this is one process of several (TPU pod worker, SLURM task, or
  ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` set); a no-op otherwise."""
  env = os.environ
  if "JAX_COORDINATOR_ADDRESS" in env:
    jax.distributed.initialize(
        coordinator_address=env["JAX_COORDINATOR_ADDRESS"], num_processes=int(env["JAX_NUM_PROCESSES"]),
        process_id=int(env["JAX_PROCESS_ID"]),
        local_device_ids=[int(x) for x in env["JAX_LOCAL_DEVICE_IDS"].split(",")] if env.get("JAX_LOCAL_DEVICE_IDS")
        else None)
  elif "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()  # SLURM cluster auto-detection
  elif env.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0 or env.get("CLOUD_TPU_TASK_ID") is not None:
    jax.distributed.initialize()  # TPU pod auto-detection
  else:
    return
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
