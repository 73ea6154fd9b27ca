"""The default backbone's conversion, checked fast and independently of dial_jax's model code: tensors of the
converted Gemma-3-270M read straight from the GGUF with the ``gguf`` package (names, shapes, llama.cpp's stored
1 + w norms), and transformers' next-token NLL on real English dialogues within a measured band.

The converted directory is the default cache that the quick experiment grid (tests/test_experiments.py) and every
bundled-model user share, so CI converts Gemma at most once.
"""
import gzip
import importlib
import importlib.util
import json

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

from dial_jax.hf import bundled  # noqa: E402
from tests.conftest import RAW_DATA  # noqa: E402

NAME = "gemma-3-270m"
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, LAYERS, VOCAB = 640, 4, 1, 256, 2048, 18, 262144
# Mean next-token NLL (nats) of transformers on the converted float32 model over the first 128 tokens of the first
# 2 hh-rlhf-harmless test dialogues: 2.675 measured (2.83 and 2.52); shuffled tokens give ~7, broken layouts 4.4-33
# (tests/test_bundled.py). The band allows for float32 BLAS differences, not for a changed model.
NLL_BAND = (2.625, 2.725)


@pytest.fixture(scope="module")
def converted():
  spec = bundled.BUNDLED_MODELS[NAME]
  if importlib.util.find_spec(spec.package) is None:
    pytest.fail(f"the default backbone's package is missing: {spec.pip} (setup.py extra 'test')")
  return bundled.bundled_hf_dir(NAME)


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
  package = importlib.import_module(bundled.BUNDLED_MODELS[NAME].package)
  path = package.assemble(tmp_path_factory.mktemp("gguf") / "model.gguf")
  return gguf.GGUFReader(path)


def _gguf_tensor(reader, name, rows=None):
  t = next(t for t in reader.tensors if t.name == name)
  data = t.data if rows is None else t.data[rows]
  return gguf.quants.dequantize(data, t.tensor_type).astype(np.float32), t.tensor_type


@pytest.mark.parametrize("gguf_name,hf_name,shape", [
    ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", (HEADS * HEAD_DIM, HIDDEN)),
    ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
    ("blk.7.attn_v.weight", "model.layers.7.self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
    ("blk.11.attn_output.weight", "model.layers.11.self_attn.o_proj.weight", (HIDDEN, HEADS * HEAD_DIM)),
    ("blk.5.ffn_gate.weight", "model.layers.5.mlp.gate_proj.weight", (FFN, HIDDEN)),
    ("blk.17.ffn_down.weight", "model.layers.17.mlp.down_proj.weight", (HIDDEN, FFN)),
])
def test_matrices_equal_the_gguf(converted, reader, gguf_name, hf_name, shape):
  from safetensors import safe_open
  expected, _ = _gguf_tensor(reader, gguf_name)
  with safe_open(converted / "model.safetensors", "np") as f:
    got = f.get_tensor(hf_name)
  assert got.shape == expected.shape == shape
  np.testing.assert_array_equal(got, expected)
  assert np.std(got) > 1e-3  # real weights, not zeros


@pytest.mark.parametrize("gguf_name,hf_name", [
    ("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"),
    ("blk.3.attn_q_norm.weight", "model.layers.3.self_attn.q_norm.weight"),
    ("blk.9.post_ffw_norm.weight", "model.layers.9.post_feedforward_layernorm.weight"),
    ("output_norm.weight", "model.norm.weight"),
])
def test_norms_are_stored_weight_minus_one(converted, reader, gguf_name, hf_name):
  """llama.cpp stores Gemma's RMSNorm scale as 1 + w; transformers' Gemma adds the 1 itself."""
  from safetensors import safe_open
  stored, kind = _gguf_tensor(reader, gguf_name)
  assert kind == gguf.GGMLQuantizationType.F32
  with safe_open(converted / "model.safetensors", "np") as f:
    got = f.get_tensor(hf_name)
  np.testing.assert_array_equal(got, stored - np.float32(1))


def test_embedding_rows(converted, reader):
  from safetensors import safe_open
  ids = [0, 2, 1000, 50_000, VOCAB - 1]
  expected, _ = _gguf_tensor(reader, "token_embd.weight", rows=ids)
  with safe_open(converted / "model.safetensors", "np") as f:
    table = f.get_slice("model.embed_tokens.weight")
    assert table.get_shape() == [VOCAB, HIDDEN]
    got = np.stack([table[i:i + 1][0] for i in ids])
    keys = set(f.keys())
  np.testing.assert_array_equal(got, expected)
  assert "lm_head.weight" not in keys  # tied to the embedding
  assert len(keys) == 2 + LAYERS * len({k.split(".", 3)[3] for k in keys if k.startswith("model.layers.0.")})


def test_next_token_nll_on_real_dialogues(converted):
  import transformers
  tok = transformers.AutoTokenizer.from_pretrained(converted)
  model = transformers.AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
  with gzip.open(RAW_DATA / "hh-rlhf-harmless" / "test.jsonl.gz", "rt") as f:
    texts = [json.loads(next(f))["chosen"] for _ in range(2)]
  nll = []
  for text in texts:
    ids = torch.tensor([tok(text).input_ids[:128]])
    assert ids[0, 0] == tok.bos_token_id == 2
    with torch.no_grad():
      logits = model(ids).logits[0, :-1]
    nll.append(torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item())
  print(f"\n{NAME} English next-token NLL {np.mean(nll):.3f}")
  assert NLL_BAND[0] < np.mean(nll) < NLL_BAND[1]
