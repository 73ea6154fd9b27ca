"""Losses for DIAL: Bradley-Terry reward loss and domain-alignment losses.

All functions are pure and jit-compatible; everything is computed in float32.
Embeddings ``h_s`` / ``h_t`` are ``[N_s, D]`` / ``[N_t, D]``.
"""
import jax
import jax.numpy as jnp
import optax

_HI = jax.lax.Precision.HIGHEST


def _f32(x):
  return jnp.asarray(x, jnp.float32)


# --------------------------------------------------------------------------
# Reward model
# --------------------------------------------------------------------------


def bradley_terry_loss(r_chosen, r_rejected):
  """Mean ``-log sigmoid(r_chosen - r_rejected)`` (stable via ``log_sigmoid``)."""
  return -jnp.mean(jax.nn.log_sigmoid(_f32(r_chosen) - _f32(r_rejected)))


def pairwise_accuracy(r_chosen, r_rejected):
  """Fraction of pairs with ``r_chosen > r_rejected``; a tie counts 0.5.

  (0.5 = expected accuracy under random tie-breaking, so a constant reward
  model scores chance level.)
  """
  r_c, r_r = _f32(r_chosen), _f32(r_rejected)
  return jnp.mean(jnp.where(r_c > r_r, 1.0, jnp.where(r_c == r_r, 0.5, 0.0)))


# --------------------------------------------------------------------------
# WDGRL: Wasserstein critic
# --------------------------------------------------------------------------


def wasserstein_estimate(f_s, f_t):
  """WDGRL estimate of W1 from critic outputs: ``mean(f_s) - mean(f_t)``."""
  return jnp.mean(_f32(f_s)) - jnp.mean(_f32(f_t))


def gradient_penalty(critic_fn, h_s, h_t, rng):
  """WGAN-GP penalty ``mean((||grad f(x)||_2 - 1)^2)`` over the points x.

  x = ``n = min(N_s, N_t)`` interpolates ``a * h_s[:n] + (1 - a) * h_t[:n]``,
  ``a = jax.random.uniform(rng, (n, 1))`` (one per row), **plus all of h_s and
  all of h_t** (as the original WDGRL code concatenates them), i.e.
  ``n + N_s + N_t`` points. Only the interpolates are truncated to ``n``.

  ``critic_fn`` maps ``[N, D] -> [N]`` row-wise (no coupling between rows), so
  ``grad(sum(critic_fn(x)))`` gives every row's input gradient at once. The
  norm is ``sqrt(sum g^2 + 1e-12)`` so it stays differentiable at g = 0.
  """
  h_s, h_t = _f32(h_s), _f32(h_t)
  n = min(h_s.shape[0], h_t.shape[0])
  alpha = jax.random.uniform(rng, (n, 1), jnp.float32)
  interp = alpha * h_s[:n] + (1.0 - alpha) * h_t[:n]
  x = jnp.concatenate([interp, h_s, h_t], axis=0)
  grads = jax.grad(lambda z: jnp.sum(critic_fn(z)))(x)
  norms = jnp.sqrt(jnp.sum(grads**2, axis=-1) + 1e-12)
  return jnp.mean((norms - 1.0) ** 2)


def critic_slope(critic_fn, x):
  """Mean input-gradient norm ``||grad f(x)||_2`` over the rows of ``x``: the critic's slope, which WDGRL's
  estimate of W1 assumes stays near 1 (measured, not assumed)."""
  grads = jax.grad(lambda z: jnp.sum(critic_fn(z)))(_f32(x))
  return jnp.mean(jnp.sqrt(jnp.sum(grads**2, axis=-1)))


def critic_objective(critic_params, apply_fn, h_s, h_t, rng, gamma):
  """Critic loss to *minimise*: ``-(W - gamma * GP)``.

  ``apply_fn(critic_params, x) -> [N]``, e.g. ``Critic().apply`` with
  ``critic_params`` the full variables dict ``{"params": ...}``.
  Returns ``(loss, {"wasserstein": W, "gradient_penalty": GP})``.
  """
  critic_fn = lambda x: apply_fn(critic_params, x)
  w = wasserstein_estimate(critic_fn(h_s), critic_fn(h_t))
  gp = gradient_penalty(critic_fn, h_s, h_t, rng)
  return -(w - gamma * gp), {"wasserstein": w, "gradient_penalty": gp}


def make_critic_optimizer(learning_rate=1e-4, weight_decay=1e-3):
  """Equivalent of ``torch.optim.Adam(lr, weight_decay=wd)`` (L2, not AdamW).

  ``wd * param`` is added to the gradient *before* the Adam moments (torch's
  coupled weight decay, applied to all parameters incl. biases); betas
  (0.9, 0.999), eps 1e-8 outside the sqrt, bias-corrected. ``update`` needs
  ``params``.
  """
  return optax.chain(
    optax.add_decayed_weights(weight_decay),
    optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
    optax.scale(-learning_rate),
  )


def critic_update(critic_params, critic_opt_state, h_s, h_t, rng, *,
                  apply_fn, optimizer, gamma, num_iters):
  """Run ``num_iters`` critic steps maximising ``W - gamma * GP``.

  The embeddings are wrapped in ``stop_gradient``; iteration ``i`` uses
  ``fold_in(rng, i)`` for its interpolation coefficients. Implemented with
  ``lax.fori_loop``, so ``num_iters`` may be a Python int (static, lowered
  to a scan) or a traced int scalar (dynamic, lowered to a while loop); under
  ``jax.jit`` pass ``apply_fn`` / ``optimizer`` via closure or
  ``functools.partial``. ``gamma`` may be traced.

  Returns ``(params, opt_state, metrics)``; ``metrics`` holds
  ``wasserstein``, ``gradient_penalty`` and ``critic_loss`` evaluated in the
  *last* iteration (i.e. at the parameters before its update, as WDGRL logs
  them); zeros if ``num_iters == 0``.
  """
  h_s = jax.lax.stop_gradient(_f32(h_s))
  h_t = jax.lax.stop_gradient(_f32(h_t))
  grad_fn = jax.value_and_grad(critic_objective, has_aux=True)

  def body(i, carry):
    params, opt_state, _ = carry
    (loss, aux), grads = grad_fn(params, apply_fn, h_s, h_t,
                                     jax.random.fold_in(rng, i), gamma)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {"critic_loss": loss, **aux}

  zero = jnp.zeros((), jnp.float32)
  init_metrics = {"critic_loss": zero, "wasserstein": zero, "gradient_penalty": zero}
  return jax.lax.fori_loop(0, num_iters, body,
                             (critic_params, critic_opt_state, init_metrics))


# --------------------------------------------------------------------------
# Baseline alignment losses: MMD, CORAL, DANN
# --------------------------------------------------------------------------


def _sq_dists(a, b):
  d = (jnp.sum(a**2, -1)[:, None] + jnp.sum(b**2, -1)[None, :]
         - 2.0 * jnp.matmul(a, b.T, precision=_HI))
  return jnp.maximum(d, 0.0)


def mmd_loss(h_s, h_t, bandwidths=(0.25, 0.5, 1.0, 2.0, 4.0), relative=True):
  """Multi-kernel Gaussian MMD^2, biased (V-statistic) estimator as in DAN.

  ``k(x, y) = sum_k exp(-||x - y||^2 / s_k)``; ``MMD^2 = mean K_ss + mean K_tt
  - 2 mean K_st``. With ``relative=True`` (default) ``s_k = bandwidths[k] *
  m`` where ``m`` is the mean off-diagonal pairwise squared distance of the
  pooled source+target batch, held constant under differentiation
  (``stop_gradient``, like DAN's ``L2_distance.data``); the default
  multipliers equal DAN's ``kernel_mul=2, kernel_num=5``. With
  ``relative=False`` the ``bandwidths`` are the ``s_k`` themselves.
  """
  h_s, h_t = _f32(h_s), _f32(h_t)
  x = jnp.concatenate([h_s, h_t], axis=0)
  n, ns = x.shape[0], h_s.shape[0]
  d = _sq_dists(x, x)
  scales = jnp.asarray(bandwidths, jnp.float32)
  if relative:
    scales = scales * jax.lax.stop_gradient(jnp.sum(d) / (n * n - n))
  k = jnp.sum(jnp.exp(-d[None] / scales[:, None, None]), axis=0)
  return (jnp.mean(k[:ns, :ns]) + jnp.mean(k[ns:, ns:])
      - 2.0 * jnp.mean(k[:ns, ns:]))


def coral_loss(h_s, h_t):
  """Deep CORAL: ``||C_s - C_t||_F^2 / (4 d^2)``, unbiased (n-1) covariances."""
  def cov(x):
    x = _f32(x)
    x = x - jnp.mean(x, axis=0, keepdims=True)
    return jnp.matmul(x.T, x, precision=_HI) / (x.shape[0] - 1)

  d = h_s.shape[-1]
  return jnp.sum((cov(h_s) - cov(h_t)) ** 2) / (4.0 * d * d)


@jax.custom_vjp
def _reverse(x, scale):
  return x


def _reverse_fwd(x, scale):
  return x, scale


def _reverse_bwd(scale, g):
  return (-scale * g).astype(g.dtype), jnp.zeros_like(scale)


_reverse.defvjp(_reverse_fwd, _reverse_bwd)


def gradient_reversal(x, scale=1.0):
  """Identity forward; backward multiplies the cotangent by ``-scale``.

  ``scale`` may be traced (e.g. DANN's schedule); it receives no gradient.
  """
  return _reverse(x, jnp.asarray(scale, jnp.float32))


def dann_loss(logits_s, logits_t):
  """Domain-classifier BCE with source = 1, target = 0, mean over all rows.

  Compute the logits on ``gradient_reversal(h)`` so that one
  ``value_and_grad`` of ``task_loss + dann_loss`` trains the classifier to
  separate domains while pushing the encoder to confuse it.
  """
  ls, lt = _f32(logits_s), _f32(logits_t)
  total = jnp.sum(jax.nn.log_sigmoid(ls)) + jnp.sum(jax.nn.log_sigmoid(-lt))
  return -total / (ls.size + lt.size)
