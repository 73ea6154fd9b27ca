r"""Peak memory of the jitted DIAL train step for each remat policy and compute dtype, on the same model.

XLA's own accounting of the compiled step (``compiled.memory_analysis()``: arguments, outputs, temporaries) is
read for every combination; nothing is trained, so it runs in about a minute on a CPU.

  python benchmarks/step_memory.py                      # Gemma-3-270M-shaped model, 8 x 256 tokens per domain
  python benchmarks/step_memory.py --layers=4 --seq_len=64 --output=/tmp/mem.json   # quick
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for configs/
from configs import base  # noqa: E402
from dial_jax.models.decoder import DecoderConfig
from dial_jax.models.reward import RewardModel
from dial_jax.hf import load
from dial_jax.train import loop, state as state_lib, step as step_lib
from dial_jax.hf.load import init_variables


def gemma3_270m_shape(layers: int) -> DecoderConfig:
  types = tuple("full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers))
  return DecoderConfig(family="gemma3", vocab_size=262144, hidden_size=640, intermediate_size=2048, num_layers=layers,
                       num_heads=4, num_kv_heads=1, head_dim=256, activation="gelu_pytorch_tanh", norm_offset=True,
                       embed_scale=True, qk_norm=True, sandwich_norm=True, layer_types=types, sliding_window=512,
                       rope_theta=1e6, rope_local_theta=1e4, query_pre_attn_scalar=256, pad_token_id=0)


def measure(decoder: DecoderConfig, remat: str, dtype: str, pairs: int, seq_len: int) -> dict:
  config = base.get_base_config()
  config.model.remat_policy, config.model.dtype = remat, dtype
  config.train.batch_size = pairs
  model = RewardModel(decoder, lora=load.lora_config(config), dtype=jnp.dtype(dtype), remat_policy=remat)
  variables = jax.jit(lambda: init_variables(model, 0))()
  tx, critic_tx = state_lib.make_optimizer(config), state_lib.make_critic_optimizer(config)
  state, _ = state_lib.create_train_state(variables, config, decoder.num_layers, decoder.hidden_size, tx, critic_tx)
  shape = (1, pairs, seq_len)
  batch = {k: np.ones(shape, np.int32) for k in ("source_chosen_ids", "source_chosen_mask", "source_rejected_ids",
                                                 "source_rejected_mask", "target_chosen_ids", "target_chosen_mask",
                                                 "target_rejected_ids", "target_rejected_mask")}
  batch["target_pair_weight"] = np.ones((1, pairs), np.float32)
  step = step_lib.make_train_step(model, state_lib.make_critic(config), tx, critic_tx, config, donate=False)
  start = time.time()
  mem = step.lower(state, batch).compile().memory_analysis()
  return {"remat_policy": remat, "dtype": dtype, "compile_s": round(time.time() - start, 1),
          "temp_mib": mem.temp_size_in_bytes / 2**20, "argument_mib": mem.argument_size_in_bytes / 2**20,
          "output_mib": mem.output_size_in_bytes / 2**20,
          "peak_mib": (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes) / 2**20}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--layers", type=int, default=18)
  p.add_argument("--pairs", type=int, default=8, help="pairs per domain per step")
  p.add_argument("--seq_len", type=int, default=256)
  p.add_argument("--output", default="benchmarks/results/step_memory.json")
  args = p.parse_args()
  decoder = gemma3_270m_shape(args.layers)
  rows = [measure(decoder, remat, dtype, args.pairs, args.seq_len)
          for dtype in ("float32", "bfloat16") for remat in ("none", "dots", "full")]
  out = {"model": f"gemma-3-270m-shaped, {args.layers} layers, LoRA r=64", "pairs_per_domain": args.pairs,
         "seq_len": args.seq_len, "device": str(jax.devices()[0].device_kind), "platform": platform.platform(),
         "jax": jax.__version__, "date": time.strftime("%Y-%m-%d"), "rows": rows}
  with open(args.output, "w") as f:
    json.dump(out, f, indent=2)
  print(f"| compute dtype | remat | temporaries MiB | peak (args+out+temp) MiB |\n|---|---|---|---|")
  for r in rows:
    print(f"| {r['dtype']} | {r['remat_policy']} | {r['temp_mib']:.0f} | {r['peak_mib']:.0f} |")


if __name__ == "__main__":
  main()
