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
                         dtype=jnp.float32) -> np.ndarray:
  """Bottom layers' output for every token: ``[sum(len) + 1, D]`` float32, texts back to back, zero last row."""
  decoder = Decoder(bottom_cfg, dtype=dtype)
  apply = jax.jit(lambda p, ids, mask: decoder.apply({"params": p}, ids, mask, return_all_hidden=True)[1][-1])
  lengths = np.array([len(t) for t in token_lists])
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  out = np.zeros((int(offsets[-1]) + 1, bottom_cfg.hidden_size), np.float32)
  buckets = batching.bucket_lengths(max_length, min_bucket)
  done, total = 0, len(token_lists)
  for idx in batching.length_sorted_batches(lengths, batch_size):
    length = batching.bucket_for(int(lengths[idx].max()), buckets)
    ids, mask = batching.pad([token_lists[i] for i in idx], length, pad_id, rows=batch_size)
    hidden = np.asarray(apply(bottom_params, ids, mask), np.float32)
    for row, i in enumerate(idx):
      out[offsets[i]:offsets[i + 1]] = hidden[row, :lengths[i]]
    done += len(idx)
    if done % (batch_size * 25) < batch_size:
      logging.info("prefix cache: %d / %d texts", done, total)
  return out


def load_or_compute(path: Path, compute) -> tuple[np.ndarray, float | None]:
  """(the array at ``path``, seconds it took to compute) if it exists, else ``compute()`` saved there
  atomically. The seconds live in a ``.json`` beside the array (None for caches made before it was kept)."""
  meta = path.with_suffix(".json")
  if path.exists():
    seconds = json.loads(meta.read_text())["compute_seconds"] if meta.exists() else None
    return np.load(path, mmap_mode="r"), seconds
  start = time.time()
  array = compute()
  seconds = time.time() - start
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp.npy")
  np.save(tmp, array)
  tmp.replace(path)
  meta.write_text(json.dumps({"compute_seconds": seconds, "rows": int(array.shape[0])}))
  return array, seconds


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
