r"""Score texts with a reward model: one JSON row in, the same row plus ``"reward"`` out.

  python -m dial_jax.score --model=gemma-3-270m --input=in.jsonl --output=out.jsonl

Input rows are ``{"prompt": ..., "response": ...}`` or ``{"text": ...}``. ``--model`` is an HF-format model
directory (e.g. one written by ``dial_jax.export``), a bundled model name, a hub id, or a training workdir.
Flags, the input rows and the model's files are checked before the model loads; the output is written to a
temporary file and renamed into place, never onto the input. ``--input`` and ``--output`` may be objects in a bucket
(``gs://...``, through :mod:`dial_jax.paths`); there the output is written as the temporary object ``OUTPUT.tmp``,
copied over ``OUTPUT`` (an atomic object replacement) and deleted.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags, logging

from dial_jax import cli_logging  # noqa: F401  (first: quiets library INFO logs)
from dial_jax import paths
from dial_jax.cli_checks import UsageError, check_input_file, check_model, check_output_file, check_positive
from dial_jax.data import tokenize

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "HF model directory, bundled name, hub id, or training workdir.", required=True)
flags.DEFINE_string("input", None, "Input JSONL file (local or gs://...).", required=True)
flags.DEFINE_string("output", None, "Output JSONL file (local or gs://...).", required=True)
flags.DEFINE_integer("batch_size", 8, "Texts per forward pass.")
flags.DEFINE_integer("max_length", 1024, "Longest token sequence; longer texts keep their end.")
flags.DEFINE_bool("skip_bad_rows", False, "Skip malformed rows (and report how many) instead of stopping.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_bool("overwrite_reward", False, "Replace the \"reward\" field of input rows that already have one "
                  "(without this flag such a row is an error).")


class BadRow(ValueError):
  pass


class RewardExists(ValueError):
  """An input row already has a ``"reward"`` field (never skipped by --skip_bad_rows)."""


def row_text(row, where: str) -> str:
  """The model input of one input row, or BadRow naming the line and the problem."""
  if not isinstance(row, dict):
    raise BadRow(f"{where}: expected a JSON object, got {type(row).__name__}")
  if "text" in row:
    fields = ("text",)
  elif "prompt" in row or "response" in row:
    fields = ("prompt", "response")
  else:
    raise BadRow(f"{where}: needs a 'text' field or 'prompt' and 'response' fields")
  for field in fields:
    if field not in row:
      raise BadRow(f"{where}: missing field '{field}'")
    if not isinstance(row[field], str):
      raise BadRow(f"{where}: field '{field}' must be a string, got {type(row[field]).__name__}")
  if fields == ("text",):
    text = row["text"]
  else:
    text = tokenize.join(row["prompt"], row["response"])
  if not text.strip():
    raise BadRow(f"{where}: empty text")
  return text


def read_rows(path: str, skip_bad_rows: bool, overwrite_reward: bool = False) -> tuple[list[dict], list[str], int]:
  """(rows, texts, number skipped). Blank lines are ignored; a row with a ``"reward"`` field raises
  :class:`RewardExists` unless ``overwrite_reward``. ``path`` is local or in a bucket (``gs://...``)."""
  rows, texts, skipped = [], [], 0
  with paths.path(path).open("rb") as f:
    for line_no, raw in enumerate(f, start=1):
      where = f"{path} line {line_no}"
      try:
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          raise BadRow(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise BadRow(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
        text = row_text(row, where)
        if "reward" in row and not overwrite_reward:
          raise RewardExists(f"{where}: already has a 'reward' field; pass --overwrite_reward to replace it")
        texts.append(text)
        rows.append(row)
      except BadRow as e:
        if not skip_bad_rows:
          raise
        logging.warning("skipping %s", e)
        skipped += 1
  return rows, texts, skipped


def load_scorer(model: str, batch_size: int, max_length: int, dtype: str):
  import jax.numpy as jnp
  from dial_jax import workdir
  return workdir.scorer_for(model, dtype=jnp.dtype(dtype), batch_size=batch_size, max_length=max_length)


def main(argv):
  del argv
  try:
    check_positive("batch_size", FLAGS.batch_size)
    check_positive("max_length", FLAGS.max_length)
    check_input_file("input", FLAGS.input)
    check_output_file(FLAGS.output, FLAGS.input)
    rows, texts, skipped = read_rows(FLAGS.input, FLAGS.skip_bad_rows, FLAGS.overwrite_reward)
    check_model(FLAGS.model)
  except BadRow as e:
    sys.exit(f"error: {e} (pass --skip_bad_rows to skip malformed rows)")
  except (UsageError, RewardExists) as e:
    sys.exit(f"error: {e}")
  scorer = load_scorer(FLAGS.model, FLAGS.batch_size, FLAGS.max_length, FLAGS.dtype)
  rewards = scorer.score(texts, progress=True)
  paths.write_text_atomic(FLAGS.output, "".join(json.dumps({**row, "reward": float(reward)}, ensure_ascii=False) + "\n"
                                                for row, reward in zip(rows, rewards)))  # via OUTPUT.tmp
  print(f"scored {len(rows)} rows -> {FLAGS.output}" + (f"; skipped {skipped} malformed rows" if skipped else ""))


if __name__ == "__main__":
  app.run(main)
