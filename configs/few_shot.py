"""Few-shot-to-full: 10 labeled TL;DR comparisons (repeated) -> the rest of TL;DR (unlabeled)."""
from configs import base


def get_config(arg=None):
  c = base.get_base_config()
  c.data.setting = "few_shot"
  c = base.finish(c, arg)
  if arg == "paper":
    c.train.num_steps = 2000
  return c
