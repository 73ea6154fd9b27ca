"""Batched reward scoring of texts: length-bucketed, fixed shapes (one compile per bucket), in input order."""
from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from dial_jax import metrics, parallel
from dial_jax.data import batching, tokenize
from dial_jax.hf import load


class Scorer:
  """Rewards (and pooled embeddings) of a reward model for lists of texts."""

  def __init__(self, model, variables, tokenizer, *, batch_size: int = 8, max_length: int = 1024, mesh=None):
    """With a ``mesh`` (and variables placed on it), inputs are global arrays with rows split over the batch
    axes and results come back replicated, so every process of a multi-host job gets all rewards."""
    self.model, self.variables, self.tokenizer, self.mesh = model, variables, tokenizer, mesh
    self.batch_size, self.max_length = batch_size, max_length
    self.buckets = batching.bucket_lengths(max_length)
    pad_id = model.config.pad_token_id
    self.pad_id = tokenizer.pad_token_id if pad_id is None else pad_id
    out_shardings = None if mesh is None else NamedSharding(mesh, PartitionSpec())
    self._apply = jax.jit(lambda v, ids, mask: model.apply(v, ids, mask), out_shardings=out_shardings)

  @classmethod
  def from_pretrained(cls, name_or_path: str | os.PathLike, *, dtype=jnp.float32, **kwargs) -> "Scorer":
    """From an HF directory, a bundled model name or a hub id (see ``dial_jax.hf.load``); a training workdir is
    read by ``dial_jax.workdir.load_scorer``."""
    model, variables, model_dir = load.load_reward_model(name_or_path, dtype=dtype)
    return cls(model, variables, load.load_tokenizer(model_dir), **kwargs)

  def score(self, texts: Sequence[str], *, progress: bool = False, return_embeddings: bool = False):
    """Rewards [N] float32 (and embeddings [N, D]) in the order of ``texts``."""
    token_lists = tokenize.encode(self.tokenizer, texts, self.max_length)
    return self.score_tokens(token_lists, progress=progress, return_embeddings=return_embeddings)

  def score_tokens(self, token_lists: Sequence[Sequence[int]], *, progress: bool = False,
                   return_embeddings: bool = False, desc: str = "scoring"):
    """Like :meth:`score` for already tokenized texts."""
    rewards = np.zeros(len(token_lists), np.float32)
    embeddings = None
    bar = tqdm(total=len(token_lists), desc=desc, unit="text", disable=not progress, dynamic_ncols=True)
    for idx in batching.length_sorted_batches([len(t) for t in token_lists], self.batch_size):
      length = batching.bucket_for(max(len(token_lists[i]) for i in idx), self.buckets)
      ids, mask = batching.pad([token_lists[i] for i in idx], length, self.pad_id, rows=self.batch_size)
      if self.mesh is not None:
        ids, mask = parallel.rows_sharded_on_all(ids, self.mesh), parallel.rows_sharded_on_all(mask, self.mesh)
      out = self._apply(self.variables, ids, mask)
      rewards[idx] = np.asarray(out["rewards"])[:len(idx)]
      if return_embeddings:
        emb = np.asarray(out["embeddings"])[:len(idx)]
        if embeddings is None:
          embeddings = np.zeros((len(token_lists), emb.shape[-1]), np.float32)
        embeddings[idx] = emb
      bar.update(len(idx))
    bar.close()
    return (rewards, embeddings) if return_embeddings else rewards


def texts_of(domain) -> list:
  """Every text of a split, in the order scored: chosen then rejected (pairs), or the texts (scored)."""
  return list(domain.chosen) + list(domain.rejected) if domain.kind == "pairs" else list(domain.texts)


def heldout_gap(embeddings: dict[str, np.ndarray]) -> dict | None:
  """``metrics.domain_gap`` of a model's embeddings (``{split: [texts, D]}``) on held-out texts, labels unused: the
  source check split (source_val; without one, as in few-shot: source_train) against target_val. Measured directly,
  it has no critic to converge (the label-free rule ``selection.label_free_heldout_lambda`` reads it). None without
  target_val or a source split."""
  source = "source_val" if "source_val" in embeddings else "source_train"
  if "target_val" not in embeddings or source not in embeddings:
    return None
  h_s, h_t = embeddings[source], embeddings["target_val"]
  return {"source_split": source, "target_split": "target_val", "n_source": len(h_s), "n_target": len(h_t),
          **metrics.domain_gap(h_s, h_t)}


def evaluate_domain(scorer: Scorer, domain, *, progress: bool = False, desc: str = "eval",
                    keep_scores: bool = False, keep_embeddings: bool = False) -> dict[str, float]:
  """Pairwise accuracy (pairs) or Pearson/Spearman with the human score (scored texts) of one split, each with a
  95 % interval (Wilson for accuracy, Fisher z for correlations) and its chance level; where the split knows its
  texts' lengths (``load_domain``), ``metrics.length_check``'s fields too (the reward against length, and what
  length alone does). Non-finite rewards are
  counted and reported (``nonfinite_rewards``) and the metric is then None, never silently scored as wrong.
  ``keep_scores`` adds the per-example ``margins`` (chosen - rejected) or ``rewards`` (for paired bootstraps);
  ``keep_embeddings`` the ``embeddings`` of every text (``texts_of`` order), from the same forward pass."""
  scored = scorer.score_tokens(texts_of(domain), progress=progress, desc=desc, return_embeddings=keep_embeddings)
  rewards, embeddings = scored if keep_embeddings else (scored, None)
  out = _metrics_of(domain, rewards, keep_scores)
  if keep_embeddings:
    out["embeddings"] = embeddings
  return out


def _metrics_of(domain, rewards: np.ndarray, keep_scores: bool) -> dict:
  if domain.kind == "pairs":
    n = len(domain.chosen)
    chosen, rejected = rewards[:n], rewards[n:]
    bad = int(np.sum(~np.isfinite(chosen) | ~np.isfinite(rejected)))
    if bad:
      return {"accuracy": None, "nonfinite_rewards": bad, "n": n, "chance": 0.5}
    acc = metrics.pairwise_accuracy(chosen, rejected)
    out = {"accuracy": acc, "accuracy_ci95": list(metrics.wilson_interval(acc, n)), "chance": 0.5,
           "margin": float(np.mean(chosen - rejected)), "n": n}
    if domain.lengths is not None:
      out.update(metrics.length_check("pairs", domain.lengths, chosen - rejected))
    if keep_scores:
      out["margins"] = (chosen - rejected).tolist()
    return out
  n = len(domain.texts)
  bad = int(np.sum(~np.isfinite(rewards)))
  if bad:
    return {"pearson": None, "spearman": None, "nonfinite_rewards": bad, "n": n, "chance": 0.0}
  pearson, spearman = metrics.pearson(rewards, domain.scores), metrics.spearman(rewards, domain.scores)
  out = {"pearson": pearson, "pearson_ci95": list(metrics.fisher_interval(pearson, n)), "spearman": spearman,
         "spearman_ci95": list(metrics.fisher_interval(spearman, n)), "chance": 0.0, "n": n}
  if domain.lengths is not None:
    out.update(metrics.length_check("scored", domain.lengths, rewards, domain.scores))
  if keep_scores:
    out["rewards"] = rewards.tolist()
  return out
