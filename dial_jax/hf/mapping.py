"""The one table between Hugging Face tensor names and dial_jax parameter paths, both directions.

HF ``Linear.weight`` is ``[out, in]``; a dial_jax kernel is ``in_shape + out_shape`` (e.g. q_proj
``[D, N, H]``, o_proj ``[N, H, D]``), so loading is ``W.T.reshape(kernel_shape)`` and exporting the
inverse. Norm weights are stored exactly as HF stores them (Gemma's ``(1 + w)`` lives in the forward).
A ``scan_layers`` model stacks the per-layer parameters (``backbone/layers/...`` with a leading layer axis):
:func:`stack_layers` / :func:`unstack_layers` convert between the two layouts, so the table itself stays per layer.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

# HF checkpoint prefixes in front of the decoder's own names, most specific first.
_PREFIXES = ("model.language_model.", "language_model.model.", "model.")

# (HF suffix regex, dial_jax path template, kind). Paths are relative to the reward model's ``params``.
_RULES: tuple[tuple[str, str, str], ...] = (
    (r"embed_tokens\.weight", "backbone/embed_tokens/embedding", "embedding"),
    (r"norm\.weight", "backbone/norm/scale", "norm"),
    (r"layers\.(\d+)\.self_attn\.(q|k|v)_proj\.weight", "backbone/layers_{0}/self_attn/{1}_proj/kernel", "kernel1"),
    (r"layers\.(\d+)\.self_attn\.(q|k|v)_proj\.bias", "backbone/layers_{0}/self_attn/{1}_proj/bias", "bias"),
    (r"layers\.(\d+)\.self_attn\.o_proj\.weight", "backbone/layers_{0}/self_attn/o_proj/kernel", "kernel2"),
    (r"layers\.(\d+)\.self_attn\.o_proj\.bias", "backbone/layers_{0}/self_attn/o_proj/bias", "bias"),
    (r"layers\.(\d+)\.self_attn\.(q|k)_norm\.weight", "backbone/layers_{0}/self_attn/{1}_norm/scale", "norm"),
    (r"layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", "backbone/layers_{0}/mlp/{1}_proj/kernel", "kernel1"),
    (r"layers\.(\d+)\.mlp\.(gate|up|down)_proj\.bias", "backbone/layers_{0}/mlp/{1}_proj/bias", "bias"),
    (r"layers\.(\d+)\.(input_layernorm|post_attention_layernorm|pre_feedforward_layernorm|"
     r"post_feedforward_layernorm)\.weight", "backbone/layers_{0}/{1}/scale", "norm"),
)
_TOP_RULES: tuple[tuple[str, str, str], ...] = (
    (r"lm_head\.weight", "backbone/lm_head/kernel", "kernel1"),
    (r"score\.weight", "score/kernel", "kernel1"),
)
# Buffers some checkpoints carry that are recomputed here.
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


def hf_name_to_path(name: str) -> tuple[str, str] | None:
  """HF tensor name -> (dial_jax param path 'a/b/c', kind), or None for tensors that are not parameters."""
  if _IGNORED.match(name):
    return None
  for pattern, template, kind in _TOP_RULES:
    m = re.fullmatch(pattern, name)
    if m:
      return template.format(*m.groups()), kind
  for prefix in _PREFIXES:
    if name.startswith(prefix):
      name = name[len(prefix):]
      break
  for pattern, template, kind in _RULES:
    m = re.fullmatch(pattern, name)
    if m:
      return template.format(*m.groups()), kind
  raise KeyError(f"unrecognised Hugging Face tensor name {name!r}")


def path_to_hf_name(path: str) -> str:
  """dial_jax param path -> HF tensor name as ``*ForSequenceClassification`` writes it."""
  for pattern, template, _ in _TOP_RULES:
    hf = _invert(pattern, template, path)
    if hf:
      return hf
  for pattern, template, _ in _RULES:
    hf = _invert(pattern, template, path)
    if hf:
      return "model." + hf
  raise KeyError(f"no Hugging Face name for parameter {path!r}")


def _invert(pattern: str, template: str, path: str) -> str | None:
  # Turn the template into a regex whose groups fill the HF pattern's groups in order.
  groups = re.findall(r"\([^()]*\)", pattern)
  regex = re.escape(template)
  for i, group in enumerate(groups):
    regex = regex.replace(re.escape("{%d}" % i), group)
  m = re.fullmatch(regex, path)
  if not m:
    return None
  out = pattern
  for value in m.groups():
    out = re.sub(r"\([^()]*\)", lambda _: value, out, count=1)
  return out.replace("\\.", ".")


def to_param(hf_tensor: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
  """HF layout -> dial_jax layout of the given shape."""
  if kind.startswith("kernel"):
    return np.ascontiguousarray(hf_tensor.T).reshape(shape)
  return hf_tensor.reshape(shape)


def to_hf(param: np.ndarray, kind: str) -> np.ndarray:
  """dial_jax layout -> HF layout."""
  if kind.startswith("kernel"):
    n_in = int(kind[-1])
    rows = int(np.prod(param.shape[:n_in]))
    return np.ascontiguousarray(param.reshape(rows, -1).T)
  if kind == "bias":
    return param.reshape(-1)
  return param


def kind_of_path(path: str) -> str:
  """The layout kind of a dial_jax parameter path (inverse lookup of the table)."""
  return hf_name_to_path(path_to_hf_name(path))[1]


_LAYER = re.compile(r"^(.*?\bbackbone/)layers_(\d+)/(.*)$")
_STACKED = re.compile(r"^(.*?\bbackbone/)layers/(.*)$")


def _stack(arrays):
  if any(isinstance(a, jax.Array) for a in arrays):
    return jnp.stack(arrays)
  return np.stack([np.asarray(a) for a in arrays])


def stack_layers(flat: dict[str, Any]) -> dict[str, Any]:
  """Flat '/'-paths ``.../backbone/layers_{i}/rest`` -> ``.../backbone/layers/rest`` with a leading layer axis (the
  ``scan_layers`` layout); other paths unchanged. Every layer must have the same leaves."""
  out, groups = {}, {}
  for path, value in flat.items():
    m = _LAYER.match(path)
    if m:
      groups.setdefault(m.group(1) + "layers/" + m.group(3), {})[int(m.group(2))] = value
    else:
      out[path] = value
  counts = {len(g) for g in groups.values()}
  if len(counts) > 1 or any(sorted(g) != list(range(len(g))) for g in groups.values()):
    raise ValueError("stack_layers: every layer needs the same parameters, layers 0..L-1")
  for path, by_layer in groups.items():
    out[path] = _stack([by_layer[i] for i in range(len(by_layer))])
  return out


def unstack_layers(flat: dict[str, Any]) -> dict[str, Any]:
  """Inverse of :func:`stack_layers`: ``.../backbone/layers/rest`` [L, ...] -> ``.../backbone/layers_{i}/rest``."""
  out = {}
  for path, value in flat.items():
    m = _STACKED.match(path)
    if m:
      for i in range(value.shape[0]):
        out[f"{m.group(1)}layers_{i}/{m.group(2)}"] = value[i]
    else:
      out[path] = value
  return out


def is_stacked(flat: Iterable[str]) -> bool:
  return any(_STACKED.match(p) for p in flat)


def _map_tree(fn, variables):
  flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(variables).items()}
  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in fn(flat).items()})


def stack_layer_variables(variables):
  """A variables tree (``params``, ``lora``, ...) in the per-layer layout -> the stacked ``scan_layers`` layout."""
  return _map_tree(stack_layers, variables)


def unstack_layer_variables(variables):
  """A variables tree in the stacked ``scan_layers`` layout -> the per-layer layout (unchanged if not stacked)."""
  return _map_tree(unstack_layers, variables)


def missing_and_unexpected(expected: Iterable[str], found: Iterable[str]) -> tuple[list[str], list[str]]:
  expected, found = set(expected), set(found)
  return sorted(expected - found), sorted(found - expected)
