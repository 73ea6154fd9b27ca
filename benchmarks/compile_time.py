"""Compile time against depth: the decoder unrolled (one copy of the layer per layer) vs scanned (``model.scan_layers``).

A Gemma-3-like decoder of tiny widths (hidden 64, 4 query heads / 1 kv head of 16, MLP 128, local layers with a
32-token window and every sixth layer global, LoRA rank 4 on q/v) at 6, 18 and 26 layers. The program is the
reward model's forward and backward (value and LoRA gradients of a Bradley-Terry-like loss on 8 rows of 128 tokens),
jitted, traced + lowered and compiled once per (depth, layout), after one untimed warm-up compile: on this machine's
CPU, and, with libtpu installed, for a v5e:2x2 slice (``jax.experimental.topologies``; rows over 4 chips) without a
TPU. Wall-clock seconds: on a busy machine they are noisy, compare within a run.

  python benchmarks/compile_time.py [--depths=6,18,26] [--output=benchmarks/results/compile_time.json]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dial_jax.models.decoder import FULL, SLIDING, DecoderConfig, LoraConfig
from dial_jax.models.reward import RewardModel

ROWS, LENGTH = 8, 128


def decoder_config(depth: int) -> DecoderConfig:
  types = tuple(FULL if (i + 1) % 6 == 0 else SLIDING for i in range(depth))
  return DecoderConfig(family="gemma3", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=depth,
                       num_heads=4, num_kv_heads=1, head_dim=16, activation="gelu_pytorch_tanh", norm_offset=True,
                       embed_scale=True, qk_norm=True, sandwich_norm=True, layer_types=types, sliding_window=32,
                       rope_theta=1e6, rope_local_theta=1e4, query_pre_attn_scalar=16)


def program(model: RewardModel):
  def loss(lora, params, ids, mask):
    rewards = model.apply({"params": params, "lora": lora}, ids, mask)["rewards"]
    return -jnp.mean(jax.nn.log_sigmoid(rewards[: ROWS // 2] - rewards[ROWS // 2:]))
  return jax.value_and_grad(loss)


def measure(model: RewardModel, shardings=None) -> dict:
  """Seconds to trace + lower and to compile the program (abstract inputs: nothing is allocated)."""
  ids = jnp.zeros((1, 8), jnp.int32)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids)))
  variables = jax.tree.map(lambda a: getattr(a, "value", a), variables,
                           is_leaf=lambda a: hasattr(a, "value") and hasattr(a, "names"))
  rows = jax.ShapeDtypeStruct((ROWS, LENGTH), jnp.int32)
  args = (variables["lora"], variables["params"], rows, rows)
  if shardings is not None:
    replicated, row_sharding = shardings
    put = lambda tree, s: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree)
    args = (put(args[0], replicated), put(args[1], replicated), put(rows, row_sharding), put(rows, row_sharding))
  start = time.perf_counter()
  lowered = jax.jit(program(model)).lower(*args)
  lowered_at = time.perf_counter()
  lowered.compile()
  done = time.perf_counter()
  return {"lower_s": round(lowered_at - start, 2), "compile_s": round(done - lowered_at, 2),
          "total_s": round(done - start, 2)}


def tpu_shardings():
  from jax.experimental import topologies
  devices = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu").devices
  mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
  return NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depths", default="6,18,26")
  parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "compile_time.json"))
  args = parser.parse_args()
  depths = [int(d) for d in args.depths.split(",")]
  targets = [("cpu", None)]
  if importlib.util.find_spec("libtpu") is not None:
    targets.append(("tpu v5e:2x2", tpu_shardings()))
  else:
    print("libtpu is not installed: CPU only")
  results = []
  for target, shardings in targets:
    measure(RewardModel(decoder_config(1), lora=LoraConfig(rank=4, alpha=8.0)), shardings)  # warm-up, not recorded
    for depth in depths:
      for scan in (False, True):
        model = RewardModel(decoder_config(depth), lora=LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj")),
                            scan_layers=scan)
        r = {"target": target, "layers": depth, "layout": "scanned" if scan else "unrolled", **measure(model, shardings)}
        print(json.dumps(r), flush=True)
        results.append(r)
  out = {"jax": jax.__version__, "machine": platform.processor() or platform.machine(), "rows": ROWS,
         "length": LENGTH, "results": results}
  Path(args.output).parent.mkdir(parents=True, exist_ok=True)
  Path(args.output).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
  main()
