"""Simple-to-complex: UKPConvArg short argument pairs -> ASAP set 1 essays (scored; Pearson/Spearman)."""
from configs import base


def get_config(arg=None):
  return base.for_setting("simple_to_complex", arg)
