"""What the command-line tools print: their own INFO lines, and libraries' messages from WARNING up.

Orbax, JAX (e.g. "Unable to initialize backend 'tpu'" on a host without one), etils, tensorstore, datasets and
transformers log INFO through absl's handler, hundreds of lines per checkpoint. Importing this module (first, in
every CLI) drops those records; ``apply_verbosity()`` in ``main`` lets them through again with ``--verbosity >= 1``.
"""
import logging as py_logging

from absl import flags, logging

_QUIET = ("/orbax/", "/jax/_src/", "/jax/experimental/", "/etils/", "/tensorstore/", "/datasets/", "/transformers/")


def _keep(record) -> bool:
  return record.levelno >= py_logging.WARNING or not any(p in record.pathname for p in _QUIET)


logging.get_absl_handler().addFilter(_keep)


def apply_verbosity() -> None:
  """Call once flags are parsed: ``--verbosity=1`` (DEBUG) shows the libraries' INFO lines again."""
  if flags.FLAGS.verbosity >= 1:
    logging.get_absl_handler().removeFilter(_keep)
