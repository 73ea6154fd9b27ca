"""Train only the top layers of a reward model on cached activations of its frozen lower layers.

The frozen bottom layers run once over every token of every text; their output is stored as one flat
``[tokens + 1, D]`` float32 array (the last row is zeros and serves as padding). The *top model* is then an
ordinary :class:`~dial_jax.models.reward.RewardModel` whose embedding table is that array and whose "token ids"
are row indices into it, so the unchanged train step, batching and evaluation code train and score it. With
last-token pooling its final layer runs on the last real token only. Both shortcuts are exact: the top model's
rewards equal the full model's (``tests/test_experiments.py``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dial_jax.data import batching
from dial_jax.data.pipeline import Domain
from dial_jax.models.decoder import Decoder, DecoderConfig
from dial_jax.models.reward import RewardModel


def split_config(cfg: DecoderConfig, top_layers: int) -> tuple[DecoderConfig, DecoderConfig]:
  """(bottom, top) decoder configs: the first ``L - top_layers`` layers and the last ``top_layers``."""
  n = cfg.num_layers
  if not 0 < top_layers < n:
    raise ValueError(f"top_layers must be in 1..{n - 1}, got {top_layers}")
  cut = n - top_layers
  types = tuple(cfg.layer_types)
  bottom = cfg.replace(num_layers=cut, layer_types=types[:cut])
  top = cfg.replace(num_layers=top_layers, layer_types=types[cut:], embed_scale=False, tie_word_embeddings=True)
  return bottom, top


def split_params(params: dict, num_layers: int, top_layers: int) -> tuple[dict, dict]:
  """(bottom backbone params, top backbone params without the embedding) of a reward model's ``params``."""
  backbone = params["backbone"]
  cut = num_layers - top_layers
  bottom = {"embed_tokens": backbone["embed_tokens"], "norm": backbone["norm"],  # norm: unused, but applied
            **{f"layers_{i}": backbone[f"layers_{i}"] for i in range(cut)}}
  top = {f"layers_{j}": backbone[f"layers_{cut + j}"] for j in range(top_layers)}
  top["norm"] = backbone["norm"]
  return bottom, top


def token_lists_of(domains: Sequence[Domain]) -> list[list[int]]:
  """Every text of the domains, in a fixed order (chosen, rejected, texts per domain)."""
  out = []
  for d in domains:
    out += list(d.chosen) + list(d.rejected) + list(d.texts)
  return out


def fingerprint(token_lists: Sequence[Sequence[int]], *parts) -> str:
  h = hashlib.sha256(repr(parts).encode())
  for toks in token_lists:
    h.update(np.asarray(toks, np.int32).tobytes())
    h.update(b"|")
  return h.hexdigest()[:16]


def compute_prefix_cache(bottom_cfg: DecoderConfig, bottom_params: dict, token_lists: Sequence[Sequence[int]], *,
                         pad_id: int, batch_size: int = 8, max_length: int, min_bucket: int = 32,
                         dtype=jnp.float32, out: np.ndarray | None = None, batches_done: int = 0,
                         checkpoint=None, checkpoint_every: int = 25) -> np.ndarray:
  """Bottom layers' output for every token: ``[sum(len) + 1, D]`` float32, texts back to back, zero last row.

  To resume a build, pass the partly written ``out`` and the number of batches already in it: they are skipped
  (the batch order depends only on the lengths and ``batch_size``). ``checkpoint(n)`` is called once the first
  ``n`` batches are in ``out``, every ``checkpoint_every`` batches and at the end.
  """
  decoder = Decoder(bottom_cfg, dtype=dtype)
  apply = jax.jit(lambda p, ids, mask: decoder.apply({"params": p}, ids, mask, return_all_hidden=True)[1][-1])
  lengths = np.array([len(t) for t in token_lists])
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  if out is None:
    out = np.zeros(cache_shape(token_lists, bottom_cfg.hidden_size), np.float32)
  buckets = batching.bucket_lengths(max_length, min_bucket)
  total = len(token_lists)
  n_batches = 0
  for n_batches, idx in enumerate(batching.length_sorted_batches(lengths, batch_size), start=1):
    if n_batches <= batches_done:
      continue
    length = batching.bucket_for(int(lengths[idx].max()), buckets)
    ids, mask = batching.pad([token_lists[i] for i in idx], length, pad_id, rows=batch_size)
    hidden = np.asarray(apply(bottom_params, ids, mask), np.float32)
    for row, i in enumerate(idx):
      out[offsets[i]:offsets[i + 1]] = hidden[row, :lengths[i]]
    if n_batches % checkpoint_every == 0:
      logging.info("prefix cache: %d / %d texts", min(n_batches * batch_size, total), total)
      if checkpoint is not None:
        checkpoint(n_batches)
  if checkpoint is not None and n_batches > batches_done:
    checkpoint(n_batches)
  return out


def cache_shape(token_lists: Sequence[Sequence[int]], hidden_size: int) -> tuple[int, int]:
  return sum(len(t) for t in token_lists) + 1, hidden_size


def load_or_compute(path: Path, shape: tuple[int, int], fill, plan: dict | None = None
                    ) -> tuple[np.ndarray, float | None]:
  """(the cache at ``path``, seconds its build took), building it first if it does not exist.

  The build writes into ``<stem>.partial.npy`` (a memory map of ``shape``) through
  ``fill(out, batches_done, checkpoint)``, usually :func:`compute_prefix_cache`. Each checkpoint flushes the map
  and then records the batches done and seconds spent in ``<stem>.partial.json``, so a build killed part-way
  (caches take up to an hour on a CPU) resumes from its last checkpoint. A partial build made with another
  ``plan`` (batch size, bucketing) or shape is started over. The finished array is renamed to ``path``; the
  seconds live in a ``.json`` beside it (None for caches made before they were kept).
  """
  meta = path.with_suffix(".json")
  if path.exists():
    seconds = json.loads(meta.read_text())["compute_seconds"] if meta.exists() else None
    return np.load(path, mmap_mode="r"), seconds
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_name(path.stem + ".partial.npy")
  progress = path.with_name(path.stem + ".partial.json")
  identity = {"shape": list(shape), "plan": plan or {}}
  state = {"batches_done": 0, "seconds": 0.0}
  if partial.exists() and progress.exists():
    saved = json.loads(progress.read_text())
    if {k: saved.get(k) for k in identity} == identity:
      state = {k: saved[k] for k in state}
      logging.info("prefix cache %s: resuming after %d batches", path.name, state["batches_done"])
    else:
      logging.warning("prefix cache %s: partial build with another shape or plan, starting over", path.name)
  if state["batches_done"]:
    out = np.lib.format.open_memmap(partial, mode="r+")
  else:
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=tuple(shape))
  start = time.time()

  def checkpoint(batches_done: int):
    out.flush()
    tmp = progress.with_name(progress.name + ".tmp")
    tmp.write_text(json.dumps({**identity, "batches_done": batches_done,
                               "seconds": state["seconds"] + time.time() - start}))
    tmp.replace(progress)

  fill(out, state["batches_done"], checkpoint)
  out.flush()
  seconds = state["seconds"] + time.time() - start
  del out
  partial.replace(path)
  meta.write_text(json.dumps({"compute_seconds": seconds, "rows": int(shape[0])}))
  progress.unlink()
  return np.load(path, mmap_mode="r"), seconds


def reindex(domains: Sequence[Domain]) -> list[Domain]:
  """The domains with each text replaced by its row indices into the prefix cache (same order as
  :func:`token_lists_of`)."""
  out, offset = [], 0

  def rows(token_lists):
    nonlocal offset
    res = []
    for toks in token_lists:
      res.append(list(range(offset, offset + len(toks))))
      offset += len(toks)
    return res

  for d in domains:
    out.append(dataclasses.replace(d, chosen=rows(d.chosen), rejected=rows(d.rejected), texts=rows(d.texts)))
  return out


def top_model(top_cfg: DecoderConfig, cache_rows: int) -> RewardModel:
  """The reward model over cached rows: vocabulary = cache rows, padding = the zero last row."""
  cfg = top_cfg.replace(vocab_size=cache_rows, pad_token_id=cache_rows - 1)
  return RewardModel(cfg, pooling="last", last_token_only=True)


def top_variables(cache: np.ndarray, top_backbone: dict, head_kernel) -> dict:
  """Fresh copies (a train step donates its state, so runs must not share buffers)."""
  backbone = jax.tree.map(lambda a: jnp.array(a, copy=True), top_backbone)
  return {"params": {"backbone": {"embed_tokens": {"embedding": jnp.array(cache, copy=True)}, **backbone},
                     "score": {"kernel": jnp.array(head_kernel, jnp.float32, copy=True)}}}
