"""Clean-to-noisy: CNN/DailyMail summary comparisons -> Reddit TL;DR comparisons."""
from configs import base


def get_config(arg=None):
  c = base.get_base_config()
  c.data.setting = "clean_to_noisy"
  c = base.finish(c, arg)
  if arg == "paper":
    c.train.num_steps = 2000
  return c
