"""What each implementation computes for a batch, in token slots and model FLOPs (``dial_jax.flops``)."""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks.step_data import sequences_of


def hf_config(model_dir: Path) -> dict:
  """The text model's ``config.json`` entries (a multimodal config's ``text_config``)."""
  cfg = json.loads((Path(model_dir) / "config.json").read_text())
  return cfg.get("text_config", cfg)


def computed_structure(batch: dict, packing_mode: str, row_length: int) -> tuple[list[int], list[tuple]]:
  """(plain sequence lengths, prefix-shared groups (lc, lr, k)) that an implementation computes for ``batch``."""
  from dial_jax.data import packing

  seqs = sequences_of(batch)
  if packing_mode != "shared_prefix":
    return [len(s) for s in seqs], []
  items = packing.make_items(seqs, packing.pair_indices(len(seqs) // 4), row_length, True)
  plain = [len(it.tokens) for it in items if len(it.ends) == 1]
  groups = []
  for it in items:
    if len(it.ends) == 2:
      k = it.branches.count(0)
      groups.append((k + it.branches.count(1), k + it.branches.count(2), k))
  return plain, groups


def step_flops(cfg: dict, batch: dict, packing_mode: str, row_length: int, *, lora_rank: int, lora_targets,
               trainable: str) -> dict:
  """``dial_jax.flops.model_flops`` of the sequences an implementation with ``packing_mode`` computes for the padded
  ``batch`` (``torch`` computes what ``none`` does)."""
  from dial_jax.flops import model_flops

  plain, groups = computed_structure(batch, packing_mode, row_length)
  return model_flops(cfg, plain, groups=groups, lora_rank=lora_rank, lora_targets=lora_targets, trainable=trainable)
