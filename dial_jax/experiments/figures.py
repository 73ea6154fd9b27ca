"""The report's figures (matplotlib, Agg): target-test metric per method, the loss balance over training, and a PCA
of the embeddings before and after training."""
from __future__ import annotations

from pathlib import Path

import ml_collections
import numpy as np

from dial_jax.experiments import rows as row_format
from dial_jax.experiments import runner
from dial_jax.experiments.grid_summary import PAPER, RULE_NAMES, TITLES, dial_runs, stats, target_metric


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def method_bars(s: dict) -> list[tuple[str, list[float], float | None]]:
  """(label, per-run test metrics, paper number) of the figure's bars for one setting."""
  out = [("frozen\nsource", [target_metric(r) for r in s["frozen_source"]], None),
         ("source-\nonly", [target_metric(r) for r in s["source_only"]], None)]
  for rule in s["choice"]:
    lam = s["choice"][rule]
    label = f"DIAL\n{RULE_NAMES[rule]}\n" + ("no λ" if lam is None else f"λ={lam:g}")
    out.append((label, [target_metric(r) for r in dial_runs(s, rule)], None))
  out += [("oracle", [target_metric(r) for r in s["oracle"]], None),
          ("frozen\noracle", [target_metric(r) for r in s["frozen_oracle"]], None)]
  return out


def target_figure(summary: dict, path: Path) -> None:
  """One panel per setting: target-test metric per method (mean, error bar = std over seeds, none when n = 1),
  the paper's numbers as markers, the chance line (0.5 accuracy, 0 Pearson)."""
  plt = _plt()
  settings = list(summary)
  fig, axes = plt.subplots(1, len(settings), figsize=(4.6 * len(settings), 4.4), squeeze=False)
  for ax, setting in zip(axes[0], settings):
    s = summary[setting]
    entries = method_bars(s)
    x = np.arange(len(entries))
    for i, (label, values, _) in enumerate(entries):
      mean, std, n = stats(values)
      if not n:
        ax.text(i, 0, "no runs", ha="center", va="bottom", fontsize=7, rotation=90, color="gray")
        continue
      ax.bar(i, mean, 0.7, color=f"C{i}", yerr=std if n > 1 else None, capsize=3)
      ax.annotate(f"{mean:.3f}\nn={n}", (i, mean + (std if n > 1 else 0)), textcoords="offset points",
                  xytext=(0, 2), ha="center", va="bottom", fontsize=6.5)
    paper_so, paper_dial = PAPER[setting]
    ax.plot([1.42], [paper_so], "k<", ms=6, label="paper (source-only, DIAL)")
    ax.plot([2.42, 3.42], [paper_dial, paper_dial], "k<", ms=6)
    chance = 0.5 if s["metric"] == "accuracy" else 0.0
    ax.axhline(chance, color="gray", lw=0.8, ls=":", label=f"chance ({chance:g})")
    ax.set_xticks(x, [e[0] for e in entries], fontsize=7)
    ax.set_ylabel(f"target test {s['metric']}" + (" (Pearson with the true scores)" if s["metric"] == "pearson"
                                                   else ""), fontsize=8)
    lo = min([chance - 0.05] + [np.min(v) for _, v, _ in entries if v])
    hi = max([max(PAPER[setting])] + [np.max(v) for _, v, _ in entries if v])
    ax.set_ylim(lo - 0.02 if s["metric"] == "pearson" else max(0.0, lo - 0.05), hi + 0.12)
    ax.set_title(TITLES[setting], fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
  fig.suptitle("Target-test metric (mean ± std over seeds)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _legend(ax, **kw) -> None:
  if ax.get_legend_handles_labels()[0]:
    ax.legend(**kw)


def _curve(rows: list[dict], key: str):
  """(steps, mean over runs, number of runs with that curve) of a history key (runs aligned on their common steps);
  None when absent. Rows with neither a history file nor kept curves (older rows) count as absent, so legends state
  what is averaged."""
  series = [row_format.curve(r, key) for r in rows]
  series = [x for x in series if x]
  if not series:
    return None
  steps = sorted(set.intersection(*(set(x) for x in series)))
  if not steps:
    return None
  return np.asarray(steps), np.asarray([np.mean([x[t] for x in series]) for t in steps]), len(series)


def balance_figure(summary: dict, path: Path) -> bool:
  """Per setting (columns): the gradient norms of the Bradley-Terry term and of the λ·domain term over steps for
  DIAL at the label-free λ (else target_val's) vs source-only (log y); the critic slope ‖∇f‖; the W estimate.
  Curves are means over the runs' seeds. False when none of the runs it draws (source-only and plain DIAL; not the
  variants) has a history file or kept curves."""
  drawn = lambda s: s["source_only"] + [r for runs in s["dial"].values() for r in runs]
  settings = [k for k, s in summary.items() if any(r.get("history") or r.get("history_curves") for r in drawn(s))]
  if not settings:
    return False
  plt = _plt()
  fig, axes = plt.subplots(3, len(settings), figsize=(4.4 * len(settings), 8.2), squeeze=False)
  for j, setting in enumerate(settings):
    s = summary[setting]
    rule = "label_free" if s["choice"]["label_free"] is not None else "target_val"
    lam = s["choice"][rule]
    dial = dial_runs(s, rule)
    tag = f"DIAL λ={lam:g} ({RULE_NAMES[rule]})" if lam is not None else "DIAL"
    ax = axes[0, j]
    for rows, key, label, style in (
        (s["source_only"], "balance/source_grad_norm", "source-only: ‖∇ BT loss‖", "C0-"),
        (dial, "balance/source_grad_norm", f"{tag}: ‖∇ BT loss‖", "C1-"),
        (dial, "balance/domain_grad_norm", f"{tag}: ‖∇ λ·domain loss‖", "C1--")):
      c = _curve(rows, key)
      if c is not None:
        ax.plot(*c[:2], style, label=f"{label} (n={c[2]})")
    ax.set_yscale("log")
    ax.set_title(TITLES[setting], fontsize=9)
    ax.set_ylabel("gradient norm w.r.t. embeddings", fontsize=8)
    _legend(ax, fontsize=6.5)
    for i, key, ylabel in ((1, "critic_slope", "critic slope ‖∇f‖ (GP target 1)"),
                           (2, "wasserstein", "W estimate (critic, train batch)")):
      ax = axes[i, j]
      for lam_k, rows in sorted(s["dial"].items()):
        c = _curve(rows, key)
        if c is not None:
          ax.plot(*c[:2], lw=2.2 if lam_k == lam else 1.0, label=f"DIAL λ={lam_k:g} (n={c[2]})"
                  + (" chosen" if lam_k == lam else ""))
      if i == 1:
        ax.axhline(1.0, color="gray", lw=0.8, ls=":")
      ax.set_ylabel(ylabel, fontsize=8)
      _legend(ax, fontsize=6.5)
    axes[2, j].set_xlabel("step")
  fig.suptitle("Loss balance, critic slope, W (mean over seeds)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return True


def _embedding_files(exp: ml_collections.ConfigDict, s: dict) -> dict[str, tuple[str, Path]]:
  """Panel name -> (title, npz) for the embedding setting's seed-0 runs that saved embeddings."""
  out = {}

  def add(name, title, rows):
    r = next((r for r in rows if r["seed"] == 0), None)
    if r is not None:
      f = runner.embeddings_path(exp, runner.RunSpec(r["setting"], r["mode"], r["domain_loss"], r["lambda"],
                                                     r["learning_rate"], 0))
      if f.exists():
        out[name] = (title, f)

  add("source_only", "after source-only", s["source_only"])
  chosen = {}
  for rule in s["choice"]:
    if s["choice"][rule] is not None:
      chosen.setdefault(s["choice"][rule], []).append(RULE_NAMES[rule])
  for lam, names in chosen.items():
    add(f"dial_{lam:g}", f"after DIAL λ={lam:g} ({', '.join(names)})", s["dial"][lam])
  add("oracle", "after oracle", s["oracle"])
  return out


def embedding_figure(exp: ml_collections.ConfigDict, summary: dict, path: Path) -> dict | None:
  """2-D PCA of the embedding setting's source-train and target-val last-token embeddings before training and after
  source-only / DIAL / oracle (seed 0). One PCA basis (fitted on every panel's points) and the same axis limits in
  every panel, so distances compare across panels. Returns {"counts": (source, target), "panels": [...]} or None
  when the saved embeddings are not there."""
  s = summary.get(exp.embedding_setting)
  if s is None:
    return None
  files = _embedding_files(exp, s)
  if not files:
    return None
  data = {k: np.load(f) for k, (_, f) in files.items()}
  first = next(iter(data.values()))
  panels = [("before training", first["before_source_train"], first["before_target_val"])]
  panels += [(title, data[k]["after_source_train"], data[k]["after_target_val"]) for k, (title, _) in files.items()]
  everything = np.concatenate([np.concatenate([a, b]) for _, a, b in panels]).astype(np.float64)
  mean = everything.mean(0)
  _, _, vt = np.linalg.svd(everything - mean, full_matrices=False)
  proj = [(t, (a - mean) @ vt[:2].T, (b - mean) @ vt[:2].T) for t, a, b in panels]
  pts = np.concatenate([np.concatenate([a, b]) for _, a, b in proj])
  pad = 0.05 * (pts.max(0) - pts.min(0))
  lo, hi = pts.min(0) - pad, pts.max(0) + pad
  plt = _plt()
  fig, axes = plt.subplots(1, len(proj), figsize=(3.8 * len(proj), 3.9), squeeze=False)
  for ax, (title, a, b) in zip(axes[0], proj):
    ax.scatter(a[:, 0], a[:, 1], s=6, alpha=0.6, label=f"source train ({len(a)} texts)")
    ax.scatter(b[:, 0], b[:, 1], s=6, alpha=0.6, label=f"target val ({len(b)} texts)")
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
  fig.suptitle(f"{TITLES[exp.embedding_setting]}, seed 0: last-token embeddings, one PCA basis, same axes",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  counts = sorted({(len(a), len(b)) for _, a, b in proj})
  return {"counts": counts, "panels": [t for t, _, _ in proj]}
