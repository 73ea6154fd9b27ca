r"""The results report (markdown table + figures), built from the results file and the saved embeddings alone.

  python -m dial_jax.experiments.report --config=configs/experiments.py
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import ml_collections
import numpy as np

from dial_jax.experiments import runner

# The paper's target metric (Wu & Choudhury, 2025), source-only -> DIAL, for reference only.
PAPER = {
    "cross_lingual": (0.621, 0.661),
    "clean_to_noisy": (0.671, 0.703),
    "few_shot": (0.845, 0.920),
    "simple_to_complex": (0.508, 0.556),
}
TITLES = {
    "cross_lingual": "cross-lingual (HH EN -> KO)",
    "clean_to_noisy": "clean-to-noisy (CNN/DM -> TL;DR)",
    "few_shot": "few-shot-to-full (TL;DR)",
    "simple_to_complex": "simple-to-complex (UKPConvArg -> ASAP)",
}
METHODS = ("source_only", "dial", "oracle")


def _metric_name(rows: list[dict]) -> str:
  return "accuracy" if "accuracy" in rows[0]["eval"]["target_test"] else "pearson"


def _stats(values: list[float]) -> tuple[float, float, int]:
  a = np.asarray(values, np.float64)
  return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, len(a)


def _fmt(stats) -> str:
  mean, std, n = stats
  if n == 0:
    return "—"
  return f"{mean:.3f} ± {std:.3f} (n={n})" if n > 1 else f"{mean:.3f} (n=1)"


def summarize(exp: ml_collections.ConfigDict, rows: list[dict]) -> dict:
  """Per setting: chosen lr/lambda and the test metric of each method's runs at them (over ``exp.seeds``)."""
  out = {}
  for setting in exp.settings:
    everything = [r for r in rows if r["setting"] == setting]
    if not everything:
      continue
    mine = [r for r in everything if not r.get("variant")]
    variants = [r for r in everything if r.get("variant")]
    lr, lam = runner.selections(exp, setting, rows)
    pick = {
        "source_only": lambda r: r["mode"] == "source_only" and r["learning_rate"] == lr and r["seed"] in exp.seeds,
        "dial": lambda r: (r["mode"] == "dial" and r["domain_loss"] == "wdgrl" and r["learning_rate"] == lr
                           and r["lambda"] == lam and r["seed"] in exp.seeds),
        "oracle": lambda r: r["mode"] == "oracle" and r["learning_rate"] == lr,
    }
    methods = {m: [r for r in mine if pick[m](r)] for m in METHODS}
    alt = {}
    for loss in exp.alt_domain_losses:
      alt[loss] = [r for r in mine if r["mode"] == "dial" and r["domain_loss"] == loss and r["learning_rate"] == lr
                   and r["lambda"] == lam]
    out[setting] = {"lr": lr, "lambda": lam, "metric": _metric_name(mine), "methods": methods, "alt": alt,
                    "rows": mine, "variants": variants, "sizes": mine[0]["data_sizes"],
                    "cache_seconds": _cache_seconds(everything)}
  return out


def _cache_seconds(rows: list[dict]) -> float | None:
  """The prefix cache's compute time recorded by the runs (None if every run loaded a cache made before times
  were kept: rows written then hold the load time, under a second)."""
  seconds = [r["cache_seconds"] for r in rows if r.get("cache_seconds") is not None]
  best = max(seconds, default=None)
  return best if best is not None and best >= 5.0 else None


def _test(rows):
  return [runner.target_metric(r, "target_test") for r in rows]


def bar_chart(summary: dict, path: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  settings = list(summary)
  fig, ax = plt.subplots(figsize=(9, 4))
  width = 0.26
  for j, method in enumerate(METHODS):
    means, errs = [], []
    for s in settings:
      mean, std, n = _stats(_test(summary[s]["methods"][method])) if summary[s]["methods"][method] else (0, 0, 0)
      means.append(mean)
      errs.append(std)
    ax.bar(np.arange(len(settings)) + (j - 1) * width, means, width, yerr=errs, capsize=3, label=method)
  ax.set_xticks(np.arange(len(settings)), [TITLES[s].split(" (")[0] for s in settings])
  ax.set_ylabel("target test metric\n(accuracy; Pearson for simple-to-complex)", fontsize=8)
  ax.axhline(0.5, color="gray", lw=0.5, ls=":")
  ax.legend()
  ax.set_title("dial_jax on CPU: Gemma-3-270M, top layer trained (mean ± std over seeds)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _pca2(x: np.ndarray, basis_of: np.ndarray) -> np.ndarray:
  mean = basis_of.mean(0)
  _, _, vt = np.linalg.svd(basis_of - mean, full_matrices=False)
  return (x - mean) @ vt[:2].T


def embedding_figure(exp: ml_collections.ConfigDict, summary: dict, path: Path) -> bool:
  """2-D PCA of source/target last-token embeddings before and after source-only and DIAL training, and W
  over training. False when the saved embeddings are not there (the figure is then left as it is)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  setting = exp.embedding_setting
  if setting not in summary:
    return False
  s = summary[setting]
  runs = {m: [r for r in s["methods"][m] if r["seed"] == 0] for m in ("source_only", "dial")}
  if not all(runs.values()):
    return False
  files = {m: runner.embeddings_path(exp, runner.RunSpec(setting, m, "wdgrl", runs[m][0]["lambda"],
                                                         runs[m][0]["learning_rate"], 0)) for m in runs}
  if not all(f.exists() for f in files.values()):
    return False
  data = {m: np.load(f) for m, f in files.items()}
  fig, axes = plt.subplots(1, 4, figsize=(17, 4))
  panels = [("before training", data["dial"], "before"), ("after source-only", data["source_only"], "after"),
            (f"after DIAL (λ={s['lambda']:g})", data["dial"], "after")]
  for ax, (title, d, when) in zip(axes, panels):
    src, tgt = d[f"{when}_source_train"], d[f"{when}_target_val"]
    both = np.concatenate([src, tgt])
    p_src, p_tgt = _pca2(src, both), _pca2(tgt, both)
    ax.scatter(p_src[:, 0], p_src[:, 1], s=6, alpha=0.6, label=f"source ({len(src)})")
    ax.scatter(p_tgt[:, 0], p_tgt[:, 1], s=6, alpha=0.6, label=f"target ({len(tgt)})")
    ax.set_title(f"{title}: PCA of last-token embeddings", fontsize=9)
    ax.legend(fontsize=7)
  ax = axes[3]
  for m in ("source_only", "dial"):
    hist = runs[m][0]["history"]
    ax.plot([h["step"] for h in hist], [h["wasserstein"] for h in hist], label=m)
  ax.set_xlabel("step")
  ax.set_ylabel("W estimate (critic, train batch)")
  ax.set_title("W(source, target) over training", fontsize=9)
  ax.legend(fontsize=7)
  fig.suptitle(f"{TITLES[setting]}, seed 0", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def render(exp: ml_collections.ConfigDict, summary: dict, rows: list[dict], figures: dict[str, str]) -> str:
  t = exp.train_config
  lines = [
      "# Quality: DIAL vs source-only on the four settings (CPU reproduction)", "",
      "Generated by `python -m dial_jax.experiments.report` from `experiments/results.jsonl`; every number below comes "
      "from a run recorded there (made with the commit in its `commit` field). Nothing is typed in by hand.", "",
      "## How the runs were made", "",
      f"- Backbone: bundled `{exp.model}`; only the top {exp.top_layers} layer(s), the final norm and the reward head "
      "train (all their weights), the layers below are frozen and their activations cached once per text "
      "(`dial_jax/experiments/prefix_cache.py`, exact: `tests/test_experiments.py`).",
      f"- Texts truncated to the last {exp.max_length} tokens; {t.train.num_steps} steps of "
      f"{t.train.batch_size} pairs per domain, AdamW (wd {t.train.weight_decay}), cosine schedule, "
      f"{t.train.warmup_steps} warm-up steps, clip {t.train.max_grad_norm}; critic {tuple(t.dial.critic_widths)} "
      f"({t.dial.critic_activation} activation), critic_iter {t.dial.critic_iter}, γ {t.dial.gamma}, critic Adam lr "
      f"{t.dial.critic_learning_rate}.",
      f"- Selection on `target_val` only (seed 0): learning rate from {tuple(exp.select_learning_rates)} for "
      f"source-only, then DIAL's λ from {tuple(exp.select_lambdas)} at that learning rate. Source-only, DIAL and "
      "the alternative losses use the chosen values; the test split is read only for the table.",
      f"- Seeds {tuple(exp.seeds)} (head init, batch order, critic init); oracle (target labels) seeds "
      f"{tuple(exp.oracle_seeds)}.", "",
      "## Target test metric", "",
      "| setting | metric | train src / tgt, val / test | lr, λ | source-only | DIAL | Δ DIAL − src | oracle | "
      "paper src → DIAL |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  verdicts = []
  for setting, s in summary.items():
    sizes = s["sizes"]
    so, di, orc = (_stats(_test(s["methods"][m])) if s["methods"][m] else (0, 0, 0) for m in METHODS)
    delta = di[0] - so[0] if so[2] and di[2] else float("nan")
    paper = PAPER[setting]
    lam = "—" if s["lambda"] is None else f"{s['lambda']:g}"
    lines.append(
        f"| {TITLES[setting]} | {s['metric']} | {sizes['source_train']} / {sizes['target_train']}, "
        f"{sizes['target_val']} / {sizes['target_test']} | {s['lr']:g}, {lam} | {_fmt(so)} | {_fmt(di)} | "
        f"{delta:+.3f} | {_fmt(orc)} | {paper[0]:.3f} → {paper[1]:.3f} |")
    if so[2] and di[2]:
      verdicts.append((setting, delta, so, di))
  lines += ["", "Sizes are pairs (texts for ASAP's scored target splits). Mean ± sample std over seeds.", ""]
  for setting, delta, so, di in verdicts:
    word = "above" if delta > 0 else "not above"
    lines.append(f"- {TITLES[setting]}: DIAL's mean is **{word}** source-only's ({di[0]:.3f} vs {so[0]:.3f}, "
                 f"Δ {delta:+.3f}; seed std {di[1]:.3f} / {so[1]:.3f}).")
  if figures.get("bars"):
    lines += ["", f"![target metric per setting and method]({figures['bars']})"]

  lines += ["", "## Alternative domain losses", ""]
  alt_rows = [(setting, loss, runs) for setting, s in summary.items() for loss, runs in s["alt"].items() if runs]
  if alt_rows:
    lines += ["| setting | domain loss | λ | target test | target val |", "| --- | --- | --- | --- | --- |"]
    for setting, s in summary.items():
      if not any(s["alt"].values()):
        continue
      base_rows = {"source-only": s["methods"]["source_only"], "wdgrl (DIAL)": s["methods"]["dial"]}
      for name, runs in list(base_rows.items()) + list(s["alt"].items()):
        runs = [r for r in runs if r["seed"] in exp.alt_seeds]
        if runs:
          lines.append(f"| {TITLES[setting]} | {name} | {runs[0]['lambda']:g} | {_fmt(_stats(_test(runs)))} | "
                       f"{_fmt(_stats([runner.target_metric(r) for r in runs]))} |")
    lines += ["", f"Seeds {tuple(exp.alt_seeds)}; λ is DIAL's chosen value (DANN: the gradient-reversal weight)."]
  else:
    lines.append("Not run yet.")

  lines += ["", "## Selection runs (target_val, seed 0)", "", "| setting | mode | lr | λ | target_val | target_test |",
            "| --- | --- | --- | --- | --- | --- |"]
  for setting, s in summary.items():
    for r in sorted(s["rows"], key=lambda r: (r["mode"], r["learning_rate"], r["lambda"])):
      if r["seed"] == 0 and r["domain_loss"] == "wdgrl" and r["mode"] != "oracle":
        lines.append(f"| {setting} | {r['mode']} | {r['learning_rate']:g} | {r['lambda']:g} | "
                     f"{runner.target_metric(r):.3f} | {runner.target_metric(r, 'target_test'):.3f} |")

  explored = [(setting, r) for setting, s in summary.items() for r in s["variants"]]
  if explored:
    lines += ["", "## What else was tried (DIAL variants, seed 0, at the chosen lr and λ)", "",
              "| setting | change | λ | target_val | target_test | source-only seed 0 (val / test) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for setting, r in explored:
      so = [x for x in summary[setting]["methods"]["source_only"] if x["seed"] == 0]
      ref = (f"{runner.target_metric(so[0]):.3f} / {runner.target_metric(so[0], 'target_test'):.3f}" if so else "—")
      lines.append(f"| {setting} | `{r['variant']}` | {r['lambda']:g} | {runner.target_metric(r):.3f} | "
                   f"{runner.target_metric(r, 'target_test'):.3f} | {ref} |")
    lines += ["", "These runs do not feed the main table (its configuration was fixed by the selection above)."]

  if figures.get("embeddings"):
    lines += ["", "## Embeddings and W over training", "",
              f"![embeddings before/after and W over training]({figures['embeddings']})", "",
              "PCA fitted per panel on source-train and target-val last-token embeddings (150 texts each). W is the "
              "critic's estimate on each step's training batch (source-only runs train the critic too, without "
              "passing its gradient to the reward model)."]

  run_seconds = sum(r["seconds"] for r in rows)
  cache = {s: v["cache_seconds"] for s, v in summary.items()}
  lines += ["", "## Compute", "",
            f"- {len(rows)} runs, {run_seconds / 60:.1f} min of training + evaluation in all "
            f"(median {np.median([r['seconds'] for r in rows]):.0f} s per run).",
            "- Prefix caches (one forward pass of the frozen layers per text; made once per setting, then loaded): "
            + ", ".join(f"{k} {v / 60:.1f} min" if v is not None else f"{k} not recorded (made by an earlier "
                        "invocation before compute times were kept)" for k, v in cache.items()) + ".",
            f"- Machine: {platform.machine()} CPU, {os.cpu_count()} cores (the project's 2-core CI kind); report "
            f"written {time.strftime('%Y-%m-%d')}.", "",
            "Reproduce: `python -m dial_jax.prepare --raw_dir=../shared/data/raw --out_dir=data` then "
            "`python -m dial_jax.experiments --config=configs/experiments.py` (resumes; skips finished runs), and "
            "`python -m dial_jax.experiments.report --config=configs/experiments.py` to rebuild this page. One run: "
            "`--settings=few_shot --max_runs=1`."]
  return "\n".join(lines) + "\n"


def write_report(exp: ml_collections.ConfigDict, path: str) -> str:
  """Write the report of the rows made under ``exp``'s grid (other rows in the file are ignored)."""
  fingerprint = runner.grid_fingerprint(exp)
  rows = [r for r in runner.read_results(exp.results) if r.get("grid") == fingerprint]
  path = Path(path)
  fig_dir = path.parent / "figures"
  fig_dir.mkdir(parents=True, exist_ok=True)
  summary = summarize(exp, rows)
  figures = {}
  if summary:
    bar_chart(summary, fig_dir / "target_metric.png")
    figures["bars"] = "figures/target_metric.png"
    if embedding_figure(exp, summary, fig_dir / "embeddings.png") or (fig_dir / "embeddings.png").exists():
      figures["embeddings"] = "figures/embeddings.png"
  text = render(exp, summary, rows, figures)
  notes = path.parent / "NOTES.md"
  if notes.exists():  # hand-written discussion, kept apart from the generated numbers
    text += "\n## Discussion (hand-written, `experiments/NOTES.md`)\n\n" + notes.read_text(encoding="utf-8")
  path.write_text(text, encoding="utf-8")
  return text


def main(argv):
  del argv
  write_report(FLAGS.config, FLAGS.report)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  FLAGS = flags.FLAGS
  config_flags.DEFINE_config_file("config", "configs/experiments.py", "Experiment grid config.", lock_config=False)
  flags.DEFINE_string("report", "experiments/REPORT.md", "Output markdown file.")
  app.run(main)
