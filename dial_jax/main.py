r"""Train a DIAL reward model.

  python -m dial_jax.main --config=configs/few_shot.py --workdir=runs/few_shot
  python -m dial_jax.main --config=configs/few_shot.py:paper --workdir=gs://bucket/run --config.train.seed=1

Rerunning the same command with the same --workdir resumes from the latest checkpoint (only if the config defines
the same run; see ``dial_jax.train.loop.check_resume``). Orbax, absl and JAX messages are shown from WARNING up
unless ``--verbosity`` asks for more (``dial_jax.cli_logging``).
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dial_jax import cli_logging  # first: quiets the libraries' INFO lines, some of which come at import time
from dial_jax import config as config_lib
from dial_jax import parallel
from dial_jax.train import loop

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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli_logging.apply_verbosity()
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
