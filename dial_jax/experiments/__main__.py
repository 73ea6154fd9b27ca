r"""Run the quality experiment grid (resumable; skips runs already in the results file), then write the report.

  python -m dial_jax.experiments --config=configs/experiments.py
  python -m dial_jax.experiments --config=configs/experiments.py --settings=few_shot --max_runs=5
  python -m dial_jax.experiments --config=configs/experiments.py:quick --config.results=/tmp/r.jsonl
"""
from absl import app, flags, logging
from ml_collections import config_flags

from dial_jax import cli_logging  # noqa: F401  (first: quiets library INFO logs)
from dial_jax.experiments import report, runner

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/experiments.py", "Experiment grid config.", lock_config=False)
flags.DEFINE_list("settings", [], "Only these settings (default: all in the config).")
flags.DEFINE_integer("max_runs", 0, "Stop after this many runs (0 = all missing runs).")
flags.DEFINE_string("report", None, "Where to write the report ('' = do not write; default: the preset's own, "
                    "experiments/<preset>/REPORT.md beside the results file, experiments/REPORT.md for the default).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  n = runner.run_grid(FLAGS.config, only_settings=FLAGS.settings, max_runs=FLAGS.max_runs)
  logging.info("%d runs made", n)
  path = report.default_path(FLAGS.config) if FLAGS.report is None else FLAGS.report
  if path:
    report.write_report(FLAGS.config, str(path))


if __name__ == "__main__":
  app.run(main)
