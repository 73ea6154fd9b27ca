"""Prototype, measured by ``benchmarks/train_step.py``: dial_jax's DIAL step on packed sequences (segment ids).

dial_jax pads every sequence of a step to one bucket length; on real HH / TL;DR batches at max_length 512 about half
of the computed tokens are padding. Here the step's sequences are packed (first-fit decreasing) into rows of
``row_length`` tokens; attention is causal within each sequence only (and windowed on sliding layers), positions
restart at 0 per sequence, and rewards / embeddings are read at each sequence's last token. The decoder layers,
parameters, losses, critic update, RNG use and optimizer update are dial_jax's own (``dial_jax/train/step.py``), so
the metrics equal the padded step's up to float rounding (``tests/test_benchmarks.py``).

It lives here as a measured proposal, not a dial_jax feature: in dial_jax it would be a data option (pack the
step's sequences) plus a ``segment_ids`` / ``positions`` input to ``Decoder`` and a gather-by-index pooling.
Supported: ``dial.mode`` dial or source_only, ``dial.domain_loss=wdgrl``, no auxiliary loss, one micro-batch.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from dial_jax import losses
from dial_jax.models.decoder import SLIDING
from dial_jax.train import step as step_lib
from dial_jax.train.state import merge

PARTS = ("source_chosen", "source_rejected", "target_chosen", "target_rejected")


def pack(batch: dict, row_length: int, pad_id: int, row_multiple: int = 1) -> dict:
  """Pack a dial_jax train batch (one micro-batch) into rows; the row count is rounded up to ``row_multiple``.

  Returns ids / segment_ids (0 = padding, 1.. = sequence within the row) / positions, all ``[rows, row_length]``,
  ``last_index`` ([4 * pairs], flat index of each sequence's last token, in the order source chosen, source rejected,
  target chosen, target rejected) and ``target_pair_weight``.
  """
  seqs = []
  for p in PARTS:
    ids, mask = batch[f"{p}_ids"][0], batch[f"{p}_mask"][0]
    seqs += [ids[i, :int(mask[i].sum())] for i in range(ids.shape[0])]
  rows: list[list] = []  # [used tokens, [sequence indices]]
  for i in sorted(range(len(seqs)), key=lambda i: -len(seqs[i])):
    for row in rows:
      if row[0] + len(seqs[i]) <= row_length:
        row[0] += len(seqs[i])
        row[1].append(i)
        break
    else:
      rows.append([len(seqs[i]), [i]])
  n_rows = math.ceil(len(rows) / row_multiple) * row_multiple
  shape = (n_rows, row_length)
  out = {"ids": np.full(shape, pad_id, np.int32), "segment_ids": np.zeros(shape, np.int32),
         "positions": np.zeros(shape, np.int32), "last_index": np.zeros(len(seqs), np.int32),
         "target_pair_weight": np.asarray(batch["target_pair_weight"][0], np.float32)}
  for r, (_, members) in enumerate(rows):
    offset = 0
    for k, i in enumerate(members, 1):
      n = len(seqs[i])
      sl = slice(offset, offset + n)
      out["ids"][r, sl], out["segment_ids"][r, sl], out["positions"][r, sl] = seqs[i], k, np.arange(n)
      out["last_index"][i] = r * row_length + offset + n - 1
      offset += n
  return out


def packed_mask(segment_ids, sliding_window: int | None = None):
  """Boolean [R, 1, T, T]: causal, same sequence, real keys, and within ``sliding_window`` slots when given."""
  t = segment_ids.shape[-1]
  q, k = jnp.arange(t)[:, None], jnp.arange(t)[None, :]
  allowed = k <= q
  if sliding_window is not None:
    allowed = allowed & (q - k < sliding_window)
  same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
  return (allowed[None] & same)[:, None]


def packed_forward(module, ids, segment_ids, positions, last_index):
  """``RewardModel`` method: (rewards [S], float32 embeddings [S, D]) of the packed sequences, through the model's
  own embedding, decoder layers, final norm and score head (mirrors ``Decoder.__call__`` and ``pool``)."""
  dec = module.backbone
  cfg = dec.config
  x = dec.embed_tokens(ids)
  if cfg.embed_scale:
    x = x * jnp.asarray(cfg.hidden_size ** 0.5, dtype=x.dtype)
  types = {cfg.layer_type(i) for i in range(cfg.num_layers)}
  masks = {t: packed_mask(segment_ids, cfg.sliding_window if t == SLIDING else None) for t in types}
  for layer in dec.layers:
    x = layer(x, positions, masks)
  hidden = dec.norm(x).astype(jnp.float32)
  emb = hidden.reshape(-1, hidden.shape[-1])[last_index]
  return module.score(emb)[:, 0], emb


def _check(config) -> None:
  d = config.dial
  if d.mode not in ("dial", "source_only") or d.domain_loss != "wdgrl" or d.aux != "none" or \
      config.train.grad_accum_steps != 1 or config.model.pooling != "last":
    raise NotImplementedError("packed prototype: dial/source_only, wdgrl, no aux loss, one micro-batch, last pooling")


def packed_train_step(state, batch, *, model, critic, tx, critic_tx, config, pairs: int):
  """dial_jax's ``train_step`` with the forward on a packed batch (see :func:`pack`)."""
  d = config.dial
  rng, step_rng = jax.random.split(state.rng)
  lam = step_lib.domain_weight(config, state.step)
  n_src = 2 * pairs

  def loss_fn(trainable, critic_vars, critic_opt_state):
    r, h = model.apply(merge(trainable, state.frozen), batch["ids"], batch["segment_ids"], batch["positions"],
                       batch["last_index"], method=packed_forward)
    h_s, h_t = h[:n_src], h[n_src:]
    source_loss = losses.bradley_terry_loss(r[:pairs], r[pairs:n_src])
    critic_vars, critic_opt_state, cm = losses.critic_update(
        critic_vars, critic_opt_state, h_s, h_t, jax.random.fold_in(step_rng, 0), apply_fn=critic.apply,
        optimizer=critic_tx, gamma=d.gamma, num_iters=d.critic_iter)
    critic_vars = jax.lax.stop_gradient(critic_vars)
    f = critic.apply(critic_vars, h)
    domain = losses.wasserstein_estimate(f[:n_src], f[n_src:])
    loss = source_loss + lam * domain
    metrics = dict(loss=loss, source_loss=source_loss, wasserstein=domain, domain_loss=domain,
                   critic_loss=cm["critic_loss"], gradient_penalty=cm["gradient_penalty"],
                   source_accuracy=losses.pairwise_accuracy(r[:pairs], r[pairs:n_src]))
    return loss, (metrics, critic_vars, critic_opt_state)

  (_, (metrics, critic_vars, critic_opt_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.trainable, state.critic, state.critic_opt_state)
  new_state, grad_norm, finite = step_lib.apply_update(state, grads, metrics["loss"], critic_vars, critic_opt_state,
                                                      rng, tx)
  metrics.update(grad_norm=grad_norm, domain_weight=lam, nonfinite=(~finite).astype(jnp.int32))
  return new_state, metrics


def make_packed_train_step(model, critic, tx, critic_tx, config, *, donate: bool = True):
  """``jax.jit`` of :func:`packed_train_step` (one compile per packed row count)."""
  _check(config)
  fn = functools.partial(packed_train_step, model=model, critic=critic, tx=tx, critic_tx=critic_tx, config=config,
                         pairs=config.train.batch_size)
  return jax.jit(fn, donate_argnums=(0,) if donate else ())
