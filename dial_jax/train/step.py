"""The DIAL train step: one pure function ``(state, batch) -> (state, metrics)``, jitted by the caller.

Per micro-batch (``lax.scan`` over ``train.grad_accum_steps`` of them):
  1. one forward pass over ``[source chosen; source rejected; target chosen; target rejected]``;
  2. inside the loss, the critic takes ``critic_iter`` Adam steps on ``stop_gradient`` embeddings,
     maximising ``W - gamma * GP``;
  3. loss = BT(source) + lambda * W(source, target) with the updated critic (or MMD / CORAL / DANN) on the domain
     features (``dial.align``: the embeddings, or the pairs' chosen - rejected differences; ``dial.domain_labels=
     shuffled``: a control that mixes the two domains' rows at random; ``dial.length_blind``: the features without
     their component along the starting model's length direction), plus the
     oracle's target BT or an auxiliary LM loss, differentiated with ``jax.value_and_grad``.
Gradients are averaged over micro-batches and applied with optax; a non-finite loss or gradient skips
the update (``train.on_nonfinite=skip``) and is counted.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from dial_jax import config as config_lib
from dial_jax import losses
from dial_jax.train.state import TrainState, learning_rate_schedule, merge

# Domain losses whose value estimates a distance between the domains (logged as ``domain_gap``); DANN's is a
# classifier's cross-entropy, which rises as the domains become harder to tell apart.
DISTANCE_LOSSES = ("wdgrl", "mmd", "coral")


def packing_mode(config: ml_collections.ConfigDict) -> str:
  return config_lib.packing_mode(config)


def domain_weight(config: ml_collections.ConfigDict, step) -> jax.Array:
  """lambda at this step: 0 for source_only and oracle, else ``dial.lambda_`` with optional linear warm-up."""
  if not config_lib.domain_loss_active(config):
    return jnp.zeros((), jnp.float32)
  lam = jnp.asarray(config.dial.lambda_, jnp.float32)
  if config.dial.lambda_warmup_steps > 0:
    lam = lam * jnp.minimum(1.0, step.astype(jnp.float32) / config.dial.lambda_warmup_steps)
  return lam


def next_token_loss(logits, ids, mask):
  """Mean next-token cross-entropy over real tokens. logits [N, T, V] float32."""
  targets, weights = ids[:, 1:], (mask[:, 1:] * mask[:, :-1]).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], targets)
  return jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _weighted_bt(r_first, r_second, signed_weight):
  """Bradley-Terry loss of pairs whose preferred side is the weight's sign (+1 first, -1 second, 0 no label)."""
  weight = jnp.abs(signed_weight)
  nll = -jax.nn.log_sigmoid(jnp.sign(signed_weight) * (r_first - r_second))
  return jnp.sum(nll * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def _weighted_accuracy(r_first, r_second, signed_weight):
  weight, margin = jnp.abs(signed_weight), jnp.sign(signed_weight) * (r_first - r_second)
  hit = jnp.where(margin > 0, 1.0, jnp.where(margin == 0, 0.5, 0.0))
  return jnp.sum(hit * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def packed_forward(model, variables, batch):
  """(rewards [4B], embeddings [4B, D]) of a packed micro-batch, in the padded step's order: source chosen, source
  rejected, target chosen, target rejected, each in global pair order. ``packed_sequence_slots`` gives each
  sequence's global ``row * slots + slot`` and ``packed_sequence_order`` its position in that order (both computed
  on the host by ``PairedBatches``)."""
  out = model.apply(variables, batch["packed_ids"], batch["packed_segment_ids"], batch["packed_positions"],
                    batch["packed_branch_ids"], batch["packed_last_positions"], method=model.packed)
  slots = batch["packed_sequence_slots"][jnp.argsort(batch["packed_sequence_order"])]
  return out["rewards"][slots], out["embeddings"][slots]


def critic_input_scale(h, mode: str) -> jax.Array:
  """What the critic's inputs are divided by: 1 (``none``, the authors'), or the batch's RMS embedding norm,
  held constant under differentiation (``rms``), so the gradient penalty binds at any embedding scale."""
  if mode == "none":
    return jnp.ones((), jnp.float32)
  h = jax.lax.stop_gradient(h.astype(jnp.float32))
  return jnp.sqrt(jnp.mean(jnp.sum(h * h, axis=-1)) + 1e-12)


def domain_features(h, b_s: int, b_t: int, align: str) -> jax.Array:
  """What the domain loss compares, the ``2 * b_s`` source rows first: the embeddings themselves (``embeddings``,
  the paper's) or each pair's difference ``h_chosen - h_rejected`` with both signs (``pair_differences``). A linear
  head's Bradley-Terry loss reads only those differences, so a shift shared by all of a domain's texts cancels there;
  which side is preferred is unknown on the target, hence both signs."""
  if align == "embeddings":
    return h
  n_src = 2 * b_s
  d_s, d_t = h[:b_s] - h[b_s:n_src], h[n_src:n_src + b_t] - h[n_src + b_t:]
  return jnp.concatenate([d_s, -d_s, d_t, -d_t])


def project_out(x, direction) -> jax.Array:
  """``x`` [N, D] without its component along the unit vector ``direction`` [D] (a constant): whatever a domain loss
  computes from the result, its gradient with respect to ``x`` has no component along ``direction``."""
  u = jax.lax.stop_gradient(jnp.asarray(direction, x.dtype))
  return x - (x @ u)[:, None] * u


def shuffled_domains(features_fn, rng, n: int):
  """A control for what the domain loss learns from the domain labels: the same features, permuted at random (one
  permutation per micro-batch, from ``rng``), so the loss compares two random halves of the mixed source and target
  rows, of the usual sizes. Its gradient has the same form and scale as DIAL's but carries no domain information."""
  perm = jax.random.permutation(rng, n)
  return lambda x: features_fn(x)[perm]


def loss_balance(variables, h, b_s, n_src, lam, domain_fn) -> dict[str, jax.Array]:
  """Norms of the gradients of the Bradley-Terry term and of the weighted domain term with respect to the
  embeddings (the reward head is linear in them), so the balance between the two losses is visible."""
  h = jax.lax.stop_gradient(h.astype(jnp.float32))
  w = jax.lax.stop_gradient(variables["params"]["score"]["kernel"].astype(jnp.float32))
  bt = lambda x: losses.bradley_terry_loss((x[:b_s] @ w)[:, 0], (x[b_s:n_src] @ w)[:, 0])
  out = {"balance/source_grad_norm": optax.tree.norm(jax.grad(bt)(h))}
  if domain_fn is not None:
    out["balance/domain_grad_norm"] = lam * optax.tree.norm(jax.grad(domain_fn)(h))
  return out


def micro_batch_loss(trainable, critic_vars, frozen, critic_opt_state, batch, rng, lam, *, model, critic, critic_tx,
                     config, length_direction=None):
  """Loss of one micro-batch and, as aux, (metrics, updated critic, updated critic optimizer state).
  ``length_direction`` (with ``dial.length_blind``): the unit vector the domain loss's features lose."""
  d = config.dial
  variables = merge(trainable, frozen)
  if "packed_ids" in batch:
    r, h = packed_forward(model, variables, batch)
    b_s = b_t = batch["target_pair_weight"].shape[0]
  else:
    parts = ("source_chosen", "source_rejected", "target_chosen", "target_rejected")
    ids = jnp.concatenate([batch[f"{p}_ids"] for p in parts])
    mask = jnp.concatenate([batch[f"{p}_mask"] for p in parts])
    b_s, b_t = batch["source_chosen_ids"].shape[0], batch["target_chosen_ids"].shape[0]
    out = model.apply(variables, ids, mask, return_hidden=d.aux != "none")
    r, h = out["rewards"], out["embeddings"]
  n_src, n_tgt = 2 * b_s, 2 * b_t
  source_loss = losses.bradley_terry_loss(r[:b_s], r[b_s:n_src])
  r_tc, r_tr = r[n_src:n_src + b_t], r[n_src + b_t:]
  target_weight = batch["target_pair_weight"]
  target_loss = _weighted_bt(r_tc, r_tr, target_weight)

  features = functools.partial(domain_features, b_s=b_s, b_t=b_t, align=d.align)
  if length_direction is not None:
    features = lambda x, f=features: project_out(f(x), length_direction)
  if d.domain_labels == "shuffled" and config_lib.domain_loss_active(config):
    rng, shuffle_rng = jax.random.split(rng)
    features = shuffled_domains(features, shuffle_rng, n_src + n_tgt)  # both alignments give n_src + n_tgt rows
  metrics = {}
  domain_fn = None  # h -> domain loss, for the loss-balance metrics
  if not config_lib.domain_loss_active(config):
    domain = jnp.zeros((), jnp.float32)  # statically off: no critic, no 0 * W (0 * inf = NaN)
  elif d.domain_loss == "wdgrl":
    # The critic, its gradient penalty and W all live in the scaled space x = f / scale (f: the domain features), so
    # the penalty holds |grad_x critic| near 1 whatever their norm; the encoder's gradient is that of critic(f / scale).
    f = features(h)
    scale = critic_input_scale(f, d.critic_input_scale)
    critic_vars, critic_opt_state, critic_metrics = losses.critic_update(
        critic_vars, critic_opt_state, f[:n_src] / scale, f[n_src:] / scale, rng, apply_fn=critic.apply,
        optimizer=critic_tx, gamma=d.gamma, num_iters=d.critic_iter)
    critic_vars = jax.lax.stop_gradient(critic_vars)
    domain_fn = lambda x: losses.wasserstein_estimate(
        *jnp.split(critic.apply(critic_vars, features(x) / scale), [n_src]))
    domain = domain_fn(h)
    metrics.update(gradient_penalty=critic_metrics["gradient_penalty"], critic_loss=critic_metrics["critic_loss"],
                   critic_slope=losses.critic_slope(lambda x: critic.apply(critic_vars, x),
                                                    jax.lax.stop_gradient(f / scale)),
                   critic_input_scale=scale)
  elif d.domain_loss == "mmd":
    domain_fn = lambda x: losses.mmd_loss(*jnp.split(features(x), [n_src]))
    domain = domain_fn(h)
  elif d.domain_loss == "coral":
    domain_fn = lambda x: losses.coral_loss(*jnp.split(features(x), [n_src]))
    domain = domain_fn(h)
  else:  # dann: the classifier trains on BCE; the reversed gradient, scaled by lambda, reaches the encoder.
    logits = critic.apply(critic_vars, losses.gradient_reversal(features(h), lam))
    domain = losses.dann_loss(logits[:n_src], logits[n_src:])

  if d.mode == "oracle":
    loss = source_loss + target_loss
  else:
    loss = source_loss
  loss = loss + (domain if d.domain_loss == "dann" else lam * domain)
  if d.aux != "none":
    rows = slice(0, b_s) if d.aux == "source_sft" else slice(n_src, n_src + n_tgt)
    logits = model.apply(variables, out["hidden"][rows], method=model.lm_logits)
    aux = next_token_loss(logits, ids[rows], mask[rows])
    loss = loss + d.aux_weight * aux
    metrics["aux_loss"] = aux

  metrics.update(
      loss=loss, source_loss=source_loss, source_accuracy=losses.pairwise_accuracy(r[:b_s], r[b_s:n_src]),
      domain_loss=domain, reward_mean=jnp.mean(r), reward_std=jnp.std(r))
  metrics.update(loss_balance(variables, h, b_s, n_src, lam, domain_fn))
  # Target-label metrics: in dial / source_only runs they are monitoring only and never enter the loss.
  metrics["monitor/target_loss" if d.mode != "oracle" else "target_loss"] = target_loss
  metrics["monitor/target_accuracy" if d.mode != "oracle" else "target_accuracy"] = _weighted_accuracy(
      r_tc, r_tr, target_weight)
  if d.domain_loss in DISTANCE_LOSSES and config_lib.domain_loss_active(config):
    metrics["domain_gap"] = domain  # the estimated distance between the domains, whatever the loss measures it with
    if d.domain_loss == "wdgrl":
      metrics["wasserstein"] = domain
  return loss, (metrics, critic_vars, critic_opt_state)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model, critic, tx, critic_tx,
               config: ml_collections.ConfigDict, length_direction=None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step over ``batch`` (arrays with a leading micro-batch axis)."""
  rng, step_rng = jax.random.split(state.rng)
  lam = domain_weight(config, state.step)
  train_critic_by_grad = config.dial.domain_loss == "dann" and config_lib.domain_loss_active(config)
  loss_fn = functools.partial(micro_batch_loss, model=model, critic=critic, critic_tx=critic_tx, config=config,
                              length_direction=length_direction)
  grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1) if train_critic_by_grad else 0, has_aux=True)
  num_micro = jax.tree.leaves(batch)[0].shape[0]

  def micro(carry, xs):
    critic_vars, critic_opt_state, grad_sum = carry
    micro_batch, i = xs
    (_, (metrics, new_critic, new_critic_opt)), grads = grad_fn(
        state.trainable, critic_vars, state.frozen, critic_opt_state, micro_batch,
        jax.random.fold_in(step_rng, i), lam)
    grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
    return (new_critic, new_critic_opt, grad_sum), metrics

  if num_micro == 1:  # no scan: XLA schedules and reuses buffers better outside a loop
    (_, (metrics, critic_vars, critic_opt_state)), grads = grad_fn(
        state.trainable, state.critic, state.frozen, state.critic_opt_state, jax.tree.map(lambda x: x[0], batch),
        jax.random.fold_in(step_rng, 0), lam)
  else:
    zeros = jax.tree.map(jnp.zeros_like, (state.trainable, state.critic) if train_critic_by_grad else state.trainable)
    (critic_vars, critic_opt_state, grad_sum), metrics = jax.lax.scan(
        micro, (state.critic, state.critic_opt_state, zeros), (batch, jnp.arange(num_micro)))
    grads = jax.tree.map(lambda g: g / num_micro, grad_sum)
    metrics = jax.tree.map(jnp.mean, metrics)

  if train_critic_by_grad:
    grads, critic_grads = grads
    critic_updates, critic_opt_state = critic_tx.update(critic_grads, state.critic_opt_state, state.critic)
    critic_vars = optax.apply_updates(state.critic, critic_updates)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
  trainable = optax.apply_updates(state.trainable, updates)

  # The new parameters are checked too: a finite gradient can still blow them up (e.g. a huge learning rate gives
  # finite weights of 1e30 whose rewards are NaN). Their float32 norm overflows long before that, so it is the test.
  params_finite = jnp.isfinite(optax.tree.norm(trainable))
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm) & params_finite
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  new_state = state.replace(
      step=state.step + 1, rng=rng, trainable=keep(trainable, state.trainable),
      opt_state=keep(opt_state, state.opt_state), critic=keep(critic_vars, state.critic),
      critic_opt_state=keep(critic_opt_state, state.critic_opt_state))
  metrics.update(grad_norm=grad_norm, learning_rate=learning_rate_schedule(config)(state.step), domain_weight=lam,
                 nonfinite=(~finite).astype(jnp.int32))
  return new_state, metrics


def make_train_step(model, critic, tx, critic_tx, config, *, state_shardings=None, batch_sharding=None,
                    donate: bool = True, length_direction=None):
  """``jax.jit`` of :func:`train_step` with everything but (state, batch) bound; with shardings given, the
  state keeps its layout (``out_shardings`` = ``in_shardings``) and metrics come back replicated.
  ``length_direction`` [hidden size]: the unit vector ``dial.length_blind`` removes (``probe.length_direction``),
  needed exactly when that flag is on and a domain loss acts."""
  config_lib.validate(config)
  blind = config.dial.length_blind and config_lib.domain_loss_active(config)
  if blind != (length_direction is not None):
    raise ValueError("make_train_step: length_direction is needed with dial.length_blind (and a domain loss), and "
                     "only then")
  fn = functools.partial(train_step, model=model, critic=critic, tx=tx, critic_tx=critic_tx, config=config,
                         length_direction=None if length_direction is None else np.asarray(length_direction,
                                                                                          np.float32))
  kwargs = {}
  if state_shardings is not None:
    replicated = NamedSharding(state_shardings.step.mesh, PartitionSpec())
    kwargs = dict(in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, replicated))
  return jax.jit(fn, donate_argnums=(0,) if donate else (), **kwargs)


def embed_fn(model):
  """Jitted ``(variables, ids, mask) -> dict(rewards, embeddings)`` for evaluation."""
  return jax.jit(lambda variables, ids, mask: model.apply(variables, ids, mask))
