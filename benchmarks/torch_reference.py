"""The DIAL train step in PyTorch, written the way the authors' code does it: the reference of
``benchmarks/train_step.py``.

* transformers' ``AutoModelForSequenceClassification`` (``num_labels=1``), LoRA through peft
  (``TaskType.SEQ_CLS``, so the ``score`` head trains too) when LoRA is on;
* four forward passes (source chosen, source rejected, target chosen, target rejected), each batch padded to
  its own longest sequence; reward = the model's logit, embedding = the last layer's (normed) hidden state at
  the last real token;
* the critic takes ``critic_iter`` Adam steps (``torch.optim.Adam``, coupled L2 weight decay) on detached
  embeddings, maximising ``W - gamma * GP``;
* then ``source BT loss + lambda * W`` (with the updated critic, frozen) is backpropagated, the gradient clipped
  to ``max_grad_norm`` and an AdamW step taken.

The losses are dial_jax's (``dial_jax/losses.py``): ``W = mean f(h_s) - mean f(h_t)``, GP = mean over
``[interpolates; h_s; h_t]`` of ``(||grad f(x)||_2 - 1)^2`` with a per-row norm. The interpolation coefficients can
be passed in, so that the step is comparable number for number with dial_jax's.
"""
from __future__ import annotations

import contextlib
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

PARTS = ("source_chosen", "source_rejected", "target_chosen", "target_rejected")


class Critic(nn.Module):
  """``Linear`` layers of ``widths`` (optionally GELU between), then ``Linear(., 1)``: [N, D] -> [N], float32."""

  def __init__(self, in_dim: int, widths: Sequence[int] = (256, 128), activation: str = "none"):
    super().__init__()
    layers, d = [], in_dim
    for w in widths:
      layers.append(nn.Linear(d, w))
      if activation == "gelu":
        layers.append(nn.GELU())
      elif activation == "relu":
        layers.append(nn.ReLU())
      elif activation != "none":
        raise ValueError(f"critic activation {activation!r}")
      d = w
    layers.append(nn.Linear(d, 1))
    self.net = nn.Sequential(*layers)

  def forward(self, x):
    return self.net(x.float())[..., 0]


def load_model(model_dir, *, lora_rank: int = 0, lora_alpha: float = 0.0, lora_targets: Sequence[str] = (),
               score_weight: np.ndarray | None = None, device: str = "cpu",
               attn_implementation: str = "sdpa") -> nn.Module:
  """float32 ``AutoModelForSequenceClassification`` (+ peft LoRA when ``lora_rank > 0``) on ``device``.

  ``score_weight`` ([D, 1], dial_jax's head kernel) replaces the head before peft copies it into its trainable
  ``modules_to_save`` wrapper.
  """
  import transformers

  transformers.logging.set_verbosity_error()  # "score.weight newly initialized": it is set below or random on purpose
  model = transformers.AutoModelForSequenceClassification.from_pretrained(
      str(model_dir), num_labels=1, dtype=torch.float32, attn_implementation=attn_implementation)
  model.config.use_cache = False
  if score_weight is not None:
    with torch.no_grad():
      model.score.weight.copy_(torch.from_numpy(np.array(score_weight, np.float32).T))
  if lora_rank > 0:
    import peft
    config = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=lora_rank, lora_alpha=lora_alpha,
                             target_modules=list(lora_targets), lora_dropout=0.0, bias="none")
    model = peft.get_peft_model(model, config)
  return model.to(device).train()


SCORE = "base_model.model.score.modules_to_save.default.weight"  # peft's trainable copy of the score head


def lora_as_peft(lora_tree: Mapping) -> dict[str, np.ndarray]:
  """dial_jax's LoRA adapters (the ``lora`` collection as nested numpy dicts) by peft parameter name.

  dial_jax: ``lora_a`` is ``in_shape + (r,)``, ``lora_b`` is ``(r,) + out_shape``; peft: ``lora_A.weight`` is
  ``[r, in]``, ``lora_B.weight`` is ``[out, r]``.
  """
  out = {}
  for layer_name, blocks in lora_tree["backbone"].items():
    if not layer_name.startswith("layers_"):
      continue
    i = int(layer_name.split("_")[1])
    for block, projs in blocks.items():
      for proj, ab in projs.items():
        a, b = np.asarray(ab["lora_a"], np.float32), np.asarray(ab["lora_b"], np.float32)
        r = a.shape[-1]
        prefix = f"base_model.model.model.layers.{i}.{block}.{proj}"
        out[f"{prefix}.lora_A.default.weight"] = a.reshape(-1, r).T.copy()
        out[f"{prefix}.lora_B.default.weight"] = b.reshape(r, -1).T.copy()
  return out


def trainable_as_peft(trainable: Mapping) -> dict[str, np.ndarray]:
  """dial_jax's trainable LoRA + score head (``{"lora": ..., "params": {"score": ...}}``) by peft parameter name."""
  return {**lora_as_peft(trainable["lora"]),
          SCORE: np.asarray(trainable["params"]["score"]["kernel"], np.float32).T.copy()}


def critic_as_torch(params: Mapping) -> dict[str, np.ndarray]:
  """Flax ``Dense_i`` kernels ([in, out]) and biases by the :class:`Critic` parameter names they map to."""
  out, i = {}, 0
  while f"Dense_{i}" in params:
    dense = params[f"Dense_{i}"]
    out[f"{i}.weight"] = np.asarray(dense["kernel"], np.float32).T.copy()
    out[f"{i}.bias"] = np.array(dense["bias"], np.float32)
    i += 1
  return out


def copy_lora_from_dial_jax(model: nn.Module, lora_tree: Mapping) -> int:
  """Copy dial_jax's LoRA adapters (see :func:`lora_as_peft`) into a peft model; returns the number of adapted
  modules."""
  params = dict(model.named_parameters())
  values = lora_as_peft(lora_tree)
  with torch.no_grad():
    for name, value in values.items():
      params[name].copy_(torch.from_numpy(value))
  return len(values) // 2


def copy_critic_from_dial_jax(critic: Critic, params: Mapping) -> None:
  """Flax ``Dense_i`` kernels ([in, out]) and biases into the critic's ``Linear`` layers, in order."""
  linears = [m for m in critic.net if isinstance(m, nn.Linear)]
  values = critic_as_torch(params)
  with torch.no_grad():
    for i, lin in enumerate(linears):
      lin.weight.copy_(torch.from_numpy(values[f"{i}.weight"]))
      lin.bias.copy_(torch.from_numpy(values[f"{i}.bias"]))


def critic_params(critic: Critic) -> dict[str, np.ndarray]:
  """The critic's ``Linear`` weights and biases as :func:`critic_as_torch` names them (``{i}.weight``: i-th Linear)."""
  linears = [m for m in critic.net if isinstance(m, nn.Linear)]
  return {f"{i}.{k}": getattr(lin, k).detach().cpu().numpy().copy() for i, lin in enumerate(linears)
          for k in ("weight", "bias")}


def gradient_penalty(critic: Critic, h_s, h_t, alpha):
  """dial_jax's WGAN-GP penalty: ``alpha`` [n, 1] mixes the first ``n = min(N_s, N_t)`` rows."""
  n = min(h_s.shape[0], h_t.shape[0])
  interp = alpha * h_s[:n] + (1.0 - alpha) * h_t[:n]
  x = torch.cat([interp, h_s, h_t]).requires_grad_(True)
  (grads,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
  norms = torch.sqrt((grads**2).sum(-1) + 1e-12)
  return ((norms - 1.0) ** 2).mean()


class DialStep:
  """One DIAL optimizer step per :meth:`step` call, on a model from :func:`load_model` and a :class:`Critic`."""

  def __init__(self, model: nn.Module, critic: Critic, *, learning_rate: float, weight_decay: float,
               max_grad_norm: float, critic_learning_rate: float, critic_weight_decay: float, lambda_: float,
               gamma: float, critic_iter: int, autocast_dtype: torch.dtype | None = None):
    self.model, self.critic = model, critic
    self.named_params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    self.params = list(self.named_params.values())
    self.grads: dict[str, dict[str, torch.Tensor]] = {}
    self.opt = torch.optim.AdamW(self.params, lr=learning_rate, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=weight_decay)
    self.critic_opt = torch.optim.Adam(critic.parameters(), lr=critic_learning_rate, betas=(0.9, 0.999), eps=1e-8,
                                       weight_decay=critic_weight_decay)
    self.max_grad_norm, self.lambda_, self.gamma, self.critic_iter = max_grad_norm, lambda_, gamma, critic_iter
    self.autocast_dtype = autocast_dtype

  def _autocast(self):
    if self.autocast_dtype is None:
      return contextlib.nullcontext()
    device_type = next(self.model.parameters()).device.type
    return torch.autocast(device_type, dtype=self.autocast_dtype)

  def embed(self, ids, mask):
    """(rewards [B], float32 embeddings [B, D]) of one right-padded batch."""
    with self._autocast():
      out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    last = mask.sum(-1) - 1
    h = out.hidden_states[-1][torch.arange(ids.shape[0], device=ids.device), last]
    return out.logits[:, 0].float(), h.float()

  def step(self, parts: Mapping[str, tuple[torch.Tensor, torch.Tensor]], alphas=None,
           keep_grads: bool = False) -> dict[str, float]:
    """``parts[name] = (ids, mask)`` for each of :data:`PARTS`; ``alphas[i]`` ([n, 1]) are critic iteration i's
    interpolation coefficients (drawn with ``torch.rand`` when None). With ``keep_grads``, :attr:`grads` keeps the
    gradients (by parameter name) of the domain term ``lambda * W`` (``"domain"``) and of the whole loss before
    clipping (``"total"``)."""
    r, h = {}, {}
    for name in PARTS:  # four forward passes, as the authors' code does
      r[name], h[name] = self.embed(*parts[name])
    h_s = torch.cat([h["source_chosen"], h["source_rejected"]])
    h_t = torch.cat([h["target_chosen"], h["target_rejected"]])

    hs, ht = h_s.detach(), h_t.detach()
    n = min(hs.shape[0], ht.shape[0])
    metrics = {}
    for i in range(self.critic_iter):
      alpha = alphas[i] if alphas is not None else torch.rand(n, 1, device=hs.device)
      w = self.critic(hs).mean() - self.critic(ht).mean()
      gp = gradient_penalty(self.critic, hs, ht, alpha)
      critic_loss = -(w - self.gamma * gp)
      self.critic_opt.zero_grad(set_to_none=True)
      critic_loss.backward()
      self.critic_opt.step()
      metrics.update(critic_loss=critic_loss.item(), gradient_penalty=gp.item())

    self.critic.requires_grad_(False)
    wasserstein = self.critic(h_s).mean() - self.critic(h_t).mean()
    self.critic.requires_grad_(True)
    source_loss = -nn.functional.logsigmoid(r["source_chosen"] - r["source_rejected"]).mean()
    loss = source_loss + self.lambda_ * wasserstein
    self.opt.zero_grad(set_to_none=True)
    if keep_grads:
      domain = torch.autograd.grad(self.lambda_ * wasserstein, self.params, retain_graph=True, allow_unused=True)
      self.grads = {"domain": {n: torch.zeros_like(p) if g is None else g.detach().clone()
                               for (n, p), g in zip(self.named_params.items(), domain)}}
    loss.backward()
    if keep_grads:
      self.grads["total"] = {n: p.grad.detach().clone() for n, p in self.named_params.items()}
    grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
    self.opt.step()
    metrics.update(loss=loss.item(), source_loss=source_loss.item(), wasserstein=wasserstein.item(),
                   grad_norm=grad_norm.item())
    return metrics


def trim(ids: np.ndarray, mask: np.ndarray, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
  """A right-padded batch cut to its own longest sequence, as torch tensors."""
  longest = max(int(mask.sum(-1).max()), 1)
  return (torch.from_numpy(np.ascontiguousarray(ids[:, :longest])).long().to(device),
          torch.from_numpy(np.ascontiguousarray(mask[:, :longest])).long().to(device))
