"""The results file's rows: one compact JSON object per finished run, small enough to commit.

A run's full step history (every logged window, every metric) goes to a gitignored side file under the grid's
artifacts directory (``history_path``); the row keeps the first and last logged value of the metrics the report and
the lambda selection read (``history_ends``), and every logged value, to 4 significant digits, of the few metrics the
loss-balance figure draws (``history_curves``), so that figure can be redrawn from the results file alone.
Per-example target_test scores, which the paired bootstrap needs, are kept exactly but compactly (``encode_scores``):

* pairs: one character per pair, ``1`` (chosen ranked higher), ``0`` (lower) or ``h`` (tie); the bootstrap of
  accuracy needs nothing else. Decoded as margins +1 / -1 / 0.
* scored texts: the float32 rewards, little-endian, base64 (Pearson/Spearman need the values; float32 is what the
  model computed, so nothing is lost).

``compact`` also reads rows of the older, verbose format (a ``history`` list and a ``test_scores`` list), so the
committed file can be migrated: ``python -m dial_jax.experiments.rows IN OUT --artifacts_dir=DIR``.
"""
from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import numpy as np
from absl import logging

# Metrics whose first and last logged values a row keeps (report tables, selection.w_falls).
HISTORY_KEYS = ("loss", "source_loss", "source_accuracy", "wasserstein", "domain_gap", "critic_slope",
                "critic_input_scale", "gradient_penalty", "balance/source_grad_norm", "balance/domain_grad_norm")
# Metrics whose whole logged curve a row keeps (the report's loss-balance figure), rounded to 4 significant digits.
CURVE_KEYS = ("balance/source_grad_norm", "balance/domain_grad_norm", "critic_slope", "wasserstein")
_SIGN = {"1": 1.0, "0": -1.0, "h": 0.0}


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  """All rows of a JSON-lines file (the results file, a workdir's metrics.jsonl; missing file = none). A torn last
  line (crash mid-write) is ignored with a warning; a bad line elsewhere is a ValueError naming file and line."""
  path = Path(path)
  if not path.exists():
    return []
  rows = []
  lines = path.read_text(encoding="utf-8").splitlines()
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if n == len(lines):
        logging.warning("%s: ignoring a torn last line (%s)", path, e)
      else:
        raise ValueError(f"{path}: line {n} is not valid JSON: {e}") from e
  return rows


def encode_scores(scores, pairs: bool) -> dict | None:
  """Per-example scores in the row's compact form (see the module docstring); None for None."""
  if scores is None:
    return None
  a = np.asarray(scores, np.float64)
  if pairs:
    return {"encoding": "sign", "data": "".join("1" if m > 0 else "0" if m < 0 else "h" for m in a)}
  return {"encoding": "float32_base64", "data": base64.b64encode(a.astype("<f4").tobytes()).decode("ascii")}


def scores_of(row: dict) -> list[float] | None:
  """A row's per-example target_test scores (margins for pairs, rewards for scored texts), either format."""
  s = row.get("test_scores")
  if s is None or isinstance(s, list):
    return s
  if s["encoding"] == "sign":
    return [_SIGN[c] for c in s["data"]]
  if s["encoding"] == "float32_base64":
    return np.frombuffer(base64.b64decode(s["data"]), "<f4").astype(np.float64).tolist()
  raise ValueError(f"run {row.get('run_id')}: unknown test_scores encoding {s['encoding']!r}")


def history_value(row: dict, key: str, which: int = -1) -> float | None:
  """The first (``which=0``) or last (``-1``) logged value of a metric; None when never logged."""
  if "history" in row:
    values = [h[key] for h in row["history"] if h.get(key) is not None]
    return float(values[which]) if values else None
  ends = row.get("history_ends", {}).get(key)
  return None if ends is None else float(ends[0 if which == 0 else -1])


def curve(row: dict, key: str) -> dict[int, float]:
  """A metric's logged values by step: from the full ``history`` when the row has it (read back from the side file),
  else from the row's ``history_curves`` (``CURVE_KEYS`` only); empty when neither has it."""
  if "history" in row:
    return {int(h["step"]): float(h[key]) for h in row["history"] if h.get(key) is not None}
  return {int(t): float(v) for t, v in row.get("history_curves", {}).get(key, [])}


def history_path(artifacts_dir: str | os.PathLike, run_id: str, grid: str) -> Path:
  """Where a run's full step history is kept (gitignored)."""
  return Path(artifacts_dir) / "history" / grid / (run_id.replace("/", "_") + ".json")


def compact(row: dict, artifacts_dir: str | os.PathLike | None) -> dict:
  """The row to commit: the full history moved to ``history_path`` (when ``artifacts_dir`` is given), its ends kept,
  test scores encoded. Rows already compact come back unchanged."""
  row = dict(row)
  history = row.pop("history", None)
  if history is not None:
    row["history_ends"] = {k: [vs[0], vs[-1]] for k in HISTORY_KEYS
                           if (vs := [h[k] for h in history if h.get(k) is not None])}
    row["history_curves"] = {k: pts for k in CURVE_KEYS
                             if (pts := [[h["step"], float(f"{h[k]:.4g}")] for h in history if h.get(k) is not None])}
    if history and artifacts_dir is not None:
      path = history_path(artifacts_dir, row["run_id"], row.get("grid", "unknown"))
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.with_suffix(".tmp")
      tmp.write_text(json.dumps(history), encoding="utf-8")
      tmp.replace(path)
  if isinstance(row.get("test_scores"), list):
    row["test_scores"] = encode_scores(row["test_scores"], pairs="accuracy" in row["eval"]["target_test"])
  return row


def with_history(row: dict, artifacts_dir: str | os.PathLike | None) -> dict:
  """The row with its full ``history`` read back from the side file when there is one (for the figures)."""
  if "history" in row or artifacts_dir is None:
    return row
  path = history_path(artifacts_dir, row["run_id"], row.get("grid", "unknown"))
  return {**row, "history": json.loads(path.read_text(encoding="utf-8"))} if path.exists() else row


def main(argv: list[str]) -> int:
  """Migrate a results file to compact rows: ``python -m dial_jax.experiments.rows IN OUT --artifacts_dir=DIR``."""
  args = [a for a in argv if not a.startswith("--artifacts_dir=")]
  art = [a.split("=", 1)[1] for a in argv if a.startswith("--artifacts_dir=")]
  if len(args) != 2 or len(art) != 1:
    print(main.__doc__, file=sys.stderr)
    return 2
  src, dst = map(Path, args)
  if dst.exists():
    print(f"{dst}: exists; choose a new output file", file=sys.stderr)
    return 2
  lines = [line for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
  with open(dst, "w", encoding="utf-8") as f:
    for line in lines:
      f.write(json.dumps(compact(json.loads(line), art[0]), sort_keys=True) + "\n")
  print(f"{dst}: {len(lines)} rows ({src.stat().st_size} -> {dst.stat().st_size} bytes)")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
