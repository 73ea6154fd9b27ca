"""Train state: trainable and frozen parameters kept apart, the critic, both optimizer states, step, RNG."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dial_jax import losses
from dial_jax.models.critic import Critic


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  trainable: Any          # the variables the reward-model optimizer updates (a partial variables tree)
  frozen: Any             # the rest, never updated
  critic: Any             # critic (WDGRL) or domain classifier (DANN) variables; {} for mmd/coral
  opt_state: Any
  critic_opt_state: Any
  rng: jax.Array


def _flat(tree) -> dict[tuple, Any]:
  return flax.traverse_util.flatten_dict(tree)


def _unflat(flat: dict[tuple, Any]):
  return flax.traverse_util.unflatten_dict(flat)


def trainable_predicate(config: ml_collections.ConfigDict, num_layers: int) -> Callable[[tuple], bool]:
  """Which variable paths train, from ``train.trainable``: lora (adapters + head), full, or top_k layers."""
  mode = config.train.trainable
  if mode == "lora":
    if config.lora.rank <= 0:
      raise ValueError("train.trainable=lora needs lora.rank > 0")
    return lambda path: path[0] == "lora" or path[:2] == ("params", "score")
  if mode == "full":
    return lambda path: True
  if mode == "top_k":
    k = config.train.top_k_layers
    if not 0 < k <= num_layers:
      raise ValueError(f"train.top_k_layers must be in 1..{num_layers}, got {k}")
    top = {f"layers_{i}" for i in range(num_layers - k, num_layers)}
    return lambda path: (path[:2] == ("params", "score") or (path[:2] == ("params", "backbone")
                         and (path[2] in top or path[2] == "norm")))
  raise ValueError(f"train.trainable must be lora, full or top_k, got {mode!r}")


def partition(variables, predicate) -> tuple[Any, Any]:
  """Split a variables tree into (trainable, frozen) partial trees."""
  flat = _flat(variables)
  return (_unflat({k: v for k, v in flat.items() if predicate(k)}),
          _unflat({k: v for k, v in flat.items() if not predicate(k)}))


def merge(trainable, frozen):
  """Inverse of :func:`partition`."""
  return _unflat({**_flat(frozen), **_flat(trainable)})


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  t = config.train
  decay_steps = max(t.num_steps - t.warmup_steps, 1)
  if t.lr_schedule == "constant":
    after = optax.constant_schedule(t.learning_rate)
  elif t.lr_schedule == "linear":
    after = optax.linear_schedule(t.learning_rate, 0.0, decay_steps)
  elif t.lr_schedule == "cosine":
    after = optax.cosine_decay_schedule(t.learning_rate, decay_steps)
  else:
    raise ValueError(f"train.lr_schedule must be constant, linear or cosine, got {t.lr_schedule!r}")
  if t.warmup_steps <= 0:
    return after
  warmup = optax.linear_schedule(0.0, t.learning_rate, t.warmup_steps)
  return optax.join_schedules([warmup, after], [t.warmup_steps])


class DecayTowardStartState(NamedTuple):
  start: Any  # the parameters the optimizer was initialised with


def decay_toward_start(weight_decay: float) -> optax.GradientTransformation:
  """Add ``weight_decay * (params - start)`` to the updates, ``start`` being the parameters at ``init``: AdamW's
  decoupled decay pulling toward the starting (pretrained) weights instead of zero, a decoupled form of L2-SP
  (Li et al., 2018, "Explicit inductive bias for transfer learning")."""

  def init(params):
    return DecayTowardStartState(start=jax.tree.map(jnp.array, params))

  def update(updates, state, params):
    if params is None:
      raise ValueError("decay_toward_start needs the parameters")
    updates = jax.tree.map(lambda u, p, p0: u + weight_decay * (p - p0).astype(u.dtype), updates, params, state.start)
    return updates, state

  return optax.GradientTransformation(init, update)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW (or plain SGD) with warm-up/decay and optional global-norm clipping, for the reward model. AdamW decays
  toward zero (matrices only) or, with ``train.weight_decay_target=start``, every parameter toward its start."""
  parts = []
  if config.train.max_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(config.train.max_grad_norm))
  if config.train.optimizer == "adamw" and config.train.weight_decay_target == "start":
    parts += [optax.scale_by_adam(), decay_toward_start(config.train.weight_decay),
              optax.scale_by_learning_rate(learning_rate_schedule(config))]
  elif config.train.optimizer == "adamw":
    # Decay matrices only: norm scales, biases and other 1-D parameters are masked (the usual practice).
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    parts.append(optax.adamw(learning_rate_schedule(config), weight_decay=config.train.weight_decay,
                             mask=decay_mask))
  elif config.train.optimizer == "sgd":
    parts.append(optax.sgd(learning_rate_schedule(config)))
  else:
    raise ValueError(f"train.optimizer must be adamw or sgd, got {config.train.optimizer!r}")
  head_lr = config.train.head_learning_rate
  if head_lr and head_lr != config.train.learning_rate:
    # The head's update is the same rule at its own rate: scaling the update by head_lr / lr.
    is_head = lambda params: flax.traverse_util.path_aware_map(
        lambda path, _: tuple(path[:2]) == ("params", "score"), params)
    parts.append(optax.masked(optax.scale(head_lr / config.train.learning_rate), is_head))
  return optax.chain(*parts)


def make_critic(config: ml_collections.ConfigDict) -> Critic:
  return Critic(widths=tuple(config.dial.critic_widths), activation=config.dial.critic_activation)


def make_critic_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return losses.make_critic_optimizer(config.dial.critic_learning_rate, config.dial.critic_weight_decay)


def uses_critic(config: ml_collections.ConfigDict) -> bool:
  return config.dial.domain_loss in ("wdgrl", "dann")


def create_train_state(variables, config: ml_collections.ConfigDict, num_layers: int, embed_dim: int,
                       tx: optax.GradientTransformation, critic_tx: optax.GradientTransformation,
                       variable_shardings=None, mesh: Mesh | None = None) -> tuple[TrainState, Any]:
  """(initial state, its shardings) from loaded reward-model variables; the critic starts from ``train.seed``.

  With ``variable_shardings`` (a NamedSharding per variable, see ``dial_jax.parallel``) the variables are placed
  accordingly, the optimizer state is created already sharded like the parameters it tracks (``jit`` of
  ``tx.init`` with ``out_shardings``), and everything else is replicated on ``mesh``.
  """
  predicate = trainable_predicate(config, num_layers)
  if mesh is None:
    mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  rep = NamedSharding(mesh, P())
  if variable_shardings is None:
    variable_shardings = jax.tree.map(lambda _: rep, variables)
  variables = jax.device_put(variables, variable_shardings)
  trainable, frozen = partition(variables, predicate)
  trainable_sh, frozen_sh = partition(variable_shardings, predicate)

  rng = jax.random.PRNGKey(config.train.seed)
  rng, critic_rng = jax.random.split(rng)
  critic = {}
  if uses_critic(config):
    critic = jax.jit(make_critic(config).init, out_shardings=rep)(critic_rng, jnp.zeros((1, embed_dim), jnp.float32))
  opt_sh = optax.tree_map_params(tx, lambda _, sh: sh, jax.eval_shape(tx.init, trainable), trainable_sh,
                                 transform_non_params=lambda _: rep)
  opt_state = jax.jit(tx.init, out_shardings=opt_sh)(trainable)
  critic_opt_state = jax.jit(critic_tx.init, out_shardings=rep)(critic)
  state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), rep), trainable=trainable, frozen=frozen,
                     critic=critic, opt_state=opt_state, critic_opt_state=critic_opt_state,
                     rng=jax.device_put(rng, rep))
  shardings = TrainState(step=rep, trainable=trainable_sh, frozen=frozen_sh, critic=jax.tree.map(lambda _: rep, critic),
                         opt_state=opt_sh, critic_opt_state=jax.tree.map(lambda _: rep, critic_opt_state), rng=rep)
  return state, shardings
