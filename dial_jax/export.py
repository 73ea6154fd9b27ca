r"""Export a trained reward model (a training workdir) to a Hugging Face ``*ForSequenceClassification`` directory.

  python -m dial_jax.export --workdir=runs/few_shot --output=exported/few_shot [--step=N] \
      [--dtype=bfloat16|float32] [--max_shard_size=2GB] [--overwrite]

LoRA adapters are merged into the base weights; the result loads with
``transformers.AutoModelForSequenceClassification.from_pretrained(OUTPUT)`` (reward = ``logits[:, 0]``) and with
``python -m dial_jax.score --model=OUTPUT``. transformers reads the reward at the last token that is not the
pad id, so score unpadded (or left-padded) texts that do not end in the pad token.

``--workdir`` and ``--output`` may be in a bucket (``gs://bucket/dir``). A bucket export is built in a local
temporary directory (``$TMPDIR``) and uploaded so that the output holds ``config.json`` only once every other file
is there (Cloud Storage has no directory rename; see :mod:`dial_jax.hf.export`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags

from dial_jax import cli_logging  # noqa: F401  (first: quiets library INFO logs)
from dial_jax.cli_checks import UsageError, check_export_args

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints/).", required=True)
flags.DEFINE_string("output", None, "HF directory to write, local or gs://bucket/dir (must not exist unless "
                    "--overwrite); never the workdir, inside it, or a folder that holds it.", required=True)
flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the run's result, the latest checkpoint or, "
                     "for a run with train.keep_best=True, the one with the best source check).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Dtype of the written weights.")
flags.DEFINE_string("max_shard_size", "2GB", "Split the weights into shards above this size (e.g. 2GB, 500MB).")
flags.DEFINE_bool("overwrite", False, "Replace an existing --output, only once the new export is complete and "
                  "only if it is empty or looks like a previous export: plain files only (no subdirectory, so "
                  "never a workdir with checkpoints/), among them config.json and model.safetensors or "
                  "model.safetensors.index.json. Anything else is refused.")


def main(argv):
  del argv
  try:
    check_export_args(FLAGS.workdir, FLAGS.output, FLAGS.step, FLAGS.overwrite)  # before the (slow) loading
  except UsageError as e:
    sys.exit(f"error: {e}")
  from dial_jax import workdir
  from dial_jax.hf import export
  model, variables, tokenizer, model_dir, config, step = workdir.load_trained(FLAGS.workdir, FLAGS.step)
  params = export.merge_lora(variables, model)
  n_adapters = len(_modules(variables["lora"])) if variables.get("lora") else 0
  del variables
  info = export.export_hf(params, model, model_dir, tokenizer, FLAGS.output, dtype=FLAGS.dtype,
                          max_shard_size=FLAGS.max_shard_size, overwrite=FLAGS.overwrite)
  kept = " (the best source check: train.keep_best)" if config.train.keep_best and FLAGS.step is None else ""
  print(f"exported {FLAGS.workdir} step {step}{kept} ({model.config.family}, backbone {model_dir}; "
        f"{n_adapters} LoRA adapters merged) -> {info.output_dir}")
  print(f"  {info.num_tensors} tensors, {info.total_size / 1e6:.1f} MB {info.dtype} in "
        f"{len(info.weight_files)} file(s)" + (f"; not written: {', '.join(info.dropped)}" if info.dropped else ""))
  for name in info.files:
    print(f"  {name}  {info.sizes[name]:,} bytes")
  print(json.dumps({"output": str(info.output_dir), "step": step, "dtype": info.dtype, "files": info.files}))


def _modules(lora):
  """Paths of the modules that hold a LoRA adapter."""
  import flax
  return {k[:-1] for k in flax.traverse_util.flatten_dict(lora)}


if __name__ == "__main__":
  app.run(main)
