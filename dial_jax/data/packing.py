"""Sequence packing for the train step: a step's sequences laid end to end in a few rows of fixed length.

Each row holds whole sequences, told apart by segment ids (attention never crosses them); positions restart at 0 in
every sequence, so a packed sequence computes what it would alone. With ``shared_prefix`` a pair's chosen and rejected
texts, which begin with the same prompt, are laid out as their common token prefix once, then the chosen and then the
rejected continuation: branch ids mark the continuations (1 chosen, 2 rejected; 0 the prefix and plain sequences) and
a continuation attends to the prefix and to itself only. Under causal attention the prefix's hidden states are the
same in both texts, so the rewards, embeddings and gradients are those of the two separate sequences, from fewer
tokens (prefix sharing, as in Wang et al. 2024, "Accelerating Direct Preference Optimization with Prefix Sharing").

Arrays of one packed micro-batch (``pack_micro_batch``): ``ids``, ``segment_ids`` (0 = padding), ``positions``,
``branch_ids`` of shape [rows, row_length]; ``last_positions`` [rows, slots] (the column of each sequence's last
token, slot by slot in its row); ``sequence_slots`` [n] (``row * slots + slot`` of sequence i, in input order).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

MODES = ("none", "sequences", "shared_prefix")
PACKED_KEYS = ("packed_ids", "packed_segment_ids", "packed_positions", "packed_branch_ids", "packed_last_positions",
               "packed_sequence_slots")


@dataclasses.dataclass
class Item:
  """What packing places: one sequence, or a (shared prefix, chosen continuation, rejected continuation) group."""

  tokens: list[int]
  positions: list[int]
  branches: list[int]
  ends: list[tuple[int, int]]  # (sequence index, offset of its last token in the item)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
  n = min(len(a), len(b))
  diff = np.nonzero(np.asarray(a[:n]) != np.asarray(b[:n]))[0]
  return int(diff[0]) if len(diff) else n


def _plain(index: int, tokens: Sequence[int]) -> Item:
  n = len(tokens)
  return Item(list(tokens), list(range(n)), [0] * n, [(index, n - 1)])


def make_items(sequences: Sequence[Sequence[int]], pairs: Sequence[tuple[int, int]], row_length: int,
               share_prefix: bool) -> list[Item]:
  """Packing units for ``sequences``; with ``share_prefix`` each (chosen, rejected) index pair in ``pairs`` whose
  texts share a token prefix becomes one group (two plain sequences if the group would not fit in a row)."""
  grouped: dict[int, Item | None] = {}
  if share_prefix:
    for c, r in pairs:
      a, b = sequences[c], sequences[r]
      # Each continuation keeps at least its own last token (identical texts, or one a prefix of the other).
      k = min(common_prefix_length(a, b), len(a) - 1, len(b) - 1)
      size = len(a) + len(b) - k
      if k <= 0 or size > row_length:
        continue
      grouped[c] = Item(
          tokens=list(a) + list(b[k:]),
          positions=list(range(len(a))) + list(range(k, len(b))),
          branches=[0] * k + [1] * (len(a) - k) + [2] * (len(b) - k),
          ends=[(c, len(a) - 1), (r, size - 1)])
      grouped[r] = None  # part of c's group
  items = []
  for i, tokens in enumerate(sequences):
    if len(tokens) == 0:
      raise ValueError(f"sequence {i} is empty: every text has at least one token")
    if len(tokens) > row_length:
      raise ValueError(f"sequence {i} has {len(tokens)} tokens, more than the packed row length {row_length}")
    if i in grouped:
      if grouped[i] is not None:
        items.append(grouped[i])
    else:
      items.append(_plain(i, tokens))
  return items


def first_fit(items: Sequence[Item], row_length: int) -> list[list[Item]]:
  """Rows of items, first-fit decreasing by length."""
  rows: list[list[Item]] = []
  used: list[int] = []
  for item in sorted(items, key=lambda it: -len(it.tokens)):
    for r, n in enumerate(used):
      if n + len(item.tokens) <= row_length:
        rows[r].append(item)
        used[r] += len(item.tokens)
        break
    else:
      rows.append([item])
      used.append(len(item.tokens))
  return rows


def to_arrays(rows: Sequence[Sequence[Item]], num_sequences: int, *, num_rows: int, row_length: int, slots: int,
              pad_id: int) -> dict[str, np.ndarray]:
  """The packed arrays (see the module docstring) with ``num_rows`` rows (extra rows are padding)."""
  if len(rows) > num_rows:
    raise ValueError(f"{len(rows)} packed rows do not fit in {num_rows}")
  shape = (num_rows, row_length)
  out = {"ids": np.full(shape, pad_id, np.int32), "segment_ids": np.zeros(shape, np.int32),
         "positions": np.zeros(shape, np.int32), "branch_ids": np.zeros(shape, np.int32),
         "last_positions": np.zeros((num_rows, slots), np.int32),
         "sequence_slots": np.full(num_sequences, -1, np.int32)}
  for r, row in enumerate(rows):
    offset, slot = 0, 0
    for segment, item in enumerate(row, 1):
      n = len(item.tokens)
      cols = slice(offset, offset + n)
      out["ids"][r, cols], out["positions"][r, cols], out["branch_ids"][r, cols] = (
          item.tokens, item.positions, item.branches)
      out["segment_ids"][r, cols] = segment
      for index, end in item.ends:
        if slot >= slots:
          raise ValueError(f"row {r} holds more than {slots} sequences")
        out["last_positions"][r, slot] = offset + end
        out["sequence_slots"][index] = r * slots + slot
        slot += 1
      offset += n
  if (out["sequence_slots"] < 0).any():
    raise AssertionError("a sequence was not packed")
  return out


def pair_indices(pairs_per_domain: int) -> list[tuple[int, int]]:
  """(chosen, rejected) indices in the step's sequence order: source chosen, source rejected, target chosen,
  target rejected, ``pairs_per_domain`` each."""
  b = pairs_per_domain
  return [(i, b + i) for i in range(b)] + [(2 * b + i, 3 * b + i) for i in range(b)]


def pack_rows(sequences: Sequence[Sequence[int]], pairs_per_domain: int, *, row_length: int,
              share_prefix: bool) -> list[list[Item]]:
  """First-fit rows of one micro-batch's ``4 * pairs_per_domain`` sequences (in the step's order)."""
  if len(sequences) != 4 * pairs_per_domain:
    raise ValueError(f"{len(sequences)} sequences, expected 4 x {pairs_per_domain} pairs per domain")
  items = make_items(sequences, pair_indices(pairs_per_domain) if share_prefix else (), row_length, share_prefix)
  return first_fit(items, row_length)


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple
