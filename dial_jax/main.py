r"""Train a DIAL reward model.

  python -m dial_jax.main --config=configs/few_shot.py --workdir=runs/few_shot
  python -m dial_jax.main --config=configs/few_shot.py:paper --workdir=gs://bucket/run --config.train.seed=1

Rerunning the same command with the same --workdir resumes from the latest checkpoint.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from dial_jax import parallel
from dial_jax.train import loop

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, optionally with a preset: configs/few_shot.py:paper.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics.jsonl and results.json go.", required=True)
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  parallel.initialize_distributed()
  logging.info("config:\n%s", FLAGS.config)
  loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
