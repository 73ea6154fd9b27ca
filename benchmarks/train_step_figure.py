"""The train-step benchmark's figure: the headline comparison, then the length and batch sweeps.

Redraw from a committed result without rerunning the benchmark:
  python benchmarks/train_step_figure.py benchmarks/results/train_step_cpu.json benchmarks/results/train_step_gpu.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

LABELS = {"dial_jax": "dial_jax padded", "dial_jax_packed": "dial_jax packed",
          "dial_jax_shared": "dial_jax shared prefix", "torch": "torch (transformers + peft)"}
TICKS = {"dial_jax": "dial_jax\npadded", "dial_jax_packed": "dial_jax\npacked", "dial_jax_shared": "dial_jax\nshared",
         "torch": "torch"}
COLORS = {"dial_jax": "tab:blue", "dial_jax_packed": "tab:orange", "dial_jax_shared": "tab:green", "torch": "tab:red"}


def _label(impl: str) -> str:
  return LABELS.get(impl, impl)


def _points(result: dict, x_key: str, fixed_key: str, fixed: int) -> dict[tuple, list]:
  """{(model, impl): [(x, useful tokens/s)]} of the sweep points (and the headline if it is on the sweep's model)."""
  sweep_models = {p["model"] for p in result["sweep"]}
  head = result["headline"]
  extra = [head] if head and (head["model"] in sweep_models or not result["sweep"]) else []
  series: dict[tuple, list] = {}
  for p in result["sweep"] + extra:
    if p[fixed_key] == fixed:
      for impl, st in p["impls"].items():
        series.setdefault((p["model"], impl), []).append((p[x_key], st["tokens_per_s"]))
  return series


def plot(result: dict, path: Path, title: str) -> None:
  """Bars of useful tokens/s at the headline config (ratio over torch on each), then tokens/s against max_length
  and against pairs per domain. A panel whose values span more than 10x gets a log y axis; one legend, below."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cfg, head = result["config"], result["headline"]
  sweeps = [("max_length", "pairs_per_domain", cfg["pairs"]), ("pairs_per_domain", "max_length", cfg["seq_len"])]
  series = [_points(result, *s) for s in sweeps]
  fig, axes = plt.subplots(1, 3, figsize=(15, 5), gridspec_kw={"width_ratios": [1, 1.2, 1.2]})
  impls_seen: list[str] = []

  ax = axes[0]
  ax.set_ylabel("useful (non-pad) tokens / s")
  if head:
    impls = list(head["impls"])
    ys = [head["impls"][i]["tokens_per_s"] for i in impls]
    bars = ax.bar(range(len(impls)), ys, color=[COLORS.get(i, "gray") for i in impls])
    for bar, impl in zip(bars, impls):
      ratio = head["impls"][impl].get("ratio_over_torch")
      text = f"{ratio:.2f}x" if ratio is not None else "1.00x"
      ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                  fontsize=9, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(impls)), [TICKS.get(i, i) for i in impls], fontsize=8)
    ax.set_title(f"headline: {head['model']}\nmax_length {head['max_length']}, {head['pairs_per_domain']} "
                 "pairs/domain (x: over torch)", fontsize=9)
    _scale(ax, ys)
    impls_seen += impls

  for ax, (x_key, _, fixed), s in zip(axes[1:], sweeps, series):
    models = sorted({m for m, _ in s})
    for (model, impl), xy in sorted(s.items()):
      xy.sort()
      style = "--" if impl == "torch" else "-"
      marker = "o" if models.index(model) == 0 else "s"
      ax.plot([x for x, _ in xy], [y for _, y in xy], marker=marker, linestyle=style, color=COLORS.get(impl))
      impls_seen.append(impl)
    ax.set_xscale("log", base=2)
    ticks = sorted({x for xy in s.values() for x, _ in xy})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel({"max_length": f"max_length (tokens), {fixed} pairs/domain",
                   "pairs_per_domain": f"pairs per domain, max_length {fixed}"}[x_key])
    ax.set_title(f"sweep: {', '.join(models)}", fontsize=9)
    ax.grid(True, alpha=0.3)
    _scale(ax, [y for xy in s.values() for _, y in xy])
  order = [i for i in LABELS if i in impls_seen] + sorted(set(impls_seen) - set(LABELS))
  handles = [plt.Line2D([], [], color=COLORS.get(i, "gray"), marker="o", linestyle="--" if i == "torch" else "-")
             for i in order]
  fig.legend(handles, [_label(i) for i in order], loc="lower center", ncol=len(order), fontsize=9, frameon=False)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _scale(ax, values: list[float]) -> None:
  """Log y axis when ``values`` span more than 10x (GPU: torch is ~20x slower), else linear from 0."""
  if values and max(values) > 10 * min(values):
    ax.set_yscale("log")
    ax.set_ylim(0.5 * min(values), 2 * max(values))
    ax.set_ylabel("useful (non-pad) tokens / s (log scale)")
  else:
    ax.set_ylim(0, 1.15 * max(values or [1]))
  ax.grid(True, axis="y", alpha=0.3)


def title_of(result: dict) -> str:
  m, c = result["machine"], result["config"]
  return (f"DIAL train step, {c['dtype']}, LoRA r={c['lora_rank']}: {m.get('gpu') or m['cpu_model']} "
          f"({result['date'][:10]})")


def main(paths: list[str]) -> None:
  for name in paths:
    path = Path(name)
    result = json.loads(path.read_text())
    plot(result, path.with_suffix(".png"), title_of(result))
    print(f"wrote {path.with_suffix('.png')}")


if __name__ == "__main__":
  main(sys.argv[1:])
