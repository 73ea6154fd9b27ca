"""model.scan_layers: the stacked, nn.scan-ed decoder computes what the per-layer one does.

Tiny random HF checkpoints (``tests/models/hf_reference.py``): Gemma 3 (local and global layers mixed, so the
scanned per-layer flag picks each layer's mask and RoPE) and Llama (one layer type, untied LM head). Loaded twice,
per layer and stacked, with random LoRA adapters on every target; float32, outputs to 1e-5, gradients to 1e-5 of
each leaf's largest entry.
"""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dial_jax.data import packing
from dial_jax.hf import export, load, mapping
from dial_jax.models.decoder import LORA_TARGETS, LoraConfig
from tests import helpers
from tests.models.hf_reference import make_tokenizer, random_batch

TOL = dict(rtol=1e-5, atol=1e-5)


def model_dir(tmp_path_factory, family):
  return helpers.make_tiny_model_dir(tmp_path_factory.mktemp(f"scan_{family}") / "model", family)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return model_dir(tmp_path_factory, "gemma3")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
  return model_dir(tmp_path_factory, "llama")


def randomize_lora(variables, seed=0):
  """Adapters with non-zero B (fresh ones are zero, which would hide LoRA from the comparison)."""
  leaves, treedef = jax.tree.flatten(variables["lora"])
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  lora = treedef.unflatten([0.1 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
  return {**variables, "lora": lora}


def load_both(model_dir, **kw):
  lora = LoraConfig(rank=2, alpha=4.0, targets=LORA_TARGETS)
  m0, v0, _ = load.load_reward_model(model_dir, lora=lora, **kw)
  m1, v1, _ = load.load_reward_model(model_dir, lora=lora, scan_layers=True, **kw)
  v0 = randomize_lora(v0)
  return (m0, v0), (m1, mapping.stack_layer_variables(v0)), v1


def flat(tree):
  return {"/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}


def packed_batch(seed=0, row_length=64):
  """Two rows of ``row_length`` packed with shared prefixes (branch ids 1/2) from 8 random sequences (4 pairs)."""
  rng = np.random.default_rng(seed)
  prompts = [list(rng.integers(3, 200, n)) for n in (9, 5)]
  seqs = []
  for part in range(4):
    for p in prompts:
      seqs.append(p + list(rng.integers(3, 200, 4 + 3 * part)))
  rows = packing.pack_rows(seqs, 2, row_length=row_length, share_prefix=True)
  arrays = packing.to_arrays(rows, len(seqs), num_rows=2, row_length=row_length, slots=8, pad_id=0)
  assert arrays["branch_ids"].max() == 2
  return arrays


@pytest.mark.parametrize("family", ["gemma3", "llama"])
def test_loading_stacks_the_per_layer_variables(tiny, tiny_llama, family):
  tiny = tiny if family == "gemma3" else tiny_llama
  (_, _), (_, _), v1 = load_both(tiny)
  m0, v0, _ = load.load_reward_model(tiny, lora=LoraConfig(rank=2, alpha=4.0, targets=LORA_TARGETS))
  f0, f1 = flat(mapping.stack_layer_variables(v0)), flat(v1)
  assert f0.keys() == f1.keys() and any("backbone/layers/" in k for k in f1)
  for k in f0:
    np.testing.assert_array_equal(f0[k], f1[k], err_msg=k)
  assert f1["params/backbone/layers/self_attn/q_proj/kernel"].shape[0] == m0.config.num_layers
  # The stacked layout round trips.
  assert flat(mapping.unstack_layer_variables(v1)).keys() == flat(v0).keys()


@pytest.mark.parametrize("family,remat,last_token_only", [("gemma3", "full", (False, True)),
                                                          ("llama", "none", (False,))])
def test_scanned_equals_unrolled_padded(tiny, tiny_llama, family, remat, last_token_only):
  """Rewards, embeddings and gradients (params and LoRA) on a left-padded batch, for the full forward and the
  last-token-only final layer; Gemma 3 (mixed layer types) under remat, Llama (one type, untied head) without."""
  (m0, v0), (m1, v1), _ = load_both(tiny if family == "gemma3" else tiny_llama, remat_policy=remat)
  ids, mask = random_batch([5, 17, 32, 11], 32, pad_id=0, padding_side="left", seed=1)
  ids, mask = jnp.asarray(ids), jnp.asarray(mask)
  for last_token_only in last_token_only:
    ma, mb = (m.clone(last_token_only=last_token_only) for m in (m0, m1))
    def loss(v, m):
      out = m.apply(v, ids, mask)
      return jnp.sum(out["rewards"] * jnp.arange(1.0, 5.0)) + 0.1 * jnp.sum(out["embeddings"] ** 2), out
    (l0, o0), g0 = jax.jit(jax.value_and_grad(lambda v: loss(v, ma), has_aux=True))(v0)
    (l1, o1), g1 = jax.jit(jax.value_and_grad(lambda v: loss(v, mb), has_aux=True))(v1)
    np.testing.assert_allclose(o1["rewards"], o0["rewards"], **TOL)
    np.testing.assert_allclose(o1["embeddings"], o0["embeddings"], **TOL)
    f0, f1 = flat(g0), flat(mapping.unstack_layer_variables(g1))
    assert f0.keys() == f1.keys()
    # float32 summation order differs between the scanned and unrolled graphs, and with the CPU: 1e-4 of each
    # leaf's largest entry (worst leaf seen: 2.2e-5 on an Intel Xeon, under 1e-5 on an AMD EPYC; with the layers
    # in reverse order every leaf is off by 0.7 or more).
    for k in f0:
      np.testing.assert_allclose(f1[k], f0[k], rtol=0, atol=1e-4 * np.abs(f0[k]).max(), err_msg=k)


def test_scanned_equals_unrolled_packed_and_hidden_states(tiny):
  """Shared-prefix packed rows (final layer on the last positions only) and every layer's hidden state."""
  (m0, v0), (m1, v1), _ = load_both(tiny, last_token_only=True)
  a = {k: jnp.asarray(v) for k, v in packed_batch().items()}
  args = (a["ids"], a["segment_ids"], a["positions"], a["branch_ids"], a["last_positions"])
  o0 = m0.apply(v0, *args, method=m0.packed)
  o1 = m1.apply(v1, *args, method=m1.packed)
  np.testing.assert_allclose(o1["rewards"], o0["rewards"], **TOL)
  np.testing.assert_allclose(o1["embeddings"], o0["embeddings"], **TOL)
  ids, mask = random_batch([7, 12], 16, pad_id=0, padding_side="right", seed=2)
  h0, all0 = m0.apply(v0, ids, mask, method=m0.hidden_states)
  h1, all1 = m1.apply(v1, ids, mask, method=m1.hidden_states)
  # Hidden states of O(1)-O(10): float32 summation order (scan vs unrolled fusions, CPU model) moves single entries by
  # ~1e-5 absolute (seen: 1.2e-5 on an AMD EPYC host), so compare to 1e-5 of the tensor's largest entry.
  scaled = lambda x: dict(rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(x).max())))
  np.testing.assert_allclose(h1, h0, **scaled(h0))
  assert len(all1) == len(all0) == m0.config.num_layers + 1
  for x0, x1 in zip(all0, all1):
    np.testing.assert_allclose(x1, x0, **scaled(x0))


def test_export_of_a_scanned_model_round_trips(tiny, tmp_path):
  """merge_lora + export_hf of the stacked variables write the per-layer checkpoint of the unrolled model; loading
  it back with scan_layers gives the merged stacked parameters."""
  (m0, v0), (m1, v1), _ = load_both(tiny)
  tok = make_tokenizer()
  merged0, merged1 = export.merge_lora(v0, m0), export.merge_lora(v1, m1)
  assert "layers" in merged1["backbone"]
  export.export_hf(merged0, m0, tiny, tok, tmp_path / "unrolled", check_transformers=False)
  export.export_hf(merged1, m1, tiny, tok, tmp_path / "scanned", check_transformers=False)
  s0 = load.read_state_dict(tmp_path / "unrolled")
  s1 = load.read_state_dict(tmp_path / "scanned")
  assert s0.keys() == s1.keys()
  for k in s0:
    np.testing.assert_allclose(s1[k], s0[k], atol=1e-6, err_msg=k)
  _, back, _ = load.load_reward_model(tmp_path / "scanned", scan_layers=True)
  expected = flat(merged1)
  got = flat(back["params"])
  for k in got:
    np.testing.assert_allclose(got[k], expected[k], atol=1e-6, err_msg=k)
