"""Domain critic (WDGRL) / domain classifier (DANN) MLP heads.

The DIAL authors' code asked for a GELU critic, but their helper library
silently built it with *no* activation, i.e. a stack of linear layers (a
linear function of the embedding overall). The paper's numbers were produced
with that network, so ``activation="none"`` is the default here;
``"gelu"`` gives the critic that was intended.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

_ACTIVATIONS = {
  "none": None,
  "gelu": lambda x: nn.gelu(x, approximate=False),  # exact, as torch.nn.GELU()
  "relu": nn.relu,
}


class Critic(nn.Module):
  """MLP mapping embeddings ``[N, D]`` to one float32 scalar per row, ``[N]``.

  Hidden layers of sizes ``widths``, each followed by ``activation``
  ('none' | 'gelu' | 'relu'), then a final ``Dense(1)``. Parameters and
  computation are always float32 (inputs are cast), whatever the backbone's
  dtype. Uses Flax's default initialisers (lecun_normal kernels, zero biases).
  """

  widths: Sequence[int] = (256, 128)
  activation: str = "none"

  def __post_init__(self):
    if self.activation not in _ACTIVATIONS:
      raise ValueError(
        f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}"
      )
    super().__post_init__()

  @nn.compact
  def __call__(self, x):
    x = jnp.asarray(x, jnp.float32)
    act = _ACTIVATIONS[self.activation]
    for width in self.widths:
      x = nn.Dense(width, dtype=jnp.float32, param_dtype=jnp.float32)(x)
      if act is not None:
        x = act(x)
    x = nn.Dense(1, dtype=jnp.float32, param_dtype=jnp.float32)(x)
    return x[..., 0]


# DANN's domain classifier is the same MLP; its output is read as a logit
# (source = 1, target = 0), see ``dial_jax.losses.dann_loss``.
DomainClassifier = Critic
