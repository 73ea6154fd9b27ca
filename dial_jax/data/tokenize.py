"""Text -> token ids for a reward model, the same way for training, evaluation and scoring."""
from __future__ import annotations

from typing import Sequence


def join(prompt: str, response: str) -> str:
  """The model input for a (prompt, response) pair: the two joined by one space (no chat template)."""
  if not prompt:
    return response
  if not response:
    return prompt
  sep = "" if prompt[-1].isspace() or response[0].isspace() else " "
  return prompt + sep + response


def words(text: str) -> int:
  """A text's length in whitespace-separated words: the length the evaluation's length check reads (independent of
  the tokenizer and of truncation)."""
  return len(text.split())


def encode(tokenizer, texts: Sequence[str], max_length: int, truncation: str = "end") -> list[list[int]]:
  """Token ids per text (with the tokenizer's special tokens, e.g. Gemma's <bos>).

  A text longer than ``max_length`` keeps its first special token and then its *last* tokens (``truncation="end"``:
  a reward is read at the end of the response, so the end survives) or its *first* tokens (``"start"``, as the DIAL
  authors did, e.g. for long essays whose opening carries the content).
  """
  if truncation not in ("end", "start"):
    raise ValueError(f"truncation must be 'end' or 'start', got {truncation!r}")
  if not texts:
    return []
  encoded = tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
  bos = tokenizer.bos_token_id
  out = []
  for ids in encoded:
    if len(ids) > max_length:
      if truncation == "start":
        ids = ids[:max_length]
      else:
        keep_bos = bos is not None and ids[0] == bos
        ids = ([bos] + ids[len(ids) - max_length + 1:]) if keep_bos else ids[len(ids) - max_length:]
    out.append(ids)
  return out
