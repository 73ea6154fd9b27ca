"""Tests for dial_jax.losses and dial_jax.models.critic (CPU, well under a minute)."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dial_jax import losses
from dial_jax.models.critic import Critic, DomainClassifier

RTOL = 1e-5  # float32 JAX vs float64 NumPy, unless stated otherwise


def _rand(seed, *shape, shift=0.0):
    return (np.random.RandomState(seed).randn(*shape) + shift).astype(np.float32)


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


# ----------------------------------------------------------------- reward loss


def test_bradley_terry_and_accuracy_match_numpy():
    c, r = _rand(0, 32).astype(np.float64), _rand(1, 32).astype(np.float64)
    np.testing.assert_allclose(losses.bradley_terry_loss(c, r),
                               np.mean(-_log_sigmoid(c - r)), rtol=RTOL)
    # Stable for huge margins: loss ~ |margin| when wrong, ~0 when right.
    assert float(losses.bradley_terry_loss(jnp.array([-200.0]), jnp.array([0.0]))) == pytest.approx(200.0)
    assert float(losses.bradley_terry_loss(jnp.array([200.0]), jnp.array([0.0]))) == pytest.approx(0.0, abs=1e-30)
    # Ties count 0.5.
    acc = losses.pairwise_accuracy(jnp.array([1.0, 0.0, 2.0, 3.0]), jnp.array([0.0, 1.0, 2.0, 1.0]))
    assert float(acc) == pytest.approx((1 + 0 + 0.5 + 1) / 4)


# ---------------------------------------------------------------------- WDGRL


def test_wasserstein_matches_numpy():
    f_s, f_t = _rand(0, 9), _rand(1, 5)
    np.testing.assert_allclose(losses.wasserstein_estimate(f_s, f_t),
                               f_s.mean() - f_t.mean(), rtol=RTOL, atol=1e-6)


def test_gradient_penalty_linear_critic_is_analytic():
    # f(x) = x.w + b has gradient w at every point: GP = (||w|| - 1)^2.
    w = _rand(0, 6)
    gp = losses.gradient_penalty(lambda x: x @ w + 0.3, _rand(1, 7, 6), _rand(2, 4, 6),
                                 jax.random.PRNGKey(0))
    np.testing.assert_allclose(gp, (np.linalg.norm(w) - 1.0) ** 2, rtol=RTOL)


def _np_mlp(params, x, act):
    """Float64 NumPy forward pass of a Critic."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    layers = [p[f"Dense_{i}"] for i in range(len(p))]
    erf = np.vectorize(math.erf)
    for layer in layers[:-1]:
        x = x @ layer["kernel"] + layer["bias"]
        x = {"none": x, "gelu": 0.5 * x * (1 + erf(x / np.sqrt(2))), "relu": np.maximum(x, 0)}[act]
    return (x @ layers[-1]["kernel"] + layers[-1]["bias"])[:, 0]


@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_gradient_penalty_mlp_matches_finite_differences(activation):
    # Unequal batches: 5 interpolates (truncated to min) + 7 source + 5 target points.
    h_s, h_t = _rand(0, 7, 6), _rand(1, 5, 6, shift=1.0)
    critic = Critic(widths=(8, 4), activation=activation)
    params = critic.init(jax.random.PRNGKey(0), h_s)
    rng = jax.random.PRNGKey(3)
    gp = losses.gradient_penalty(lambda x: critic.apply(params, x), h_s, h_t, rng)

    alpha = np.asarray(jax.random.uniform(rng, (5, 1), jnp.float32), np.float64)
    hs, ht = h_s.astype(np.float64), h_t.astype(np.float64)
    x = np.concatenate([alpha * hs[:5] + (1 - alpha) * ht, hs, ht])
    eps, grads = 1e-5, np.zeros_like(x)
    for j in range(x.shape[1]):  # central differences, one input coordinate at a time
        e = np.zeros(x.shape[1]); e[j] = eps
        grads[:, j] = (_np_mlp(params, x + e, activation) - _np_mlp(params, x - e, activation)) / (2 * eps)
    expected = np.mean((np.linalg.norm(grads, axis=1) - 1.0) ** 2)
    np.testing.assert_allclose(gp, expected, rtol=1e-4)


def test_critic_objective_combines_w_and_gp():
    h_s, h_t = _rand(0, 6, 4), _rand(1, 6, 4, shift=2.0)
    critic = Critic(widths=(8,))
    params = critic.init(jax.random.PRNGKey(0), h_s)
    rng = jax.random.PRNGKey(1)
    loss, aux = losses.critic_objective(params, critic.apply, h_s, h_t, rng, gamma=2.5)
    fn = lambda x: critic.apply(params, x)
    w = losses.wasserstein_estimate(fn(h_s), fn(h_t))
    gp = losses.gradient_penalty(fn, h_s, h_t, rng)
    np.testing.assert_allclose(aux["wasserstein"], w, rtol=RTOL)
    np.testing.assert_allclose(aux["gradient_penalty"], gp, rtol=RTOL)
    np.testing.assert_allclose(loss, -(w - 2.5 * gp), rtol=RTOL)


def test_critic_optimizer_equals_torch_adam_with_l2():
    lr, wd, b1, b2, eps = 1e-2, 1e-1, 0.9, 0.999, 1e-8
    opt = losses.make_critic_optimizer(learning_rate=lr, weight_decay=wd)
    params = {"a": jnp.asarray(_rand(0, 3, 4)), "b": jnp.asarray(_rand(1, 4))}
    state = opt.init(params)
    ref = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in ref.items()}
    v = {k: np.zeros_like(x) for k, x in ref.items()}
    for t in range(1, 6):
        grads = {k: _rand(10 * t + i, *x.shape) for i, (k, x) in enumerate(ref.items())}
        updates, state = opt.update(grads, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        for k in ref:  # torch.optim.Adam(weight_decay=wd) step
            g = grads[k] + wd * ref[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            ref[k] = ref[k] - lr * (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
    for k in ref:
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-5, atol=1e-6)


def _run_critic(h_s, h_t, activation, gamma, num_iters=200):
    critic = Critic(activation=activation)
    params = critic.init(jax.random.PRNGKey(0), h_s)
    opt = losses.make_critic_optimizer()  # paper: lr 1e-4, wd 1e-3
    w = lambda p: float(losses.wasserstein_estimate(critic.apply(p, h_s), critic.apply(p, h_t)))
    update = jax.jit(functools.partial(losses.critic_update, apply_fn=critic.apply, optimizer=opt,
                                       gamma=gamma, num_iters=num_iters))
    new_params, _, metrics = update(params, opt.init(params), h_s, h_t, jax.random.PRNGKey(1))
    return w(params), w(new_params), metrics


@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_critic_maximises_wasserstein_on_separated_clouds(activation):
    h_s, h_t = _rand(0, 128, 16, shift=3.0), _rand(1, 128, 16)
    gamma = 10.0  # with gamma=1 the soft penalty lets ||grad f|| grow to ~7 here
    w0, w1, metrics = _run_critic(h_s, h_t, activation, gamma)
    assert w1 > w0 + 10.0, (w0, w1)
    assert float(metrics["gradient_penalty"]) < 1.0
    assert float(metrics["wasserstein"]) == pytest.approx(w1, rel=0.05)
    if activation == "none":
        # Linear critic optimum: w || dmu, ||w|| = 1 + |dmu|/(2 gamma).
        delta = np.linalg.norm(h_s.mean(0) - h_t.mean(0))
        assert w1 == pytest.approx(delta * (1 + delta / (2 * gamma)), rel=0.05)
        assert float(metrics["gradient_penalty"]) == pytest.approx((delta / (2 * gamma)) ** 2, rel=0.1)


def test_critic_w_stays_near_zero_on_identical_clouds():
    h = _rand(0, 128, 16)
    _, w1, metrics = _run_critic(h, h, "none", gamma=1.0)
    assert abs(w1) < 1e-4 and abs(float(metrics["wasserstein"])) < 1e-4
    # Two independent samples of one distribution: only sampling noise to exploit.
    _, w1, _ = _run_critic(h, _rand(1, 128, 16), "none", gamma=1.0)
    assert w1 < 1.0


def test_critic_update_jit_matches_eager_and_compiles_once():
    h_s, h_t = _rand(0, 8, 16), _rand(1, 6, 16, shift=1.0)  # unequal batch sizes
    critic = Critic(activation="gelu")
    params = critic.init(jax.random.PRNGKey(0), h_s)
    opt = losses.make_critic_optimizer()
    state = opt.init(params)
    kw = dict(apply_fn=critic.apply, optimizer=opt, gamma=1.0)
    traces = []

    @jax.jit
    def step(params, state, h_s, h_t, rng):
        traces.append(1)
        return losses.critic_update(params, state, h_s, h_t, rng, num_iters=3, **kw)

    rng = jax.random.PRNGKey(2)
    eager = losses.critic_update(params, state, h_s, h_t, rng, num_iters=3, **kw)
    jitted = step(params, state, h_s, h_t, rng)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), eager, jitted)
    # Same as 3 hand-written steps, iteration i using fold_in(rng, i).
    @jax.jit  # one hand-written step (jitted only for test speed)
    def manual_step(p, st, key):
        grads, _ = jax.grad(losses.critic_objective, has_aux=True)(p, critic.apply, h_s, h_t, key, 1.0)
        updates, st = opt.update(grads, st, p)
        return jax.tree.map(lambda a, u: a + u, p, updates), st

    p, st = params, state
    for i in range(3):
        p, st = manual_step(p, st, jax.random.fold_in(rng, i))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p, jitted[0])

    step(jitted[0], jitted[1], h_s + 1.0, h_t, jax.random.PRNGKey(5))
    step(params, state, h_s * 0, h_t * 2, rng)
    assert len(traces) == 1

    # num_iters may also be a traced value (while loop): one compile for 2 and 3 iterations.
    dyn_traces = []

    @jax.jit
    def dyn(params, state, n):
        dyn_traces.append(1)
        return losses.critic_update(params, state, h_s, h_t, rng, num_iters=n, **kw)

    out3 = dyn(params, state, jnp.int32(3))
    dyn(params, state, jnp.int32(2))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), out3, jitted)
    assert len(dyn_traces) == 1


def test_critic_update_stops_gradient_into_embeddings():
    h_s, h_t = _rand(0, 4, 5), _rand(1, 4, 5)
    critic = Critic(widths=(4,))
    params = critic.init(jax.random.PRNGKey(0), h_s)
    opt = losses.make_critic_optimizer()

    def f(h):
        p, _, m = losses.critic_update(params, opt.init(params), h, h_t, jax.random.PRNGKey(0),
                                       apply_fn=critic.apply, optimizer=opt, gamma=1.0, num_iters=2)
        return jnp.sum(p["params"]["Dense_0"]["kernel"]) + m["critic_loss"]

    assert np.all(jax.grad(f)(h_s) == 0)


# ----------------------------------------------------------------- critic net


@pytest.mark.parametrize("activation", ["none", "gelu", "relu"])
def test_critic_activations(activation):
    x = jnp.asarray(_rand(0, 5, 12), jnp.bfloat16)
    critic = Critic(activation=activation)
    params = critic.init(jax.random.PRNGKey(0), x)
    out = critic.apply(params, x)
    assert out.shape == (5,) and out.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert [params["params"][f"Dense_{i}"]["kernel"].shape for i in range(3)] == [(12, 256), (256, 128), (128, 1)]
    # 'none' is affine overall; a nonlinearity is not.
    a, b = _rand(1, 3, 12), _rand(2, 3, 12)
    mid = critic.apply(params, 0.5 * a + 0.5 * b)
    avg = 0.5 * critic.apply(params, a) + 0.5 * critic.apply(params, b)
    assert np.allclose(mid, avg, atol=1e-4) == (activation == "none")


def test_invalid_activation_raises_and_classifier_is_critic():
    with pytest.raises(ValueError):
        Critic(activation="tanh")
    assert DomainClassifier is Critic


# ------------------------------------------------------------ MMD, CORAL, DANN


def _np_mmd(xs, xt, scales):
    x = np.concatenate([xs, xt]).astype(np.float64)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    k = sum(np.exp(-d / s) for s in scales)
    n = len(xs)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean(), d


def test_mmd_matches_numpy():
    h_s, h_t = _rand(0, 9, 5), _rand(1, 6, 5, shift=0.7)
    mults = (0.25, 0.5, 1.0, 2.0, 4.0)
    _, d = _np_mmd(h_s, h_t, [1.0])
    base = d.sum() / (len(d) ** 2 - len(d))  # mean off-diagonal squared distance
    expected, _ = _np_mmd(h_s, h_t, [m * base for m in mults])
    np.testing.assert_allclose(losses.mmd_loss(h_s, h_t, mults), expected, rtol=1e-4, atol=1e-6)
    expected, _ = _np_mmd(h_s, h_t, [1.0, 10.0])
    np.testing.assert_allclose(losses.mmd_loss(h_s, h_t, (1.0, 10.0), relative=False),
                               expected, rtol=1e-4, atol=1e-6)
    assert abs(float(losses.mmd_loss(h_s, h_s))) < 1e-5
    assert float(losses.mmd_loss(h_s, h_t + 3.0)) > float(losses.mmd_loss(h_s, h_t)) > 0


def test_coral_matches_numpy():
    h_s, h_t = _rand(0, 10, 4), _rand(1, 7, 4) * 2.0
    c_s, c_t = np.cov(h_s.astype(np.float64), rowvar=False), np.cov(h_t.astype(np.float64), rowvar=False)
    np.testing.assert_allclose(losses.coral_loss(h_s, h_t), ((c_s - c_t) ** 2).sum() / (4 * 16), rtol=1e-5)


def test_dann_loss_matches_numpy():
    l_s, l_t = _rand(0, 7).astype(np.float64) * 3, _rand(1, 4).astype(np.float64) * 3
    expected = -(np.sum(_log_sigmoid(l_s)) + np.sum(_log_sigmoid(-l_t))) / 11
    np.testing.assert_allclose(losses.dann_loss(l_s, l_t), expected, rtol=RTOL)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradient_reversal(dtype):
    x = jnp.asarray(_rand(0, 3, 4), dtype)
    g = jnp.asarray(_rand(1, 3, 4), dtype)
    y, vjp = jax.vjp(lambda x: losses.gradient_reversal(x, 0.7), x)
    assert y.dtype == dtype and np.array_equal(y, x)
    (gx,) = vjp(g)
    assert gx.dtype == dtype
    np.testing.assert_allclose(np.asarray(gx, np.float32), -0.7 * np.asarray(g, np.float32),
                               rtol=1e-2 if dtype == jnp.bfloat16 else 1e-6)
    # Scale may be traced (e.g. a schedule) under jit.
    gs = jax.jit(jax.grad(lambda x, s: jnp.sum(losses.gradient_reversal(x, s) * g),
                          argnums=(0, 1)))(x, 2.0)
    np.testing.assert_allclose(np.asarray(gs[0], np.float32), -2.0 * np.asarray(g, np.float32), rtol=1e-2)
    assert float(gs[1]) == 0.0


def test_dann_with_reversal_trains_classifier_and_reverses_encoder():
    h_s, h_t = jnp.asarray(_rand(0, 6, 5)), jnp.asarray(_rand(1, 4, 5, shift=1.0))
    clf = DomainClassifier(widths=(8,), activation="relu")
    params = clf.init(jax.random.PRNGKey(0), h_s)

    def loss(params, h_s, h_t, grl):
        wrap = (lambda h: losses.gradient_reversal(h, 0.5)) if grl else (lambda h: h)
        return losses.dann_loss(clf.apply(params, wrap(h_s)), clf.apply(params, wrap(h_t)))

    grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    plain, rev = grad_fn(params, h_s, h_t, False), grad_fn(params, h_s, h_t, True)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), plain[0], rev[0])
    np.testing.assert_allclose(rev[1], -0.5 * plain[1], rtol=1e-6)
    np.testing.assert_allclose(rev[2], -0.5 * plain[2], rtol=1e-6)
