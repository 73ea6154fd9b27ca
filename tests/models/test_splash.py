"""model.attention=splash (Pallas TPU splash attention, interpret mode on the CPU) equals the xla path.

A tiny random Gemma 3 checkpoint (local layers with a 7-token window, global layers, GQA, q/k norms) with random
LoRA adapters; rows of 128 tokens (the kernel's lane width). Rewards, embeddings and gradients (params and LoRA) to
1e-4 for a left-padded batch and for packed rows with shared-prefix branches, unrolled and scanned (the scanned
per-layer flag picks the local or global kernel with lax.cond); the DIAL train step (losses, W, gradient norm,
updated parameters) to 1e-4 with padded and packed batches; the kernel inside shard_map on a 4-device CPU mesh; and
the splash step compiles for a TPU topology (v5e:2x2, needs libtpu).
"""
import importlib.util
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from dial_jax.hf import load, mapping
from dial_jax.models import layers, splash
from dial_jax.models.decoder import LoraConfig
from tests import helpers
from tests.models import test_scan
from tests.models.hf_reference import random_batch

T = 128
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return helpers.make_tiny_model_dir(tmp_path_factory.mktemp("splash") / "model", "gemma3")


def flat(tree):
  return {"/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}


def assert_grads_close(g1, g0):
  f0, f1 = flat(g0), flat(g1)
  assert f0.keys() == f1.keys()
  for k in f0:  # 1e-4 of each leaf's largest entry
    np.testing.assert_allclose(f1[k], f0[k], rtol=0, atol=1e-4 * max(np.abs(f0[k]).max(), 1.0), err_msg=k)


@pytest.mark.parametrize("window,soft_cap", [(None, None), (7, 2.0)])
def test_kernel_equals_xla_attention(window, soft_cap):
  """GQA (4 query heads, 2 kv heads), scaling, soft-capping and the local window, padded and dense-masked rows."""
  ks = jax.random.split(jax.random.PRNGKey(0), 3)
  q = jax.random.normal(ks[0], (2, T, 4, 16))
  k, v = (jax.random.normal(key, (2, T, 2, 16)) for key in ks[1:])
  mask = np.ones((2, T), np.int32)
  mask[0, 100:], mask[1, :30] = 0, 0
  real = mask.astype(bool)
  out = splash.splash_attention(q, k, v, segment_ids=jnp.asarray(mask), window=window, scale=0.3, soft_cap=soft_cap)
  ref = layers.dot_product_attention(q, k, v, layers.attention_mask(jnp.asarray(mask), window), 0.3, soft_cap)
  np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], **TOL)
  a = {k: jnp.asarray(v) for k, v in test_scan.packed_batch(row_length=T).items()}
  dense = layers.packed_attention_mask(a["segment_ids"], a["positions"], a["branch_ids"], window)
  rows = a["ids"].shape[0]
  out = splash.splash_attention(q[:rows], k[:rows], v[:rows], dense_mask=dense[:, 0], scale=0.3, soft_cap=soft_cap)
  ref = layers.dot_product_attention(q[:rows], k[:rows], v[:rows], dense, 0.3, soft_cap)
  np.testing.assert_allclose(out, ref, **TOL)


def test_kernel_lengths_must_be_multiples_of_128():
  with pytest.raises(ValueError, match="multiples of 128"):
    splash.block_sizes(64, 64)


def test_scanned_model_with_splash_equals_xla(tiny):
  """Scanned layers (the per-layer flag picks the local or global kernel with lax.cond) against the unrolled xla
  model; the unrolled splash model is compared in the train-step test below."""
  lora = LoraConfig(rank=2, alpha=4.0)
  m0, v0, _ = load.load_reward_model(tiny, lora=lora, last_token_only=True)
  v0 = test_scan.randomize_lora(v0)
  m1 = m0.clone(attention="splash", scan_layers=True)
  v1 = mapping.stack_layer_variables(v0)
  ids, mask = random_batch([5, 70, 128, 33], T, pad_id=0, padding_side="left", seed=1)
  a = {k: jnp.asarray(v) for k, v in test_scan.packed_batch(row_length=T).items()}
  packed = (a["ids"], a["segment_ids"], a["positions"], a["branch_ids"], a["last_positions"])
  weights = jnp.arange(1.0, 5.0)
  for name, apply in (("padded", lambda m, v: m.apply(v, ids, mask)),
                      ("packed", lambda m, v: m.apply(v, *packed, method=m.packed))):
    def loss(v, m):
      out = apply(m, v)
      r = out["rewards"]
      return jnp.sum(r * jnp.resize(weights, r.shape)) + 0.1 * jnp.sum(out["embeddings"] ** 2), out
    (_, o0), g0 = jax.jit(jax.value_and_grad(lambda v: loss(v, m0), has_aux=True))(v0)
    (_, o1), g1 = jax.jit(jax.value_and_grad(lambda v: loss(v, m1), has_aux=True))(v1)
    np.testing.assert_allclose(o1["rewards"], o0["rewards"], err_msg=name, **TOL)
    np.testing.assert_allclose(o1["embeddings"], o0["embeddings"], err_msg=name, **TOL)
    assert_grads_close(mapping.unstack_layer_variables(g1), g0)


def test_lengths_off_the_lane_width_take_the_xla_path(tiny):
  """A 64-token batch (a short eval bucket) with attention=splash computes exactly what xla does."""
  model, variables, _ = load.load_reward_model(tiny)
  ids, mask = random_batch([5, 64, 20], 64, pad_id=0, padding_side="right", seed=3)
  out = model.clone(attention="splash").apply(variables, ids, mask)
  ref = model.apply(variables, ids, mask)
  np.testing.assert_array_equal(out["rewards"], ref["rewards"])


@pytest.fixture(scope="module")
def dirs(tiny, tmp_path_factory):
  return tiny, helpers.prepare_data(tmp_path_factory.mktemp("splash_data") / "data")


@pytest.mark.parametrize("packing", [pytest.param("none", marks=pytest.mark.slow), "shared_prefix"])
def test_train_step_with_splash_equals_xla(dirs, packing):
  """One DIAL step (WDGRL critic, LoRA) from the same state and batch: losses, W, gradient norm and the updated
  parameters equal the xla step's to 1e-4. Padded rows (static mask) are slow-marked: the scanned model test above
  covers that path in CI."""
  from dial_jax.train import loop
  from dial_jax.train import state as state_lib
  from dial_jax.train import step as step_lib
  config = helpers.tiny_config(*dirs, **{"data.max_length": T, "data.min_bucket": T, "data.packing": packing})
  model, variables, tokenizer, _ = load.build_model(config)
  source, target, _ = loop.load_data(config, tokenizer)
  mesh = loop.parallel.make_mesh(config.mesh)
  batch = loop.paired_batches(config, source, target, model.config.pad_token_id, mesh).batch(0)
  assert ("packed_ids" in batch) == (packing != "none")
  tx, critic_tx = state_lib.make_optimizer(config), state_lib.make_critic_optimizer(config)
  state, shardings = state_lib.create_train_state(variables, config, model.config.num_layers,
                                                  model.config.hidden_size, tx, critic_tx, mesh=mesh)
  results = []
  for m in (model, model.clone(attention="splash")):
    step = step_lib.make_train_step(m, state_lib.make_critic(config), tx, critic_tx, config,
                                    state_shardings=shardings, batch_sharding=NamedSharding(mesh, PartitionSpec()),
                                    donate=False)
    results.append(jax.device_get(step(state, batch)))
  (s0, m0), (s1, m1) = results
  for key in ("loss", "source_loss", "wasserstein", "grad_norm"):
    np.testing.assert_allclose(m1[key], m0[key], err_msg=key, **TOL)
  for a, b in zip(jax.tree.leaves(s1.trainable), jax.tree.leaves(s0.trainable)):
    np.testing.assert_allclose(a, b, **TOL)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu is not installed (pip install -e '.[tpu]'): cannot compile for a TPU topology")
@pytest.mark.parametrize("packing,scan_layers", [("none", False), ("shared_prefix", True)])
def test_splash_train_step_compiles_for_tpu(tmp_path, monkeypatch, packing, scan_layers):
  """The real train step with splash attention (inside shard_map over data=2 x fsdp=2) compiles for v5e:2x2 with
  libtpu's compile-only devices: padded rows (static mask), and packed shared-prefix rows (dynamic mask) with
  scanned layers. A tiny Gemma of head_dim 128 (the TPU lane width), rows of 128 tokens."""
  from dial_jax import aot, parallel, tpu_slices
  from tests import test_aot
  config = test_aot.tiny_config(test_aot.tiny_dir(tmp_path, head_dim=128))
  config.data.max_length, config.data.min_bucket, config.data.packing = T, T, packing
  mesh = parallel.make_mesh(config.mesh, tpu_slices.devices(tpu_slices.get_slice("v5e:2x2")))
  abstract_model = aot.abstract_model

  def splash_model(config):
    model, hf = abstract_model(config)
    return model.clone(attention="splash", scan_layers=scan_layers, mesh=mesh), hf
  monkeypatch.setattr(aot, "abstract_model", splash_model)
  r = aot.analyse(config, "v5e:2x2", include_eval=False)
  assert r["fits"] and not r["problems"], r["problems"]
  assert ("packed_ids" in r["batch"]) == (packing != "none")
  assert r["train"]["flops_per_step"] > 0


MESH_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from dial_jax.models import layers, splash
mesh = jax.make_mesh((2, 1, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
ks = jax.random.split(jax.random.PRNGKey(0), 3)
q = jax.random.normal(ks[0], (4, 128, 4, 16))
k, v = (jax.random.normal(key, (4, 128, 2, 16)) for key in ks[1:])
mask = np.ones((4, 128), np.int32)
mask[0, 100:], mask[3, :30] = 0, 0
seg = jnp.asarray(mask)
rows = NamedSharding(mesh, P("data"))
out = jax.jit(lambda q, k, v, s: splash.splash_attention(q, k, v, segment_ids=s, window=7, scale=0.3, mesh=mesh))(
    *jax.device_put((q, k, v, seg), rows))
assert out.sharding.spec == P("data", None, "tensor"), out.sharding
ref = layers.dot_product_attention(q, k, v, layers.attention_mask(seg, 7), 0.3, None)
np.testing.assert_allclose(np.asarray(out)[mask > 0], np.asarray(ref)[mask > 0], rtol=1e-4, atol=1e-4)
print("ok")
"""


def test_kernel_runs_sharded_over_a_mesh():
  """On 4 CPU devices (data=2 x tensor=2): rows split over data, heads over tensor, inside shard_map; same values."""
  import os
  import subprocess
  import sys
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", MESH_SCRIPT], env=env, capture_output=True, text=True, timeout=600,
                        cwd=str(Path(__file__).resolve().parents[2]))
  assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
