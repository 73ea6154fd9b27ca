"""The ``:paper`` train step compiled for a TPU slice with ``model.attention=splash`` (``dial_jax.aot.analyse`` with the
reward model switched to splash attention on the slice's mesh): per-chip memory, XLA's FLOPs and bytes, as JSON.

  JAX_PLATFORMS=cpu python benchmarks/aot_splash.py --topology=v5e-16 --attention=splash \
      >> benchmarks/results/aot_splash.jsonl

fsdp over the whole slice and remat full (the row of ``benchmarks/results/aot_paper.jsonl`` it is compared with).
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import few_shot  # noqa: E402
from dial_jax import aot, parallel, tpu_slices  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--topology", default="v5e-16")
  parser.add_argument("--attention", default="splash", choices=("xla", "splash"))
  args = parser.parse_args()
  config = few_shot.get_config("paper")
  config.mesh.data, config.mesh.fsdp = 1, -1
  config.model.remat_policy = "full"
  mesh = parallel.make_mesh(config.mesh, tpu_slices.devices(tpu_slices.get_slice(args.topology)))
  abstract_model = aot.abstract_model

  def model_with_attention(config):
    model, hf = abstract_model(config)
    return model.clone(attention=args.attention, mesh=mesh), hf
  aot.abstract_model = model_with_attention
  start = time.time()
  r = aot.analyse(config, args.topology, include_eval=False)
  train = r["train"]
  print(json.dumps({"attention": args.attention, "topology": args.topology, "mesh": r["mesh"], "remat": "full",
                    "packing": r["packing"], "fits": r["fits"], "compile_wall_s": round(time.time() - start, 1),
                    "flops_per_step": train.get("flops_per_step"),
                    "cost_per_chip": train.get("cost_per_chip"), "memory_per_chip": train.get("memory_per_chip"),
                    "model_flops_per_step": train.get("model_flops_per_step"), "problems": r["problems"]}))


if __name__ == "__main__":
  main()
