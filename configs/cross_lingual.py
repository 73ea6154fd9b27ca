"""Cross-lingual: English HH-RLHF harmless pairs -> Korean translations of other dialogues."""
from configs import base


def get_config(arg=None):
  c = base.get_base_config()
  c.data.setting = "cross_lingual"  # needs a multilingual vocabulary: gemma-3-270m, not smollm2
  c = base.finish(c, arg)
  if arg == "paper":
    c.train.num_steps = 2000
  return c
