"""dial_jax's step against the PyTorch reference (``benchmarks/torch_reference.py``): one float32 step of each from
the same weights on the same pairs, with the same gradient-penalty coefficients."""
from __future__ import annotations

from pathlib import Path

from benchmarks import torch_reference as tr
from benchmarks.dial_side import Settings, build_dial_jax, dial_config
from benchmarks.step_data import PACKING, PARTS, batch_stats

CHECKED = ("source_loss", "wasserstein", "grad_norm")  # must agree, else nothing is timed
REPORTED = CHECKED + ("loss", "critic_loss", "gradient_penalty")


def torch_hparams(config) -> dict:
  """The reference's ``DialStep`` hyperparameters from a dial_jax config."""
  t, d = config.train, config.dial
  return dict(learning_rate=t.learning_rate, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
              critic_learning_rate=d.critic_learning_rate, critic_weight_decay=d.critic_weight_decay,
              lambda_=d.lambda_, gamma=d.gamma, critic_iter=d.critic_iter)


def gp_coefficients(rng, critic_iter: int, n: int):
  """The interpolation coefficients dial_jax's step draws: ``uniform(fold_in(fold_in(split(rng)[1], micro=0), i))``."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  _, step_rng = jax.random.split(rng)
  micro = jax.random.fold_in(step_rng, 0)
  return [np.asarray(jax.random.uniform(jax.random.fold_in(micro, i), (n, 1), jnp.float32)) for i in range(critic_iter)]


def dial_jax_step(config, batch: dict) -> dict:
  """One step of dial_jax's jitted train step (state not donated): the starting ``trainable``, ``critic`` and ``rng``
  and the new ``state``'s (host arrays), the ``metrics`` (floats) and the ``model``."""
  import jax

  from dial_jax import parallel

  built = build_dial_jax(config, batch, donate=False)
  state = built["state"]
  start = jax.device_get({"trainable": state.trainable, "critic": state.critic, "rng": state.rng})
  new_state, metrics = built["step"](state, parallel.global_batch(batch, built["batch_shardings"]))
  new = jax.device_get({"trainable": new_state.trainable, "critic": new_state.critic})
  return {"start": start, "new": new, "metrics": {k: float(v) for k, v in jax.device_get(metrics).items()},
          "model": built["model"]}


def reference_step(model_dir: Path, config, start: dict, hidden_size: int, batch: dict, device: str = "cpu",
                   keep_grads: bool = False) -> tuple[dict, tr.DialStep]:
  """The reference's step from dial_jax's starting weights (``start`` of :func:`dial_jax_step`) on the padded
  ``batch``, with dial_jax's gradient-penalty coefficients: (metrics, the ``DialStep`` after its step)."""
  import torch

  trainable = start["trainable"]
  lora = trainable.get("lora") if config.train.trainable == "lora" else None
  tmodel = tr.load_model(model_dir, lora_rank=config.lora.rank if lora else 0, lora_alpha=config.lora.alpha,
                         lora_targets=tuple(config.lora.targets), score_weight=trainable["params"]["score"]["kernel"],
                         device="cpu")
  if lora:
    tr.copy_lora_from_dial_jax(tmodel, lora)
  tcritic = tr.Critic(hidden_size, tuple(config.dial.critic_widths), config.dial.critic_activation)
  tr.copy_critic_from_dial_jax(tcritic, start["critic"]["params"])
  ref = tr.DialStep(tmodel.to(device), tcritic.to(device), **torch_hparams(config))
  n = 2 * config.train.batch_size  # min(source rows, target rows)
  alphas = [torch.from_numpy(a.copy()).to(device) for a in gp_coefficients(start["rng"], config.dial.critic_iter, n)]
  parts = {p: tr.trim(batch[f"{p}_ids"][0], batch[f"{p}_mask"][0], device) for p in PARTS}
  return ref.step(parts, alphas=alphas, keep_grads=keep_grads), ref


def check_numerics(model_dir: Path, batches: dict[str, dict], settings: Settings, max_length: int, pairs: int,
                   gpu: bool, *, rtol: float, atol: float) -> dict:
  """One float32 step of each implementation from identical weights on the same pairs (``batches``: each dial_jax
  implementation's batch, ``dial_jax``'s padded one first, which the reference also takes); the three figures of
  every dial_jax implementation compared with the reference's: ``|dial_jax - torch| <= atol + rtol * |torch|``."""
  import jax

  jax.config.update("jax_default_matmul_precision", "highest")
  batch = batches["dial_jax"]
  jax_ms = {}
  for impl, impl_batch in batches.items():
    config = dial_config(settings, model_dir, max_length, pairs, "float32", PACKING[impl])
    ran = dial_jax_step(config, impl_batch)
    jax_ms[impl] = ran["metrics"]
    if impl == "dial_jax":
      start, hidden_size = ran["start"], ran["model"].config.hidden_size
    del ran
  torch_m, _ = reference_step(model_dir, config, start, hidden_size, batch, "cuda" if gpu else "cpu")

  out = {"dtype": "float32", "rtol": rtol, "atol": atol, "impls": {}, "ok": True}
  for impl, jax_m in jax_ms.items():
    values = out["impls"][impl] = {}
    for key in REPORTED:
      a, b = jax_m[key], torch_m[key]
      diff = abs(a - b)
      within = diff <= atol + rtol * abs(b)
      checked = key in CHECKED
      values[key] = {"dial_jax": a, "torch": b, "abs_diff": diff, "rel_diff": diff / max(abs(b), 1e-30),
                     "checked": checked, "within_tolerance": bool(within)}
      if checked and not within:
        out["ok"] = False
  out["values"] = out["impls"]["dial_jax"]
  out["batch"] = {k: v for k, v in batch_stats(batch).items() if k != "lengths"}
  return out
