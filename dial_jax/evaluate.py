r"""Evaluate a reward model on one canonical JSONL file and print the metrics as JSON.

  python -m dial_jax.evaluate --model=runs/few_shot --data=data/few_shot/target_test.jsonl

Pairs files give pairwise accuracy; scored-text files give Pearson and Spearman with the score.
``--model`` is a training workdir, an HF directory (e.g. from ``dial_jax.export``) or a bundled name; a workdir and
``--data`` may be in a bucket (``gs://...``, read through :mod:`dial_jax.paths`).
Flags, the data file and the model's files are checked before the model loads.
"""
import json
import sys

from absl import app, flags

from dial_jax import cli_logging  # noqa: F401  (first: quiets library INFO logs)
from dial_jax import cli_checks as checks
from dial_jax.data import pipeline
from dial_jax import workdir
from dial_jax.inference import evaluate_domain

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Training workdir, HF model directory, bundled name or hub id.", required=True)
flags.DEFINE_string("data", None, "Canonical JSONL (pairs or scored texts), local or gs://...", required=True)
flags.DEFINE_integer("batch_size", 16, "Texts per forward pass.")
flags.DEFINE_integer("max_length", 1024, "Longest token sequence; longer texts keep their end.")
flags.DEFINE_integer("limit", 0, "Evaluate a seeded random subset of N examples, stratified by the file's group "
                     "column where it has one (0 = all).")
flags.DEFINE_bool("skip_bad_rows", False, "Skip malformed rows (reported) instead of stopping.")


def check_args(model: str, data: str, batch_size: int, max_length: int, limit: int) -> None:
  """Raises :class:`checks.UsageError` (one line) before anything is loaded."""
  checks.check_positive("batch_size", batch_size)
  checks.check_positive("max_length", max_length)
  if limit is None or limit < 0:
    raise checks.UsageError(f"--limit={limit}: must be 0 (all) or more")
  checks.check_input_file("data", data)
  checks.check_model(model)


def main(argv):
  del argv
  try:
    check_args(FLAGS.model, FLAGS.data, FLAGS.batch_size, FLAGS.max_length, FLAGS.limit)
  except checks.UsageError as e:
    sys.exit(f"error: {e}")
  scorer = workdir.scorer_for(FLAGS.model, batch_size=FLAGS.batch_size, max_length=FLAGS.max_length)
  domain = pipeline.load_domain(FLAGS.data, scorer.tokenizer, FLAGS.max_length, skip_bad_rows=FLAGS.skip_bad_rows,
                                limit=FLAGS.limit)
  result = {"data": FLAGS.data, "model": FLAGS.model, **evaluate_domain(scorer, domain),
            "skipped_bad_rows": domain.n_skipped}
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
