"""The benchmark's report: the markdown table, the summary lines and the plot of useful tokens/s."""
from __future__ import annotations

import statistics
from pathlib import Path


def _num(x: float) -> str:
  return f"{x:,.0f}" if x >= 1000 else f"{x:.1f}"


def slots_per_useful(point: dict, impl: str) -> str:
  if "slots_per_useful_token" in point:
    return f"{point['slots_per_useful_token'].get(impl, float('nan')):.2f}"
  return f"{1 / point['useful_fraction'].get(impl, 1.0):.2f}"  # older files: 1 / useful fraction, the same figure


def table(points: list[dict]) -> str:
  rows = ["| model | max len | pairs/domain | implementation | useful tok/s | MFU (vs own matmul) | step s (median) | "
          "useful tok / CPU s | computed slots / useful token | peak memory MiB | compile s (torch: first step) | "
          "tok/s vs torch |",
          "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for p in points:
    for impl, s in p["impls"].items():
      raw = s["raw"]
      first = raw["compile_s"] if impl != "torch" else (raw["warmup"][0]["wall_s"] if raw["warmup"] else 0.0)
      ratio = f"**{s['ratio_over_torch']:.2f}x**" if "ratio_over_torch" in s else ""
      mfu = f"{100 * s['mfu']:.1f}%" + (f" ({100 * s['mfu_vs_own_matmul']:.0f}%)" if s.get("mfu_vs_own_matmul") else "")
      rows.append(f"| {p['model']} | {p['max_length']} | {p['pairs_per_domain']} | {impl} | {_num(s['tokens_per_s'])} | "
                  f"{mfu} | {s['median_step_s']:.3g} | {_num(s['tokens_per_cpu_s'])} | "
                  f"{slots_per_useful(p, impl)} | {s['peak_memory_mib']:.0f} | {first:.1f} | {ratio} |")
  return "\n".join(rows)


def plot(result: dict, path: Path, title: str) -> None:
  """The headline bars beside the length and batch sweeps (benchmarks/train_step_figure.py)."""
  from benchmarks import train_step_figure
  train_step_figure.plot(result, path, title)


def report(result: dict, output: Path, png: Path) -> None:
  """Markdown table and summary lines on stdout, the plot at ``png`` (``output``: the JSON's path, named in the
  summary)."""
  points = [p for p in [result["headline"], *result["sweep"]] if p]
  m, c = result["machine"], result["config"]
  title = (f"DIAL train step, {c['dtype']}, LoRA r={c['lora_rank']}: "
           f"{m.get('gpu') or m['cpu_model']} ({result['date'][:10]})")
  if points:
    plot(result, png, title)
    print()
    print(table(points))
  other = [s["other_processes_busy_cpus"] for p in points for s in p["impls"].values()
           if "other_processes_busy_cpus" in s]
  print(f"\n`{result['command']}` on {result['date']}; {m.get('gpu') or m['cpu_model']}, {m['usable_cpus']} of "
        f"{m['cpu_count']} CPUs, {m['memory_gib']} GiB; jax {m['jax']}, torch {m['torch']}, transformers "
        f"{m['transformers']}, peft {m.get('peft')}; {c['dtype']}, LoRA r={c['lora_rank']} alpha={c['lora_alpha']}."
        + (f" Other processes kept {statistics.mean(other):.2f} CPUs busy during the timed steps (mean)." if other
           else "") + ("" if result.get("complete", True) else " INCOMPLETE RUN (partial results)."))
  if result["numerics"]:
    by_impl = result["numerics"].get("impls") or {"dial_jax": result["numerics"]["values"]}
    for impl, v in by_impl.items():
      print(f"\nnumerics, {impl} vs torch (float32, one step, same weights and pairs): " + ", ".join(
          f"{k} {v[k]['dial_jax']:.6g} vs {v[k]['torch']:.6g} (|diff| {v[k]['abs_diff']:.1e})"
          for k in ("source_loss", "wasserstein", "grad_norm")))
  end = result.get("matmul_peak_end")
  print(f"matmul peak {result['matmul_peak']['peak_gflops']:.1f} GFLOP/s ({result['matmul_peak']['dtype']}; jax "
        f"{result['matmul_peak']['jax_gflops']:.1f}, torch {result['matmul_peak']['torch_gflops']:.1f})"
        + (f", {end['peak_gflops']:.1f} when measured again at the end" if end else "")
        + (f"; MFU against {result['mfu_peak_gflops']:.1f}" if "mfu_peak_gflops" in result else "")
        + f"; wrote {output} and {png}")
