"""Small random transformers models (PyTorch) saved with save_pretrained: the parity references."""
from __future__ import annotations

import numpy as np
import torch
import transformers

VOCAB = 256

FAMILIES = {
    "gemma": lambda: transformers.GemmaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=1, head_dim=32, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "gemma3": lambda: transformers.Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=7, query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
        pad_token_id=0, bos_token_id=2, eos_token_id=1),
    "gemma3_softcap": lambda: transformers.Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, sliding_window=5, attn_logit_softcapping=3.0,
        layer_types=["sliding_attention", "full_attention"], pad_token_id=0, bos_token_id=2, eos_token_id=1),
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16, "rope_theta": 500000.0},
        pad_token_id=2, bos_token_id=1, eos_token_id=2),
    "qwen2": lambda: transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2),
}


def make_reference(family: str, seed: int = 0):
  """A random ``AutoModelForSequenceClassification`` (num_labels=1) with random norm weights too."""
  torch.manual_seed(seed)
  config = FAMILIES[family]()
  config.num_labels = 1
  model = transformers.AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or name.endswith("bias"):
        p.copy_(torch.randn_like(p) * 0.5)
      elif "score" in name:
        p.copy_(torch.randn_like(p) * 0.2)
  return model.eval()


def random_batch(lengths, seq_len: int, pad_id: int, padding_side: str, seed: int = 0):
  """Token ids in [3, VOCAB) (never a pad/bos/eos id) with the given real lengths, padded to seq_len."""
  rng = np.random.default_rng(seed)
  ids = np.full((len(lengths), seq_len), pad_id, np.int32)
  mask = np.zeros((len(lengths), seq_len), np.int32)
  for i, n in enumerate(lengths):
    sl = slice(0, n) if padding_side == "right" else slice(seq_len - n, seq_len)
    ids[i, sl] = rng.integers(3, VOCAB, n)
    mask[i, sl] = 1
  return ids, mask


def positions_of(mask):
  return np.maximum(np.cumsum(mask, axis=-1) - 1, 0)


def reference_outputs(model, ids, mask):
  """(hidden states per layer [L+1] as numpy, final normed hidden, pooled reward logits)."""
  with torch.no_grad():
    t_ids, t_mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    pos = torch.tensor(positions_of(mask), dtype=torch.long)
    out = model.model(input_ids=t_ids, attention_mask=t_mask, position_ids=pos, output_hidden_states=True)
    logits = model(input_ids=t_ids, attention_mask=t_mask, position_ids=pos).logits[:, 0]
  return [h.numpy() for h in out.hidden_states], out.last_hidden_state.numpy(), logits.numpy()


def make_tokenizer(vocab_size: int = VOCAB, pad="<pad>", bos="<bos>", eos="<eos>"):
  """A small BPE tokenizer trained on real English text, with pad/eos/bos at ids 0/1/2 (Gemma order)."""
  import gzip
  import json

  from tokenizers import Tokenizer, models, pre_tokenizers, trainers

  from tests.conftest import RAW_DATA
  with gzip.open(RAW_DATA / "hh-rlhf-harmless" / "test.jsonl.gz", "rt") as f:
    corpus = [json.loads(line)["chosen"] for _, line in zip(range(200), f)]
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[pad, eos, bos, "<unk>"])
  tok.train_from_iterator(corpus, trainer)
  from tokenizers.processors import TemplateProcessing
  tok.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, bos_token=bos, eos_token=eos,
                                              unk_token="<unk>")
  return fast
