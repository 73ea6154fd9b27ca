"""One benchmark point: every implementation timed on the same real-data batches at one (model, max_length, pairs),
and its rates (useful tokens/s, MFU) worked out from the workers' step times."""
from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

from absl import logging

from benchmarks.dial_side import Settings, dial_config
from benchmarks.flops import hf_config, step_flops
from benchmarks.parity import torch_hparams
from benchmarks.step_data import PACKING, batch_stats, make_batches, save_batches
from benchmarks.workers import spawn_worker


def summarize(result: dict, timed_stats: list[dict], flops: list[float], peak_gflops: float) -> dict:
  """A worker's rates: useful tokens/s, MFU against ``peak_gflops`` and its own matmul, step times, memory."""
  steps = result["steps"]
  tok_s = [s["useful_tokens"] / r["wall_s"] for s, r in zip(timed_stats, steps)]
  mfu = [f / r["wall_s"] / (peak_gflops * 1e9) for f, r in zip(flops, steps)]
  out = {"tokens_per_s": statistics.median(tok_s), "mfu": statistics.median(mfu),
         "mfu_vs_own_matmul": statistics.median(f / r["wall_s"] / (result["matmul_gflops"] * 1e9)
                                                for f, r in zip(flops, steps)) if "matmul_gflops" in result else None,
         "median_step_s": statistics.median(r["wall_s"] for r in steps),
         "median_step_cpu_s": statistics.median(r["cpu_s"] for r in steps),
         "tokens_per_cpu_s": statistics.median(s["useful_tokens"] / r["cpu_s"] for s, r in zip(timed_stats, steps)),
         "achieved_gflops": statistics.median(f / r["wall_s"] / 1e9 for f, r in zip(flops, steps)),
         "peak_memory_mib": result.get("peak_device_mib", result["peak_rss_mib"]),
         "memory_kind": "device peak_bytes_in_use / max_memory_allocated" if "peak_device_mib" in result
                        else "process peak RSS (ru_maxrss)",
         "tokens_per_s_per_step": tok_s, "mfu_per_step": mfu}
  other = [r["other_busy_cpus"] for r in steps if "other_busy_cpus" in r]
  if other:
    out["other_processes_busy_cpus"] = statistics.mean(other)
  return out


def run_point(tag: str, model_dir: Path, max_length: int, pairs: int, steps: int, domains, pad_id: int,
              peak: dict, workdir: Path, gpu: bool, impls, *, settings: Settings, dtype: str,
              glibc_tunables: str) -> dict:
  """Time every implementation at one (model, max_length, pairs) point on the same real-data batches."""
  import numpy as np

  warmup = 1
  batch_files, slots, flops, computed = {}, {}, {}, {}
  cfg = hf_config(model_dir)
  config = dial_config(settings, model_dir, max_length, pairs, dtype)
  lora_rank = max(settings.lora_rank, 0)
  targets = tuple(config.lora.targets) if settings.lora_rank > 0 else ()
  for impl, mode in PACKING.items():  # every dial_jax layout of the same pairs (cheap), so the stats cover all
    batches = make_batches(domains, settings, pairs=pairs, max_length=max_length, n=warmup + steps, pad_id=pad_id,
                           seed=settings.seed, packing_mode=mode)
    batch_files[impl] = str(workdir / f"batches_{tag}_{impl}.npz")
    save_batches(batches, Path(batch_files[impl]))
    if mode == "none":
      padded = batches
      stats = [batch_stats(b) for b in padded]
      slots["dial_jax"] = [s["slots"]["dial_jax"] for s in stats[warmup:]]
      slots["torch"] = [s["slots"]["torch"] for s in stats[warmup:]]
    else:
      slots[impl] = [int(b["packed_ids"].size) for b in batches[warmup:]]
  batch_files["torch"] = batch_files["dial_jax"]
  timed_stats = stats[warmup:]
  for impl in (*PACKING, "torch"):
    counted = [step_flops(cfg, b, PACKING.get(impl, "none"), settings.pack_row_length or max_length,
                          lora_rank=lora_rank, lora_targets=targets, trainable=config.train.trainable)
               for b in padded[warmup:]]
    flops[impl] = [c["total"] for c in counted]
    computed[impl] = [c["tokens"] for c in counted]
  useful = sum(s["useful_tokens"] for s in timed_stats)
  spec = {"tag": tag, "model_dir": str(model_dir), "max_length": max_length, "pairs": pairs, "dtype": dtype,
          "batches": batch_files, "warmup": warmup, "gpu": gpu, "pad_id": pad_id,
          "pack_row_multiple": settings.pack_row_multiple, "settings": dataclasses.asdict(settings),
          "hparams": {"lora_rank": lora_rank, "lora_alpha": settings.lora_alpha, "lora_targets": targets,
                      "hidden_size": cfg["hidden_size"], "critic_widths": list(config.dial.critic_widths),
                      "critic_activation": config.dial.critic_activation, "step": torch_hparams(config)}}
  point = {"tag": tag, "model": str(model_dir.name), "max_length": max_length, "pairs_per_domain": pairs,
           "sequences_per_step": 4 * pairs, "timed_steps": steps,
           "useful_tokens_per_step": [s["useful_tokens"] for s in timed_stats],
           "mean_useful_length": float(np.mean([l for s in timed_stats for l in s["lengths"]])),
           "dial_jax_padded_lengths": [s["padded_length"] for s in timed_stats],
           "computed_tokens_per_step": computed,
           "slots_per_step": slots,
           "useful_fraction": {impl: sum(computed[impl]) / sum(slots[impl]) for impl in slots},
           "slots_per_useful_token": {impl: sum(slots[impl]) / useful for impl in slots},
           "model_flops_per_step": flops, "impls": {}}
  for impl in impls:
    result = spawn_worker({**spec, "impl": impl}, workdir, glibc_tunables)
    point["impls"][impl] = {**summarize(result, timed_stats, flops[impl], peak["peak_gflops"]), "raw": result}
    s = point["impls"][impl]
    logging.info("%s %s: %.1f useful tokens/s, MFU %.1f%%, step %.2f s, peak memory %.0f MiB", tag, impl,
                 s["tokens_per_s"], 100 * s["mfu"], s["median_step_s"], s["peak_memory_mib"])
  if "torch" in point["impls"]:
    t = point["impls"]["torch"]
    for impl, j in point["impls"].items():
      if impl != "torch":
        j["ratio_over_torch"] = j["tokens_per_s"] / t["tokens_per_s"]
        j["ratio_over_torch_cpu_time"] = j["tokens_per_cpu_s"] / t["tokens_per_cpu_s"]
  return point


def flops_of(point: dict, impl: str) -> list[float]:
  """An implementation's model FLOPs per timed step (older result files: one list for all implementations)."""
  f = point["model_flops_per_step"]
  return f[impl] if isinstance(f, dict) else f


def restate_mfu(result: dict, peak_gflops: float) -> None:
  """Recompute every point's MFU against ``peak_gflops`` (recorded as ``mfu_peak_gflops``)."""
  for point in [result["headline"], *result["sweep"]]:
    if not point:
      continue
    for impl, st in point["impls"].items():
      st["mfu_per_step"] = [f / r["wall_s"] / (peak_gflops * 1e9)
                            for f, r in zip(flops_of(point, impl), st["raw"]["steps"])]
      st["mfu"] = statistics.median(st["mfu_per_step"])
  result["mfu_peak_gflops"] = peak_gflops
