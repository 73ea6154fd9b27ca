"""Clean-to-noisy: CNN/DailyMail summary comparisons -> Reddit TL;DR comparisons."""
from configs import base


def get_config(arg=None):
  return base.for_setting("clean_to_noisy", arg)
