r"""Choose DIAL's lambda without target labels, from finished training runs.

  python -m dial_jax.select runs/so_seed0 runs/so_seed1 runs/dial_lam1_seed0 runs/dial_lam1_seed1 ...

Each argument is a workdir of ``python -m dial_jax.main`` in one setting: source-only runs (``dial.mode=source_only``)
and DIAL runs at the candidate lambdas, one or more seeds each. For each lambda it prints what the label-free rules
read (``dial_jax/experiments/selection.py``): the source check (source_val accuracy; few-shot: source_train), whether
the critic's W fell during training, and the held-out domain gap of the final embeddings; beside them, how far the
domain term outweighed the Bradley–Terry term in the update and what it cost the source fit; then the lambda each rule
picks. Target labels are never read: the target splits enter only through their texts' embeddings. The last line is
the choice as JSON.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from absl import app

from dial_jax.experiments import rows as row_format
from dial_jax.experiments import selection


class SelectError(ValueError):
  """A workdir that cannot be read, or a set of runs the rules cannot choose from."""


def read_run(workdir: str | Path) -> dict:
  """A finished run as the selection rules read it: mode, lambda, seed, evaluation, held-out gap and the training
  history (``metrics.jsonl``'s train rows)."""
  workdir = Path(workdir)
  path = workdir / "results.json"
  if not path.is_file():
    raise SelectError(f"{workdir}: no results.json (not a finished dial_jax.main run)")
  try:
    results = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise SelectError(f"{path}: not JSON ({e})") from None
  missing = [k for k in ("setting", "mode", "lambda", "seed", "eval") if k not in results]
  if missing:
    raise SelectError(f"{path}: missing key(s) {', '.join(missing)}")
  try:
    history = [r for r in row_format.read_jsonl(workdir / "metrics.jsonl") if r.get("kind") == "train"]
  except ValueError as e:
    raise SelectError(str(e)) from None
  return {"workdir": str(workdir), "setting": results["setting"], "mode": results["mode"],
          "domain_loss": results.get("domain_loss"), "lambda": float(results["lambda"]), "seed": results["seed"],
          "eval": results["eval"], "heldout_gap": results.get("heldout_gap"), "history": history, "variant": ""}


def group(runs: list[dict]) -> tuple[list[dict], dict[float, list[dict]]]:
  """(source-only runs, {lambda: DIAL runs}); one setting, at least one of each, no seed twice in a cell."""
  settings = sorted({r["setting"] for r in runs})
  if len(settings) > 1:
    raise SelectError(f"runs of several settings ({', '.join(settings)}): choose lambda per setting")
  source_only = [r for r in runs if r["mode"] == "source_only"]
  dial: dict[float, list[dict]] = {}
  for r in runs:
    if r["mode"] == "dial":
      dial.setdefault(r["lambda"], []).append(r)
  for r in runs:
    if r["mode"] not in ("source_only", "dial"):
      raise SelectError(f"{r['workdir']}: mode {r['mode']!r} is neither source_only nor dial (an oracle reads "
                        "target labels)")
  if not source_only or not dial:
    raise SelectError("need at least one source-only run and one DIAL run")
  for name, cell in [("source-only", source_only), *((f"DIAL lambda={lam:g}", c) for lam, c in dial.items())]:
    seeds = [r["seed"] for r in cell]
    if len(set(seeds)) < len(seeds):
      raise SelectError(f"{name}: seed {max(seeds, key=seeds.count)} appears twice")
  split = selection.source_check_split(source_only[0])
  for r in [*source_only, *(r for c in dial.values() for r in c)]:
    if split not in r["eval"]:
      raise SelectError(f"{r['workdir']}: results.json has no {split} evaluation, the rules' source check")
  return source_only, dict(sorted(dial.items()))


def report(source_only: list[dict], dial: dict[float, list[dict]]) -> tuple[str, dict]:
  """The per-lambda table and the choices ``{"label_free": lambda | None, "label_free_heldout": ...}``."""
  split, p, se = selection.source_check(source_only)
  mean = lambda values: float(np.mean(values)) if values else float("nan")
  present = lambda rows, fn: [v for v in map(fn, rows) if v is not None]  # runs that measured it
  of = lambda rows, fn: mean(present(rows, fn))

  def gap(rows) -> str:
    """Mean held-out gap, ± its standard deviation over seeds when there are several (on some backbones it varies
    between seeds by more than DIAL moves it: compare the difference with this spread)."""
    values = present(rows, selection.heldout_gap)
    return f"{mean(values):.4f}" + (f" ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else "")

  source_loss = lambda r: row_format.history_value(r, "source_loss")
  lines = [f"source check: {split} accuracy; source-only {p:.3f} over {len(source_only)} run(s), bar {p - se:.3f}",
           "| run | seeds | source check | W falls | held-out gap | source loss, end | balance |",
           "| --- | --- | --- | --- | --- | --- | --- |",
           f"| source-only | {len(source_only)} | {p:.3f} | — | {gap(source_only)} | "
           f"{of(source_only, source_loss):.3f} | — |"]
  for lam, rows in dial.items():
    check = mean([selection.metric_of(r["eval"][split]) for r in rows])
    falls = sum(selection.w_falls(r) for r in rows)
    lines.append(f"| DIAL λ={lam:g} | {len(rows)} | {check:.3f} | {falls}/{len(rows)} | {gap(rows)} | "
                 f"{of(rows, source_loss):.3f} | {of(rows, selection.balance):.3g} |")
  lines.append("balance: ‖∇ λ·domain loss‖ / ‖∇ Bradley–Terry loss‖ (w.r.t. the embeddings) at the last logged step "
               "(mean over seeds); above 1 the domain term sets the update, and a source loss that ends above "
               "source-only's shows the source fit it cost. Neither rule reads these two columns.")
  choice = {"label_free": selection.label_free_lambda(source_only, dial),
            "label_free_heldout": selection.label_free_heldout_lambda(source_only, dial)}
  name = {"label_free": "label-free (W falls)", "label_free_heldout": "label-free (held-out gap)"}
  for rule, lam in choice.items():
    why = "none qualifies"
    if rule == "label_free_heldout" and not selection.has_heldout_gap(source_only, dial):
      why = "not measured (runs made before the held-out gap was recorded)"
    lines.append(f"{name[rule]}: " + (why if lam is None else f"λ = {lam:g}"))
  return "\n".join(lines), choice


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("give the workdirs of the source-only and DIAL runs of one setting")
  try:
    source_only, dial = group([read_run(w) for w in argv[1:]])
  except SelectError as e:
    sys.exit(f"error: {e}")
  text, choice = report(source_only, dial)
  print(text)
  print(json.dumps(choice))


if __name__ == "__main__":
  app.run(main)
