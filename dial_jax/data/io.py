"""Validated loading and writing of canonical JSONL (pairs and scored texts).

Rows are parsed and checked here, line by line, before anything reaches
``datasets``, so every problem is reported as ``DataError`` with the file, the
1-based line number and the field.  Loaders return ``(datasets.Dataset,
n_skipped)``; the Dataset keeps every column found in the file (metadata such
as ``group`` included; a row lacking a metadata column gets None there).
Whitespace-only lines are not rows and are ignored. Files are read through
:mod:`dial_jax.paths`, so a path may be local or in a bucket (``gs://...``).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Iterable, Sequence

import datasets

from dial_jax import paths

PAIR_FIELDS = ("id", "prompt", "response_chosen", "response_rejected")
SCORED_FIELDS = ("id", "text", "score")
DEFAULT_MAX_CHARS = 50_000

log = logging.getLogger(__name__)


class DataError(ValueError):
  """A bad row: the message names ``file:line`` and the field."""

  def __init__(self, path, line: int, field: str, problem: str):
    self.path, self.line, self.field, self.problem = str(path), line, field, problem
    super().__init__(f"{path}:{line}: field '{field}': {problem}")


def _check_text(obj: dict, field: str, where, max_chars: int, required: bool = True) -> None:
  if field not in obj:
    if required:
      raise DataError(*where, field, "missing")
    return
  v = obj[field]
  if not isinstance(v, str):
    raise DataError(*where, field, f"must be a string, got {type(v).__name__}")
  if not v.strip():
    raise DataError(*where, field, "empty text")
  if len(v) > max_chars:
    raise DataError(*where, field, f"too long: {len(v)} chars > max_chars={max_chars}")
  if any("\udc80" <= c <= "\udcff" for c in v):
    raise DataError(*where, field, "non-UTF-8 bytes")


def _parse_line(raw: bytes, where) -> dict:
  text = raw.decode("utf-8", errors="surrogateescape")
  try:
    obj = json.loads(text)
  except ValueError as e:
    bad = "non-UTF-8 bytes; " if any("\udc80" <= c <= "\udcff" for c in text) else ""
    raise DataError(*where, "<row>", f"{bad}invalid JSON ({e})") from None
  if not isinstance(obj, dict):
    raise DataError(*where, "<row>", f"must be a JSON object, got {type(obj).__name__}")
  return obj


def validate_row(obj: dict, kind: str, where, max_chars: int) -> dict:
  """Checks one parsed row of ``kind`` ``pairs`` or ``scored``; returns it."""
  if kind == "pairs":
    for f in PAIR_FIELDS:
      _check_text(obj, f, where, max_chars)
  else:
    _check_text(obj, "id", where, max_chars)
    _check_text(obj, "text", where, max_chars)
    _check_text(obj, "prompt", where, max_chars, required=False)
    if "score" not in obj:
      raise DataError(*where, "score", "missing")
    s = obj["score"]
    if isinstance(s, bool) or not isinstance(s, (int, float)):
      raise DataError(*where, "score", f"must be a number, got {type(s).__name__}")
    if not math.isfinite(s):
      raise DataError(*where, "score", f"must be finite, got {s}")
    obj = {**obj, "score": float(s)}
  for k, v in obj.items():  # metadata must not smuggle undecodable bytes either
    if isinstance(v, str) and any("\udc80" <= c <= "\udcff" for c in v):
      raise DataError(*where, k, "non-UTF-8 bytes")
  return obj


def read_rows(path: str | Path, kind: str, *, skip_bad_rows: bool = False,
              max_chars: int = DEFAULT_MAX_CHARS) -> tuple[list[dict], list[DataError]]:
  """Parses and validates a JSONL file; returns ``(rows, skipped_errors)``.

  Raises the first :class:`DataError` unless ``skip_bad_rows``; then bad rows
  (duplicate ids included) are skipped, each logged as a warning.
  """
  if kind not in ("pairs", "scored"):
    raise ValueError(f"kind must be 'pairs' or 'scored', got {kind!r}")
  rows, skipped, seen = [], [], {}
  with paths.path(path).open("rb") as f:
    for ln, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      where = (path, ln)
      try:
        obj = validate_row(_parse_line(raw, where), kind, where, max_chars)
        if obj["id"] in seen:
          raise DataError(*where, "id", f"duplicate id {obj['id']!r} (first on line {seen[obj['id']]})")
      except DataError as e:
        if not skip_bad_rows:
          raise
        log.warning("skipping bad row: %s", e)
        skipped.append(e)
        continue
      seen[obj["id"]] = ln
      rows.append(obj)
  if skipped:
    log.warning("%s: skipped %d bad row(s), kept %d", path, len(skipped), len(rows))
  return rows, skipped


def _to_dataset(rows: list[dict], fields: Sequence[str], path) -> datasets.Dataset:
  if not rows:
    feats = {f: datasets.Value("float64" if f == "score" else "string") for f in fields}
    return datasets.Dataset.from_dict({f: [] for f in fields}, features=datasets.Features(feats))
  columns = list(fields) + sorted({k for r in rows for k in r} - set(fields))
  try:
    return datasets.Dataset.from_dict({c: [r.get(c) for r in rows] for c in columns})
  except Exception as e:  # pyarrow: a metadata column mixes types
    bad = next((c for c in columns if len({type(r.get(c)) for r in rows} - {type(None)}) > 1), "?")
    raise DataError(path, 0, bad, f"column mixes value types ({e})") from None


def load_pairs(path: str | Path, *, skip_bad_rows: bool = False,
               max_chars: int = DEFAULT_MAX_CHARS) -> tuple[datasets.Dataset, int]:
  """Loads canonical pairs JSONL -> ``(Dataset, n_skipped)`` (see module doc)."""
  rows, skipped = read_rows(path, "pairs", skip_bad_rows=skip_bad_rows, max_chars=max_chars)
  return _to_dataset(rows, PAIR_FIELDS, path), len(skipped)


def load_scored(path: str | Path, *, skip_bad_rows: bool = False,
                max_chars: int = DEFAULT_MAX_CHARS) -> tuple[datasets.Dataset, int]:
  """Loads canonical scored-text JSONL -> ``(Dataset, n_skipped)``."""
  rows, skipped = read_rows(path, "scored", skip_bad_rows=skip_bad_rows, max_chars=max_chars)
  return _to_dataset(rows, SCORED_FIELDS, path), len(skipped)


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
  """Writes records as UTF-8 JSONL (one object per line); returns the count."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  n = 0
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n")
      n += 1
  return n
