"""Few-shot-to-full: 10 labeled TL;DR comparisons (repeated) -> the rest of TL;DR (unlabeled)."""
from configs import base


def get_config(arg=None):
  return base.for_setting("few_shot", arg)
