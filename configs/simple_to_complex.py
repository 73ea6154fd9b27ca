"""Simple-to-complex: UKPConvArg short argument pairs -> ASAP set 1 essays (scored; Pearson/Spearman)."""
from configs import base


def get_config(arg=None):
  c = base.get_base_config()
  c.data.setting = "simple_to_complex"
  c = base.finish(c, arg)
  if arg == "paper":
    c.train.num_steps = 2000
  return c
