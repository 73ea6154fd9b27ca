"""Reading transformers' ``rope_parameters`` into the hashable form DecoderConfig keeps."""
from __future__ import annotations

_SUPPORTED = ("default", "linear", "llama3")


def rope_from_hf(params: dict) -> tuple[float, tuple | None]:
  """(theta, scaling items or None) from one ``rope_parameters`` dict of transformers >= 5."""
  params = dict(params)
  theta = float(params.pop("rope_theta"))
  rope_type = params.get("rope_type", "default")
  if rope_type not in _SUPPORTED:
    raise NotImplementedError(f"RoPE type {rope_type!r} is not supported; supported: {_SUPPORTED}.")
  if rope_type == "default":
    return theta, None
  return theta, tuple(sorted(params.items()))
