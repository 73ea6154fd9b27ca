"""The PyTorch reference step (``benchmarks/torch_reference.py``, what ``benchmarks/train_step.py`` times dial_jax
against) and dial_jax's jitted step agree on one DIAL step from the same weights on the same pairs: the losses, the
gradient of the domain term ``lambda * W`` and of the whole loss, the critic after its Adam steps and the LoRA
adapters and score head after AdamW. Tiny random Gemma 3, synthetic token ids: ~25 CPU seconds."""
import jax
import numpy as np
import pytest

from benchmarks import parity, torch_reference as tr
from benchmarks.dial_side import Settings, build_dial_jax, dial_config
from benchmarks.flops import hf_config
from benchmarks.step_data import make_batches
from dial_jax import parallel
from dial_jax.data import pipeline
from tests.helpers import make_tiny_model_dir

MAX_LENGTH, PAIRS = 32, 2
SETTINGS = Settings(lora_rank=4, lora_alpha=8.0, min_bucket=16, seed=0)
# Tolerances (float32 on both sides; measured on the 2-core CPU in brackets):
LOSS_RTOL, LOSS_ATOL = 5e-5, 1e-6  # |a - b| <= LOSS_ATOL + LOSS_RTOL * |b| for every loss [W: 2.9e-6 relative]
GRAD_RTOL = 1e-4  # per parameter: ||g_jax - g_torch|| <= GRAD_RTOL * ||g_torch|| [domain 2.3e-6, whole 2.7e-6]
STEP_TOL = 1e-2   # per element: |update_jax - update_torch| <= STEP_TOL * lr [6e-4]; the critic's 3 Adam steps:
                  # <= critic_iter * STEP_TOL * critic lr [2.2e-3]


def synthetic_domains(vocab: int, seed: int = 0):
  """Source and target pairs of random token ids: a shared prompt, then different continuations; the target draws
  from another part of the vocabulary (so W and its gradient are not small)."""
  rng = np.random.default_rng(seed)
  out = []
  for name, (lo, hi) in (("source", (3, vocab // 2)), ("target", (vocab // 2, vocab))):
    dom = pipeline.Domain(name=name, kind="pairs")
    for _ in range(8):
      prompt = rng.integers(lo, hi, rng.integers(4, 16)).tolist()
      dom.chosen.append(prompt + rng.integers(lo, hi, rng.integers(2, 12)).tolist())
      dom.rejected.append(prompt + rng.integers(lo, hi, rng.integers(2, 12)).tolist())
    out.append(dom)
  return tuple(out)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  model_dir = make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "gemma3")
  cfg = hf_config(model_dir)
  batch = make_batches(synthetic_domains(cfg["vocab_size"]), SETTINGS, pairs=PAIRS, max_length=MAX_LENGTH, n=1,
                       pad_id=cfg["pad_token_id"], seed=1)[0]
  return model_dir, batch


def _close(a: float, b: float) -> bool:
  return abs(a - b) <= LOSS_ATOL + LOSS_RTOL * abs(b)


def _grad_errors(g_jax: dict, g_torch: dict) -> dict[str, float]:
  """Per parameter: ||g_jax - g_torch|| / ||g_torch||."""
  assert set(g_jax) == set(g_torch)
  return {k: float(np.linalg.norm(g_jax[k] - g_torch[k]) / max(np.linalg.norm(g_torch[k]), 1e-30)) for k in g_jax}


def test_step_matches_reference(setup):
  """The benchmark's step (AdamW, clipping): losses, the updated critic and the updated LoRA adapters and head."""
  model_dir, batch = setup
  config = dial_config(SETTINGS, model_dir, MAX_LENGTH, PAIRS, "float32")
  ran = parity.dial_jax_step(config, batch)
  torch_m, ref = parity.reference_step(model_dir, config, ran["start"], ran["model"].config.hidden_size, batch)
  for key in ("source_loss", "wasserstein", "loss", "critic_loss", "gradient_penalty", "grad_norm"):
    assert _close(ran["metrics"][key], torch_m[key]), (key, ran["metrics"][key], torch_m[key])
  assert ran["metrics"]["grad_norm"] > config.train.max_grad_norm  # so clipping is exercised too

  # Updates measured in learning rates: AdamW's first step moves each weight by about lr.
  start, new = tr.trainable_as_peft(ran["start"]["trainable"]), tr.trainable_as_peft(ran["new"]["trainable"])
  torch_new = {n: p.detach().numpy() for n, p in ref.named_params.items()}
  assert set(torch_new) == set(new)
  lr = config.train.learning_rate
  moved = 0
  for name in new:
    d_jax, d_torch = (new[name] - start[name]) / lr, (torch_new[name] - start[name]) / lr
    np.testing.assert_allclose(d_jax, d_torch, rtol=0, atol=STEP_TOL, err_msg=name)
    moved += int(np.abs(d_torch).max() > 0.5)
  assert moved > 0

  c_start = tr.critic_as_torch(ran["start"]["critic"]["params"])
  c_new = tr.critic_as_torch(ran["new"]["critic"]["params"])
  c_torch = tr.critic_params(ref.critic)
  c_lr = config.dial.critic_learning_rate
  for name in c_new:
    np.testing.assert_allclose((c_new[name] - c_start[name]) / c_lr, (c_torch[name] - c_start[name]) / c_lr,
                               rtol=0, atol=STEP_TOL * config.dial.critic_iter, err_msg=name)


def test_domain_gradient_matches_reference(setup):
  """The gradient of the domain term ``lambda * W`` (with the critic after its updates) and of the whole loss.

  dial_jax's step applies its gradient through optax; with plain SGD at learning rate 1 and no clipping the update
  is minus the gradient. ``dial.lambda_warmup_steps=1`` makes lambda 0 at step 0 and ``dial.lambda_`` at step 1, so
  the same compiled step gives the source loss's gradient and the whole loss's; their difference is the domain
  term's."""
  model_dir, batch = setup
  config = dial_config(SETTINGS, model_dir, MAX_LENGTH, PAIRS, "float32")
  config.train.optimizer, config.train.learning_rate, config.train.max_grad_norm = "sgd", 1.0, 0.0
  config.dial.lambda_warmup_steps = 1
  config.dial.lambda_ = 1.0  # (the base 0.01 leaves the domain term's gradient ~1e-4 of the whole: cancellation)
  grads = {}
  built = build_dial_jax(config, batch, donate=False)
  state = built["state"]
  global_batch = parallel.global_batch(batch, built["batch_shardings"])
  start = jax.device_get({"trainable": state.trainable, "critic": state.critic, "rng": state.rng})
  p0 = tr.trainable_as_peft(start["trainable"])
  for step, key in ((0, "source"), (1, "total")):
    new_state, metrics = built["step"](state.replace(step=state.step + step), global_batch)
    assert float(metrics["domain_weight"]) == float(np.float32(config.dial.lambda_ if step else 0.0))
    p1 = tr.trainable_as_peft(jax.device_get(new_state.trainable))
    grads[key] = {k: p0[k] - p1[k] for k in p0}
  grads["domain"] = {k: grads["total"][k] - grads["source"][k] for k in p0}

  # the reference, from the same weights, with the base config's AdamW (its gradients are taken before clipping)
  ref_config = dial_config(SETTINGS, model_dir, MAX_LENGTH, PAIRS, "float32")
  ref_config.dial.lambda_ = config.dial.lambda_
  _, ref = parity.reference_step(model_dir, ref_config, start, built["model"].config.hidden_size, batch,
                                 keep_grads=True)
  torch_grads = {kind: {k: v.numpy() for k, v in g.items()} for kind, g in ref.grads.items()}
  for kind in ("domain", "total"):
    errors = _grad_errors(grads[kind], torch_grads[kind])
    nonzero = [k for k in errors if np.linalg.norm(torch_grads[kind][k]) > 0]
    assert nonzero, kind
    assert max(errors[k] for k in nonzero) <= GRAD_RTOL, (kind, sorted(errors.items(), key=lambda kv: -kv[1])[:3])
  # the domain term moves the encoder: its gradient is a sizeable part of the whole
  total = np.sqrt(sum(np.sum(g**2) for g in torch_grads["total"].values()))
  domain = np.sqrt(sum(np.sum(g**2) for g in torch_grads["domain"].values()))
  assert domain > 1e-3 * total
