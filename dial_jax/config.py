"""The one place a training config is checked: every key, its allowed values, and combinations.

``validate(config)`` runs at entry (``dial_jax.main``, the experiment runner, ``dial_jax.aot``) before any model
or data is loaded. Keys are exactly those of ``configs/base.py``; an unknown or missing key, a wrong enum value, a
value out of range or an inconsistent combination stops with one line naming the key, the value and what is
allowed.
"""
from __future__ import annotations

from typing import Any, Callable

import ml_collections

PACKING_MODES = ("auto", "none", "sequences", "shared_prefix")
MODES = ("dial", "source_only", "oracle")
DOMAIN_LOSSES = ("wdgrl", "mmd", "coral", "dann")
AUX_LOSSES = ("none", "source_sft", "target_ntp")
CRITIC_INPUT_SCALES = ("none", "rms")

_INT, _FLOAT, _STR, _BOOL = int, (int, float), str, bool


def _enum(*values):
  return lambda v: v in values, f"one of {values}"


def _at_least(low, kind=_INT):
  return lambda v: isinstance(v, kind) and not isinstance(v, bool) and v >= low, f">= {low}"


def _positive(kind=_FLOAT):
  return lambda v: isinstance(v, kind) and not isinstance(v, bool) and v > 0, "> 0"


def _any(kind):
  name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
  return lambda v: isinstance(v, kind) and (kind is bool or not isinstance(v, bool)), f"a {name}"


def _widths(v):
  return isinstance(v, (tuple, list)) and all(isinstance(w, int) and w > 0 for w in v)


# key -> (check, allowed-values text)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model.name": (lambda v: isinstance(v, str) and bool(v), "a model directory, bundled name or hub id"),
    "model.dtype": _enum("float32", "bfloat16"),
    "model.param_dtype": _enum("float32", "bfloat16"),
    "model.pooling": _enum("last", "mean"),
    "model.remat_policy": _enum("none", "full", "dots", "dots_no_batch"),
    "model.last_token_only": _any(_BOOL),
    "model.head_seed": _at_least(0),
    "model.head_init": _enum("normal", "probe"),
    "model.probe_max_pairs": _at_least(0),
    "model.probe_l2": _at_least(0.0, _FLOAT),
    "model.attention": _enum("xla", "splash"),
    "model.scan_layers": _any(_BOOL),
    "data.dir": (lambda v: isinstance(v, str) and bool(v), "a directory (output of dial_jax.prepare)"),
    "data.setting": (lambda v: isinstance(v, str) and bool(v), "a setting folder name"),
    "data.max_length": _at_least(8),
    "data.min_bucket": _at_least(1),
    "data.truncation": _enum("end", "start"),
    "data.packing": _enum(*PACKING_MODES),
    "data.pack_row_length": _at_least(0),
    "data.pack_rows_multiple": _at_least(1),
    "data.skip_bad_rows": _any(_BOOL),
    "data.max_eval_examples": _at_least(0),
    "data.eval_batch_size": _at_least(1),
    "train.num_steps": _at_least(1),
    "train.batch_size": _at_least(1),
    "train.grad_accum_steps": _at_least(1),
    "train.optimizer": _enum("adamw", "sgd"),
    "train.learning_rate": _positive(),
    "train.head_learning_rate": _at_least(0.0, _FLOAT),
    "train.lr_schedule": _enum("constant", "linear", "cosine"),
    "train.warmup_steps": _at_least(0),
    "train.weight_decay": _at_least(0.0, _FLOAT),
    "train.weight_decay_target": _enum("zero", "start"),
    "train.max_grad_norm": _at_least(0.0, _FLOAT),
    "train.trainable": _enum("lora", "full", "top_k"),
    "train.top_k_layers": _at_least(1),
    "train.seed": _at_least(0),
    "train.log_every": _at_least(1),
    "train.eval_every": _at_least(0),
    "train.keep_best": _any(_BOOL),
    "train.checkpoint_every": _at_least(0),
    "train.keep_checkpoints": _at_least(1),
    "train.on_nonfinite": _enum("skip", "stop"),
    "train.wandb_project": _any(_STR),
    "lora.rank": _at_least(0),
    "lora.alpha": _positive(),
    "lora.targets": (lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and set(v) <= set(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
                     "a non-empty subset of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"),
    "dial.mode": _enum(*MODES),
    "dial.domain_loss": _enum(*DOMAIN_LOSSES),
    "dial.lambda_": _at_least(0.0, _FLOAT),
    "dial.lambda_warmup_steps": _at_least(0),
    "dial.gamma": _at_least(0.0, _FLOAT),
    "dial.critic_iter": _at_least(0),
    "dial.critic_widths": (_widths, "a tuple of positive ints"),
    "dial.critic_activation": _enum("none", "gelu", "relu"),
    "dial.critic_input_scale": _enum(*CRITIC_INPUT_SCALES),
    "dial.critic_learning_rate": _positive(),
    "dial.critic_weight_decay": _at_least(0.0, _FLOAT),
    "dial.align": _enum("embeddings", "pair_differences"),
    "dial.domain_labels": _enum("true", "shuffled"),
    "dial.length_blind": _any(_BOOL),
    "dial.match_target_lengths": _any(_BOOL),
    "dial.aux": _enum(*AUX_LOSSES),
    "dial.aux_weight": _at_least(0.0, _FLOAT),
    "mesh.data": (lambda v: isinstance(v, int) and (v == -1 or v >= 1), "-1 (all remaining devices) or >= 1"),
    "mesh.fsdp": (lambda v: isinstance(v, int) and (v == -1 or v >= 1), "-1 or >= 1"),
    "mesh.tensor": (lambda v: isinstance(v, int) and (v == -1 or v >= 1), "-1 or >= 1"),
}


# Keys added after runs were recorded, at the values that reproduce those runs: a saved config without one of them
# resumes (``train.loop.check_resume``) and the experiment grids keep their fingerprints.
ADDED_KEYS = {"model.attention": "xla", "model.scan_layers": False, "model.head_init": "normal",
              "train.weight_decay_target": "zero", "dial.align": "embeddings",
              "model.probe_max_pairs": 0, "dial.domain_labels": "true", "model.probe_l2": 0.0,
              "train.keep_best": False, "dial.length_blind": False,
              "dial.match_target_lengths": False}


class ConfigError(ValueError):
  """A config key is unknown, missing, has a wrong value, or contradicts another key."""


def flatten(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
  """``{"section.key": value}`` for a two-level config."""
  out = {}
  for section, values in dict(config).items():
    if isinstance(values, (dict, ml_collections.ConfigDict)):
      for key, value in dict(values).items():
        out[f"{section}.{key}"] = value
    else:
      out[section] = values
  return out


def _close_matches(key: str) -> str:
  import difflib
  near = difflib.get_close_matches(key, RULES, n=3)
  section = key.split(".")[0]
  same = sorted(k for k in RULES if k.startswith(section + "."))
  if near:
    return f"; did you mean {', '.join(near)}?"
  if same:
    return f"; keys of {section!r}: {', '.join(same)}"
  return f"; sections: {sorted({k.split('.')[0] for k in RULES})}"


def unknown_key_message(key: str) -> str:
  return f"unknown config key {key!r}" + _close_matches(key)


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Check every key of ``config``; returns it unchanged or raises :class:`ConfigError` (one line)."""
  flat = flatten(config)
  for key in flat:
    if key not in RULES:
      raise ConfigError(unknown_key_message(key))
  for key, (check, allowed) in RULES.items():
    if key not in flat:
      raise ConfigError(f"config key {key!r} is missing (see configs/base.py)")
    value = flat[key]
    if not check(value):
      raise ConfigError(f"config key {key}={value!r} is invalid: must be {allowed}")
  _check_combinations(config)
  return config


def _check_combinations(c: ml_collections.ConfigDict) -> None:
  t, d = c.train, c.data
  if t.batch_size % t.grad_accum_steps:
    raise ConfigError(f"train.batch_size={t.batch_size} must be divisible by train.grad_accum_steps="
                      f"{t.grad_accum_steps} (pairs per micro-batch = batch_size / grad_accum_steps)")
  if d.min_bucket > d.max_length:
    raise ConfigError(f"data.min_bucket={d.min_bucket} exceeds data.max_length={d.max_length}")
  if d.pack_row_length and d.pack_row_length < d.max_length:
    raise ConfigError(f"data.pack_row_length={d.pack_row_length} is shorter than data.max_length={d.max_length}")
  if d.packing in ("sequences", "shared_prefix") and not packing_supported(c):
    raise ConfigError(f"data.packing={d.packing!r} needs model.pooling='last' and dial.aux='none' (an auxiliary LM "
                      "loss reads every token's hidden state); use data.packing='none' or 'auto'")
  if t.trainable == "lora" and c.lora.rank == 0:
    raise ConfigError("train.trainable='lora' needs lora.rank >= 1 (or use train.trainable='full' or 'top_k')")
  if c.model.last_token_only and c.model.pooling != "last":
    raise ConfigError("model.last_token_only=True needs model.pooling='last' (mean pooling reads every token)")
  if c.model.scan_layers and t.trainable == "top_k":
    raise ConfigError("model.scan_layers=True stacks the layers, so train.trainable='top_k' (which selects layers by "
                      "name) is not available; use 'lora' or 'full'")
  if t.keep_best and not t.eval_every:
    raise ConfigError("train.keep_best=True chooses among the evaluations during training: set train.eval_every "
                      "(e.g. 50)")
  if t.weight_decay_target == "start" and t.optimizer != "adamw":
    raise ConfigError("train.weight_decay_target='start' is AdamW's decoupled decay; use train.optimizer='adamw'")
  if c.dial.domain_loss == "dann" and c.dial.critic_input_scale != "none":
    raise ConfigError("dial.critic_input_scale applies to the WDGRL critic; use 'none' with dial.domain_loss='dann'")
  if (c.dial.align == "pair_differences" and c.dial.domain_loss in ("wdgrl", "dann")
      and c.dial.critic_activation == "none"):
    # Both signs of every difference make each domain's features symmetric about 0, so a linear critic's mean is its
    # bias on either domain: W (or DANN's logit) is identically 0 and nothing is aligned.
    raise ConfigError("dial.align='pair_differences' needs a nonlinear critic (a linear one cannot tell symmetric "
                      "distributions apart): set dial.critic_activation='gelu' or 'relu'")


def packing_supported(config: ml_collections.ConfigDict) -> bool:
  return config.model.pooling == "last" and config.dial.aux == "none"


def packing_mode(config: ml_collections.ConfigDict) -> str:
  """``data.packing`` with ``auto`` resolved: ``shared_prefix`` where the step supports packing, else ``none``."""
  mode = config.data.packing
  if mode == "auto":
    return "shared_prefix" if packing_supported(config) else "none"
  return mode


def domain_loss_active(config: ml_collections.ConfigDict) -> bool:
  """Whether the domain term can be non-zero: statically false for source_only and oracle (lambda = 0), so their
  step neither runs the critic nor adds ``0 * W`` (``0 * inf`` would be NaN)."""
  return config.dial.mode == "dial" and (config.dial.lambda_ > 0 or config.dial.domain_loss == "dann")
