"""Padding to a small fixed set of lengths (so jit compiles a handful of shapes), and length bucketing."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np


def bucket_lengths(max_length: int, min_bucket: int = 32) -> tuple[int, ...]:
  """Powers of two from ``min_bucket`` up to, and ending with, ``max_length``."""
  out, b = [], min_bucket
  while b < max_length:
    out.append(b)
    b *= 2
  out.append(max_length)
  return tuple(out)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
  for b in buckets:
    if length <= b:
      return b
  raise ValueError(f"sequence of {length} tokens exceeds the largest bucket {buckets[-1]}")


def pad(token_lists: Sequence[Sequence[int]], length: int, pad_id: int, rows: int | None = None,
        padding_side: str = "right") -> tuple[np.ndarray, np.ndarray]:
  """(ids, mask) int32 arrays of shape [rows, length]; extra rows (to keep a fixed batch) are all padding."""
  rows = len(token_lists) if rows is None else rows
  ids = np.full((rows, length), pad_id, np.int32)
  mask = np.zeros((rows, length), np.int32)
  for i, toks in enumerate(token_lists):
    n = len(toks)
    if n > length:
      raise ValueError(f"row {i} has {n} tokens, more than the padded length {length}")
    sl = slice(0, n) if padding_side == "right" else slice(length - n, length)
    ids[i, sl] = toks
    mask[i, sl] = 1
  return ids, mask


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
  """Indices grouped into batches of similar length (longest first, so memory problems show at once)."""
  order = np.argsort(-np.asarray(lengths), kind="stable")
  for start in range(0, len(order), batch_size):
    yield order[start:start + batch_size]
