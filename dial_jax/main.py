r"""Train a DIAL reward model.

  python -m dial_jax.main --config=configs/few_shot.py --workdir=runs/few_shot
  python -m dial_jax.main --config=configs/few_shot.py:paper --workdir=gs://bucket/run --config.train.seed=1

Rerunning the same command with the same --workdir resumes from the latest checkpoint (only if the config defines
the same run; see ``dial_jax.train.loop.check_resume``). Orbax, absl and JAX messages are shown from WARNING up
unless ``--verbosity`` asks for more.
"""
import os
import sys

# No TPU/GPU backend probing noise on a host without one (set before jax is imported).
os.environ.setdefault("JAX_PLATFORMS", "cpu" if not os.path.exists("/dev/accel0") and not os.path.exists(
    "/dev/nvidiactl") and not os.environ.get("TPU_WORKER_HOSTNAMES") else "")
if not os.environ["JAX_PLATFORMS"]:
  del os.environ["JAX_PLATFORMS"]

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_QUIET = ("/orbax/", "/jax/_src/", "/etils/", "/tensorstore/", "/datasets/", "/transformers/")


def _library_info(record) -> bool:
  import logging as py_logging
  return record.levelno < py_logging.WARNING and any(p in record.pathname for p in _QUIET)


_KEEP_OURS = lambda record: not _library_info(record)
# Orbax, JAX, etils, datasets and transformers log INFO through absl's handler (hundreds of lines per checkpoint):
# dropped from the start (some come at import time); main() lets them through again with --verbosity >= 1.
logging.get_absl_handler().addFilter(_KEEP_OURS)

from dial_jax import config as config_lib  # noqa: E402
from dial_jax import parallel  # noqa: E402
from dial_jax.train import loop  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, optionally with a preset: configs/few_shot.py:paper.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics.jsonl, TensorBoard events and results.json go.",
                    required=True)
flags.mark_flags_as_required(["config"])


def parse_flags(argv):
  """absl's parser, with an unknown ``--config.*`` key reported as one line naming it and the nearest keys."""
  try:
    return FLAGS(argv)
  except flags.UnrecognizedFlagError as e:
    if e.flagname.startswith("config."):
      sys.exit(f"error: {config_lib.unknown_key_message(e.flagname[len('config.'):])}")
    raise
  except flags.Error as e:
    sys.exit(f"error: {e}")
  except (AttributeError, KeyError):  # ml_collections' answer to an override of a key the config lacks
    for arg in argv[1:]:
      key = arg.lstrip("-").split("=")[0]
      if key.startswith("config.") and key[len("config."):] not in config_lib.RULES:
        sys.exit(f"error: {config_lib.unknown_key_message(key[len('config.'):])}")
    raise


def quiet_libraries() -> None:
  if FLAGS.verbosity >= 1:
    logging.get_absl_handler().removeFilter(_KEEP_OURS)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  quiet_libraries()
  try:
    config_lib.validate(FLAGS.config)
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")
  parallel.initialize_distributed()
  logging.info("config:\n%s", FLAGS.config)
  try:
    loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (config_lib.ConfigError, RuntimeError) as e:
    if isinstance(e, config_lib.ConfigError) or "is in use by process" in str(e):
      sys.exit(f"error: {e}")
    raise


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
