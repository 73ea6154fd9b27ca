"""Canonical JSONL -> tokenized domains -> deterministic paired source/target train batches.

A batch is a pure function of (seed, step): the iterator position that a checkpoint must hold is the
step alone, so a resumed run sees exactly the batches an uninterrupted one would have seen. Each
process of a multi-host job builds only its own rows of every global batch.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from dial_jax import paths
from dial_jax.data import batching, packing, tokenize
from dial_jax.data import io as dio


@dataclasses.dataclass
class Domain:
  """Tokenized examples of one split: preference pairs, or texts with a score."""

  name: str
  kind: str                                   # "pairs" | "scored"
  chosen: list[list[int]] = dataclasses.field(default_factory=list)
  rejected: list[list[int]] = dataclasses.field(default_factory=list)
  texts: list[list[int]] = dataclasses.field(default_factory=list)
  scores: np.ndarray | None = None
  lengths: np.ndarray | None = None           # words of each response ([n, 2]: chosen, rejected) or text ([n])
  n_skipped: int = 0

  def __len__(self) -> int:
    return len(self.chosen) if self.kind == "pairs" else len(self.texts)


def file_kind(path: str | Path) -> str:
  """'scored' if the first row has a ``score`` field, else 'pairs'."""
  with paths.path(path).open("rb") as f:
    for raw in f:
      if raw.strip():
        try:
          return "scored" if "score" in json.loads(raw) else "pairs"
        except json.JSONDecodeError:
          return "pairs"  # let the validating loader report the row
  return "pairs"


def subset_indices(groups: Sequence, limit: int, seed: int) -> np.ndarray:
  """A seeded random draw of ``limit`` row indices, stratified by group (each group contributes in proportion to
  its size), returned in file order. ``groups`` holds one label per row (e.g. a topic; the row id where a file has
  no groups)."""
  n = len(groups)
  if not limit or limit >= n:
    return np.arange(n)
  rng = np.random.default_rng([seed, n, limit])
  labels, inverse = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
  perm = rng.permutation(n)
  # Systematic stratified sampling: item k of a shuffled group of size m gets key (k + u) / m.
  rank = np.empty(n, np.float64)
  sizes = np.bincount(inverse, minlength=len(labels)).astype(np.float64)
  seen = np.zeros(len(labels), np.int64)
  for i in perm:
    rank[i] = seen[inverse[i]]
    seen[inverse[i]] += 1
  keys = (rank + rng.random(n)) / sizes[inverse]
  return np.sort(np.argsort(keys, kind="stable")[:limit])


def take(domain: Domain, limit: int, seed: int) -> Domain:
  """At most ``limit`` examples of ``domain`` (a seeded random draw, in order; 0 = all, the domain itself)."""
  if not limit or limit >= len(domain):
    return domain
  idx = subset_indices(range(len(domain)), limit, seed)
  lengths = None if domain.lengths is None else domain.lengths[idx]
  if domain.kind == "pairs":
    return dataclasses.replace(domain, chosen=[domain.chosen[i] for i in idx],
                               rejected=[domain.rejected[i] for i in idx], lengths=lengths)
  return dataclasses.replace(domain, texts=[domain.texts[i] for i in idx], scores=domain.scores[idx], lengths=lengths)


def load_domain(path: str | Path, tokenizer, max_length: int, *, skip_bad_rows: bool = False,
                limit: int = 0, seed: int = 0, truncation: str = "end") -> Domain:
  """Load (through ``datasets``, validating every row) and tokenize a canonical JSONL split. ``limit`` keeps a
  seeded random subset (:func:`subset_indices`, stratified by the ``group`` column where the file has one);
  ``truncation`` says which end of an over-long text survives (see :func:`dial_jax.data.tokenize.encode`).
  ``path`` is local or in a bucket (``gs://...``, read through :mod:`dial_jax.paths`)."""
  path = paths.path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: run `python -m dial_jax.prepare --out_dir=...` and point "
                            "--config.data.dir at its output")
  kind = file_kind(path)
  loader = dio.load_scored if kind == "scored" else dio.load_pairs
  ds, skipped = loader(path, skip_bad_rows=skip_bad_rows)
  if limit and limit < len(ds):
    groups = ds["group"] if "group" in ds.column_names else ds["id"]
    groups = [g if g is not None else i for g, i in zip(groups, ds["id"])]
    ds = ds.select(subset_indices(groups, limit, seed))
  domain = Domain(name=path.stem, kind=kind, n_skipped=skipped)
  if kind == "pairs":
    domain.chosen = tokenize.encode(tokenizer,
                                    [tokenize.join(p, r) for p, r in zip(ds["prompt"], ds["response_chosen"])],
                                    max_length, truncation)
    domain.rejected = tokenize.encode(
        tokenizer, [tokenize.join(p, r) for p, r in zip(ds["prompt"], ds["response_rejected"])], max_length,
        truncation)
    domain.lengths = np.asarray([(tokenize.words(c), tokenize.words(r))
                                 for c, r in zip(ds["response_chosen"], ds["response_rejected"])], np.int64)
  else:
    prompts = ds["prompt"] if "prompt" in ds.column_names else [None] * len(ds)
    domain.texts = tokenize.encode(tokenizer, [tokenize.join(p or "", t) for p, t in zip(prompts, ds["text"])],
                                   max_length, truncation)
    domain.scores = np.asarray(ds["score"], np.float32)
    domain.lengths = np.asarray([tokenize.words(t) for t in ds["text"]], np.int64)
  return domain


def _epoch_index(n: int, seed: int, salt: int, global_positions: np.ndarray) -> np.ndarray:
  """Item index for each global sample position: a fresh seeded permutation of the n items per epoch."""
  out = np.empty(len(global_positions), np.int64)
  epochs = global_positions // n
  for epoch in np.unique(epochs):
    perm = np.random.default_rng([seed, salt, int(epoch)]).permutation(n)
    sel = epochs == epoch
    out[sel] = perm[global_positions[sel] % n]
  return out


BATCH_KEYS = tuple(f"{d}_{side}_{kind}" for d in ("source", "target") for side in ("chosen", "rejected")
                   for kind in ("ids", "mask")) + ("target_pair_weight",)
# The target's "chosen"/"rejected" slots hold a pair in a label-free order; target_pair_weight's sign says which
# text is preferred (+1 the first, -1 the second, 0 a tie). Only the oracle loss and monitor metrics read it.


class PairedBatches:
  """``batch(step)``: source pairs + target pairs (or score-ordered pairs of scored texts) for one step.

  Arrays have shape ``[grad_accum, pairs per micro-batch (this process's share), length]``, one array each for
  source/target chosen/rejected ids and masks (see ``BATCH_KEYS``); ``length`` is the smallest bucket that fits
  every text of the step.

  With ``packing`` ``sequences`` or ``shared_prefix`` the step's sequences are packed instead
  (``dial_jax.data.packing``) into rows of ``pack_row_length`` tokens: ``PACKED_KEYS`` arrays of shape
  ``[grad_accum, rows (this process's share), ...]``, plus ``target_pair_weight``. Every process packs every
  process's sequences, so all agree on the row count: the step's largest, rounded up to ``pack_rows_multiple``.
  """

  def __init__(self, source: Domain, target: Domain, *, batch_size: int, grad_accum_steps: int, buckets: Sequence[int],
               pad_id: int, seed: int, process_index: int = 0, process_count: int = 1, packing_mode: str = "none",
               pack_row_length: int = 0, pack_rows_multiple: int = 1):
    if source.kind != "pairs":
      raise ValueError(f"the source domain must be preference pairs, {source.name} holds scored texts")
    if batch_size % grad_accum_steps:
      raise ValueError(f"train.batch_size {batch_size} must be divisible by grad_accum_steps {grad_accum_steps}")
    micro = batch_size // grad_accum_steps
    if micro % process_count:
      raise ValueError(f"pairs per micro-batch ({micro}) must be divisible by the process count ({process_count})")
    for d in (source, target):
      if len(d) == 0 or (d.kind == "scored" and len(d) < 2):
        raise ValueError(f"domain {d.name} has too few examples ({len(d)})")
    self.source, self.target = source, target
    self.batch_size, self.accum, self.micro = batch_size, grad_accum_steps, micro
    self.buckets, self.pad_id, self.seed = tuple(buckets), pad_id, seed
    self.process_index, self.process_count = process_index, process_count
    if packing_mode not in packing.MODES:
      raise ValueError(f"data.packing must be one of {packing.MODES}, got {packing_mode!r}")
    self.packing_mode = packing_mode
    self.pack_row_length = pack_row_length or self.buckets[-1]
    if self.pack_row_length < self.buckets[-1]:
      raise ValueError(f"data.pack_row_length {pack_row_length} is shorter than data.max_length {self.buckets[-1]}")
    if pack_rows_multiple < 1:
      raise ValueError(f"pack_rows_multiple must be >= 1, got {pack_rows_multiple}")
    self.pack_rows_multiple = pack_rows_multiple

  def _pairs(self, domain: Domain, salt: int, step: int, labeled: bool):
    """(first token lists, second token lists, signed weights) in global order for one step.

    Labeled (the source): first = chosen, second = rejected, weight 1. Unlabeled (the target): the two texts of a
    pair are put in an order that does not depend on the label (token lists compared), and the label survives
    only as the weight's sign (+1: first preferred, -1: second, 0: a scored tie), which the step reads for the
    oracle loss and the monitor metrics alone. So flipping every target label changes nothing else, bit for bit.
    """
    positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
    if domain.kind == "pairs":
      idx = _epoch_index(len(domain), self.seed, salt, positions)
      first, second = [domain.chosen[i] for i in idx], [domain.rejected[i] for i in idx]
      sign = np.ones(len(idx), np.float32)
    else:  # scored texts: two draws per pair; the higher score is preferred, ties carry no label
      a = _epoch_index(len(domain), self.seed, salt, 2 * positions)
      b = _epoch_index(len(domain), self.seed, salt, 2 * positions + 1)
      first, second = [domain.texts[i] for i in a], [domain.texts[i] for i in b]
      sign = np.sign(domain.scores[a] - domain.scores[b]).astype(np.float32)
    if labeled:  # the constructor checked the source is pairs
      return first, second, sign
    for i, (x, y) in enumerate(zip(first, second)):
      if list(y) < list(x):
        first[i], second[i], sign[i] = y, x, -sign[i]
    return first, second, sign

  def batch(self, step: int) -> dict[str, np.ndarray]:
    s_c, s_r, _ = self._pairs(self.source, 0, step, labeled=True)
    t_c, t_r, t_w = self._pairs(self.target, 1, step, labeled=False)
    if self.packing_mode != "none":
      return self._packed_batch(s_c, s_r, t_c, t_r, t_w)
    length = batching.bucket_for(max(len(t) for t in s_c + s_r + t_c + t_r), self.buckets)
    per_proc = self.micro // self.process_count
    parts = {"source_chosen": s_c, "source_rejected": s_r, "target_chosen": t_c, "target_rejected": t_r}
    out = {k: [] for k in BATCH_KEYS}
    for m in range(self.accum):
      start = m * self.micro + self.process_index * per_proc
      rows = slice(start, start + per_proc)
      for name, token_lists in parts.items():
        ids, mask = batching.pad(token_lists[rows], length, self.pad_id)
        out[f"{name}_ids"].append(ids)
        out[f"{name}_mask"].append(mask)
      out["target_pair_weight"].append(t_w[rows])
    return {k: np.stack(v) for k, v in out.items()}

  def _packed_batch(self, s_c, s_r, t_c, t_r, t_w) -> dict[str, np.ndarray]:
    per_proc = self.micro // self.process_count
    rows = {}  # (micro-batch, process) -> packed rows
    for m in range(self.accum):
      for p in range(self.process_count):
        start = m * self.micro + p * per_proc
        sl = slice(start, start + per_proc)
        rows[m, p] = packing.pack_rows(s_c[sl] + s_r[sl] + t_c[sl] + t_r[sl], per_proc,
                                       row_length=self.pack_row_length,
                                       share_prefix=self.packing_mode == "shared_prefix")
    num_rows = packing.round_up(max(len(r) for r in rows.values()), self.pack_rows_multiple)
    out = {k: [] for k in packing.PACKED_KEYS + ("packed_sequence_order", "target_pair_weight")}
    slots = 4 * per_proc
    # Global numbering, computed here so the step needs no process count: this process's rows follow those of
    # the processes before it, and its sequence of part k, pair j goes to position k * micro + p * per_proc + j.
    part, pair = np.divmod(np.arange(slots), per_proc)
    order = (part * self.micro + self.process_index * per_proc + pair).astype(np.int32)
    for m in range(self.accum):
      arrays = packing.to_arrays(rows[m, self.process_index], slots, num_rows=num_rows,
                                 row_length=self.pack_row_length, slots=slots, pad_id=self.pad_id)
      arrays["sequence_slots"] = arrays["sequence_slots"] + self.process_index * num_rows * slots
      for k, v in arrays.items():
        out[f"packed_{k}"].append(v)
      out["packed_sequence_order"].append(order)
      start = m * self.micro + self.process_index * per_proc
      out["target_pair_weight"].append(t_w[start:start + per_proc])
    return {k: np.stack(v) for k, v in out.items()}
