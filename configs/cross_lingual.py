"""Cross-lingual: English HH-RLHF harmless pairs -> Korean translations of other dialogues."""
from configs import base


def get_config(arg=None):
  # needs a multilingual vocabulary: gemma-3-270m, not smollm2
  return base.for_setting("cross_lingual", arg)
