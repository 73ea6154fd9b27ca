r"""DIAL train-step throughput: dial_jax vs a PyTorch reference of the same step, and vs the machine's matmul peak.

  python benchmarks/train_step.py            # CPU: Gemma-3-270M + LoRA at 512 tokens, then length / batch sweeps
  python benchmarks/train_step.py --quick    # tiny random Gemma 3, real HH / TL;DR texts: numerics + JSON (CI)
  python benchmarks/train_step.py --model=random:gemma-3-270m --sweep_model= --dtype=bfloat16 --pairs=8   # GPU

Implementations (``--impls``): ``dial_jax`` (``dial_jax.train.step.make_train_step``, built as the training loop
builds it, ``data.packing=none``: the step padded to its length bucket), ``dial_jax_packed`` (``data.packing=
sequences``), ``dial_jax_shared`` (``data.packing=shared_prefix``: packed, each pair's prompt computed once) and
``torch`` (``benchmarks/torch_reference.py``, the step written the way the authors' code does it).

What runs, in order (details in benchmarks/README.md):

1. Matmul peak: a large square matmul in JAX and in PyTorch (float32, or bf16 with --dtype=bfloat16), best of a
   few; the larger of the two is the peak that model FLOPs utilisation (MFU) is measured against. It is measured
   again at the end of the run (a different figure means the machine's load changed).
2. Numerics: dial_jax's jitted ``train_step`` and the PyTorch reference take one step from the same weights (frozen
   backbone from the same HF directory; dial_jax's LoRA adapters, score head and critic copied into the torch
   model; the same gradient-penalty interpolation coefficients) on the same batch, in float32. Source loss, W and
   the reward-model gradient norm must agree to ``--rtol`` / ``--atol``, else nothing is timed.
3. Timing: at the headline point (``--seq_len``, ``--pairs``, ``--model``) and at the sweep points (``--sweep_lengths``
   at ``--pairs``, ``--sweep_pairs`` at ``--seq_len``, ``--sweep_model``), one subprocess per implementation (so
   peak memory is that implementation's) takes warm-up steps (dial_jax: one per distinct shape, i.e. every compile)
   and then timed steps on the same real-data batches: source pairs are HH-RLHF dialogues and target pairs TL;DR
   posts from ``../shared/data/raw``, tokenised with the model's tokenizer and cut to ``max_length`` as training does,
   drawn by ``PairedBatches`` (dial_jax pads a step to its length bucket, ``data.min_bucket``; the reference pads
   each of its four batches to its own longest sequence). Reported: useful (non-pad) tokens / s, model FLOPs of the
   useful tokens / s / peak (MFU), wall and CPU time per step (medians), compile time, peak memory.

Results go to ``--output`` (JSON, rewritten after every point), ``--plot`` (PNG) and stdout (a markdown table).

This file is the driver (flags, then the steps above in order); the work is done in ``machine.py`` (versions, load,
matmul peak), ``random_model.py`` (model specs, random-weight models), ``step_data.py`` (real pairs, batches),
``dial_side.py`` (the dial_jax config and step), ``parity.py`` (step 2), ``points.py`` (one timed point),
``workers.py`` (the timing subprocesses), ``flops.py`` (computed tokens and ``dial_jax.flops`` per implementation)
and ``plots.py`` (table, summary, plot).
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAW_DATA = REPO.parent / "shared" / "data" / "raw"
if str(REPO) not in sys.path:  # this checkout's dial_jax, configs/ and tests/, wherever the script is run from
  sys.path.insert(0, str(REPO))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # GPU: JAX and torch share the card in step 2

from absl import app, flags, logging  # noqa: E402

from benchmarks import machine, parity, plots, points, random_model, step_data, workers  # noqa: E402
from benchmarks.dial_side import Settings  # noqa: E402
from dial_jax.flops import model_flops  # noqa: E402

FLAGS = flags.FlagValues()  # a private registry: importing this module (tests do) clashes with no other absl CLI
flags.DEFINE_string("model", "gemma-3-270m", "Headline model: HF directory, bundled name, or "
                    "random:gemma-3-270m[:LAYERS] (random weights of that shape, written to a temporary HF directory).",
                    flag_values=FLAGS)
flags.DEFINE_string("sweep_model", "random:gemma-3-270m:6", "Model of the sweep points ('' = the headline model).",
                    flag_values=FLAGS)
flags.DEFINE_string("raw_dir", str(RAW_DATA), "Raw data folder (hh-rlhf-harmless/, summarize-from-feedback/).",
                    flag_values=FLAGS)
flags.DEFINE_string("tokenizer", None, "Tokenizer directory for random:* models (default: the bundled gemma-3-270m's).",
                    flag_values=FLAGS)
flags.DEFINE_integer("seq_len", 512, "Headline max_length (texts longer than this keep their end, as in training).",
                     flag_values=FLAGS)
flags.DEFINE_integer("pairs", 2, "Headline pairs per domain per step (train.batch_size).", flag_values=FLAGS)
flags.DEFINE_integer("steps", 5, "Timed steps at the headline point (the median is reported).", flag_values=FLAGS)
flags.DEFINE_list("sweep_lengths", ["128", "256", "512", "1024"], "Length sweep (at --pairs): max_length values.",
                  flag_values=FLAGS)
flags.DEFINE_list("sweep_pairs", ["1", "4"], "Batch sweep (at --seq_len): pairs per domain.", flag_values=FLAGS)
flags.DEFINE_integer("sweep_steps", 2, "Timed steps per sweep point.", flag_values=FLAGS)
flags.DEFINE_integer("pack_row_multiple", 1, "Packed implementations: data.pack_rows_multiple (the row count is "
                     "rounded up to a multiple of this: fewer distinct shapes, fewer compiles).", flag_values=FLAGS)
flags.DEFINE_integer("pack_row_length", 0, "Packed implementations: data.pack_row_length (0 = max_length).",
                     flag_values=FLAGS)
flags.DEFINE_integer("min_bucket", 64, "dial_jax data.min_bucket: padded lengths are powers of two from here.",
                     flag_values=FLAGS)
flags.DEFINE_integer("lora_rank", 64, "LoRA rank (0 = full fine-tuning); alpha = --lora_alpha.", flag_values=FLAGS)
flags.DEFINE_float("lora_alpha", 64.0, "LoRA alpha.", flag_values=FLAGS)
flags.DEFINE_string("remat_policy", "none", "dial_jax model.remat_policy.", flag_values=FLAGS)
flags.DEFINE_string("glibc_tunables", "glibc.malloc.hugetlb=1", "GLIBC_TUNABLES for every timed worker (all "
                    "implementations alike; '' = the environment's). The default makes glibc malloc ask for "
                    "transparent huge pages: XLA:CPU allocates a step's temporaries afresh every step, and with 4 KiB "
                    "pages it spends much of the step in page faults.", flag_values=FLAGS)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype of the timed steps (numerics: float32).",
                  flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Batch sampling seed (train.seed).", flag_values=FLAGS)
flags.DEFINE_float("rtol", 1e-3, "Numerics: |jax - torch| <= atol + rtol * |torch| for source loss, W, grad norm.",
                   flag_values=FLAGS)
flags.DEFINE_float("atol", 1e-5, "Numerics: absolute part of the tolerance.", flag_values=FLAGS)
flags.DEFINE_bool("skip_numerics", False, "Skip step 2 (not recommended).", flag_values=FLAGS)
flags.DEFINE_bool("skip_headline", False, "Time the sweep points only (e.g. to complete an interrupted run).",
                  flag_values=FLAGS)
flags.DEFINE_bool("strict_numerics", True, "Stop before timing when the numerics disagree (else record and go on).",
                  flag_values=FLAGS)
flags.DEFINE_list("impls", ["dial_jax", "dial_jax_packed", "dial_jax_shared", "torch"],
                  "Implementations to time: dial_jax (data.packing=none), dial_jax_packed (data.packing=sequences), "
                  "dial_jax_shared (data.packing=shared_prefix), torch (the reference).", flag_values=FLAGS)
flags.DEFINE_list("sweep_impls", ["dial_jax", "dial_jax_shared", "torch"],
                  "Implementations timed at the sweep points ('' = --impls).", flag_values=FLAGS)
flags.DEFINE_string("from_json", None, "Only print the table and redraw the plot of an existing result JSON.",
                    flag_values=FLAGS)
flags.DEFINE_string("output", None, "JSON path (default benchmarks/results/train_step_<device>[_quick].json).",
                    flag_values=FLAGS)
flags.DEFINE_string("plot", None, "PNG path (default: the JSON path with .png).", flag_values=FLAGS)
flags.DEFINE_bool("quick", False, "Tiny random Gemma 3 + tiny tokenizer, short texts, 2 steps: seconds (CI).",
                  flag_values=FLAGS)
flags.DEFINE_string("worker", None, "Internal: run one timing job described by this JSON file.", flag_values=FLAGS)

QUICK_DEFAULTS = {"model": "quick", "sweep_model": "", "seq_len": 64, "pairs": 2, "steps": 2, "sweep_lengths": [],
                  "sweep_pairs": [], "min_bucket": 16, "lora_rank": 8, "lora_alpha": 16.0}


def settings() -> Settings:
  """The flags that shape the dial_jax step and its batches."""
  return Settings(lora_rank=FLAGS.lora_rank, lora_alpha=FLAGS.lora_alpha, min_bucket=FLAGS.min_bucket,
                  remat_policy=FLAGS.remat_policy, seed=FLAGS.seed, pack_row_multiple=FLAGS.pack_row_multiple,
                  pack_row_length=FLAGS.pack_row_length)


def new_result(gpu: bool) -> dict:
  """The result JSON before anything is measured: command, date, machine and the run's configuration."""
  return {
      "benchmark": "DIAL train step: useful tokens/s, MFU and peak memory, dial_jax vs PyTorch reference",
      "command": " ".join([Path(sys.executable).name, *sys.argv]),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": machine.machine_info(), "device": "gpu" if gpu else "cpu", "complete": False,
      "config": {"model": FLAGS.model, "sweep_model": FLAGS.sweep_model or FLAGS.model, "seq_len": FLAGS.seq_len,
                 "pairs": FLAGS.pairs, "steps": FLAGS.steps, "sweep_lengths": [int(x) for x in FLAGS.sweep_lengths],
                 "sweep_pairs": [int(x) for x in FLAGS.sweep_pairs], "sweep_steps": FLAGS.sweep_steps,
                 "dtype": FLAGS.dtype, "lora_rank": FLAGS.lora_rank, "lora_alpha": FLAGS.lora_alpha,
                 "min_bucket": FLAGS.min_bucket, "remat_policy": FLAGS.remat_policy, "seed": FLAGS.seed,
                 "pack_row_multiple": FLAGS.pack_row_multiple,
                 "pack_row_length": FLAGS.pack_row_length, "glibc_tunables": FLAGS.glibc_tunables,
                 "impls": list(FLAGS.impls), "quick": FLAGS.quick,
                 "data": {"source": "hh-rlhf-harmless/test.jsonl.gz (dialogues)",
                          "target": "summarize-from-feedback/batch13.json + batch18.json (TL;DR posts)"}},
      "flops_formula": " ".join(model_flops.__doc__.split()),
      "numerics": None, "headline": None, "sweep": []}


def run_numerics(model_dir: Path, domains, pad_id: int, gpu: bool) -> dict:
  """Step 2: one step of every dial_jax implementation and of the reference, compared; stops on a disagreement
  (unless --nostrict_numerics)."""
  checked = ["dial_jax"] + [i for i in FLAGS.impls if i in step_data.PACKING and i != "dial_jax"]
  batches = {impl: step_data.make_batches(domains, settings(), pairs=FLAGS.pairs, max_length=FLAGS.seq_len, n=1,
                                          pad_id=pad_id, seed=FLAGS.seed + 1,
                                          packing_mode=step_data.PACKING[impl])[0] for impl in checked}
  numerics = parity.check_numerics(model_dir, batches, settings(), FLAGS.seq_len, FLAGS.pairs, gpu,
                                   rtol=FLAGS.rtol, atol=FLAGS.atol)
  for impl, values in numerics["impls"].items():
    for key, v in values.items():
      logging.info("numerics %s %s: dial_jax %.7g torch %.7g |diff| %.2e%s", impl, key, v["dial_jax"], v["torch"],
                   v["abs_diff"], "" if v["within_tolerance"] else "  OUT OF TOLERANCE")
  return numerics


def run_benchmark(workdir: Path, save) -> dict:
  """Steps 1-3 of the module docstring; ``save(result)`` is called after every stage (partial results survive)."""
  from dial_jax.hf import load

  gpu = machine.on_gpu()
  result = new_result(gpu)
  # 1. The matmul peak that MFU is measured against.
  peak = result["matmul_peak"] = machine.matmul_peak(FLAGS.dtype, gpu)
  logging.info("matmul peak (%s): jax %.1f, torch %.1f GFLOP/s", FLAGS.dtype, peak["jax_gflops"], peak["torch_gflops"])

  # The models (random ones written into workdir) and their real-data pairs, tokenised once per (model, length).
  head_dir = random_model.resolve_model(FLAGS.model, workdir, FLAGS.tokenizer)
  sweep_dir = head_dir
  if FLAGS.sweep_model and (FLAGS.sweep_lengths or FLAGS.sweep_pairs):
    sweep_dir = random_model.resolve_model(FLAGS.sweep_model, workdir, FLAGS.tokenizer)
  domains_cache: dict[tuple, tuple] = {}

  def domains_for(model_dir: Path, max_length: int):
    key = (str(model_dir), max_length)
    if key not in domains_cache:
      tokenizer = load.load_tokenizer(model_dir)
      domains_cache[key] = (step_data.real_domains(FLAGS.raw_dir, tokenizer, max_length), tokenizer.pad_token_id)
    return domains_cache[key]

  head_domains, pad_id = domains_for(head_dir, FLAGS.seq_len)
  # 2. Numerics: dial_jax and the reference agree on one step, or nothing is timed.
  if not FLAGS.skip_numerics:
    numerics = result["numerics"] = run_numerics(head_dir, head_domains, pad_id, gpu)
    save(result)
    if not numerics["ok"]:
      if FLAGS.strict_numerics:
        raise SystemExit("numerics disagree beyond tolerance: not timing (see the values above)")
      logging.warning("numerics disagree beyond tolerance; timing anyway (--nostrict_numerics)")

  # 3. Timing: the headline point, then the sweep points.
  timing = dict(settings=settings(), dtype=FLAGS.dtype, glibc_tunables=FLAGS.glibc_tunables)
  if not FLAGS.skip_headline:
    head = points.run_point("headline", head_dir, FLAGS.seq_len, FLAGS.pairs, FLAGS.steps, head_domains, pad_id,
                            peak, workdir, gpu, FLAGS.impls, **timing)
    head["model"] = random_model.model_label(FLAGS.model)
    result["headline"] = head
    save(result)
  grid = [(length, FLAGS.pairs) for length in map(int, FLAGS.sweep_lengths)]
  grid += [(FLAGS.seq_len, pairs) for pairs in map(int, FLAGS.sweep_pairs) if (FLAGS.seq_len, pairs) not in grid]
  if sweep_dir == head_dir and not FLAGS.skip_headline:  # the headline is already this point
    grid = [g for g in grid if g != (FLAGS.seq_len, FLAGS.pairs)]
  for length, pairs in grid:
    doms, pid = domains_for(sweep_dir, length)
    point = points.run_point(f"sweep_L{length}_p{pairs}", sweep_dir, length, pairs, FLAGS.sweep_steps, doms, pid,
                             peak, workdir, gpu, [i for i in (FLAGS.sweep_impls or FLAGS.impls) if i in FLAGS.impls],
                             **timing)
    point["model"] = random_model.model_label(FLAGS.sweep_model or FLAGS.model)
    result["sweep"].append(point)
    save(result)
  # Measured again at the end: a different figure means the machine's load changed during the run. The larger of
  # the two is the machine's peak; every MFU is restated against it.
  result["matmul_peak_end"] = machine.matmul_peak(FLAGS.dtype, gpu)
  points.restate_mfu(result, max(peak["peak_gflops"], result["matmul_peak_end"]["peak_gflops"]))
  result["complete"] = True
  save(result)
  return result


def main(argv):
  del argv
  if FLAGS.worker:
    workers.run_worker(FLAGS.worker)
    return
  if FLAGS.quick:
    for name, value in QUICK_DEFAULTS.items():
      if not FLAGS[name].present:
        FLAGS[name].value = value
  if FLAGS.from_json:
    output = Path(FLAGS.from_json)
    plots.report(json.loads(output.read_text()), output, Path(FLAGS.plot or output.with_suffix(".png")))
    return
  import jax
  device = "gpu" if jax.default_backend() == "gpu" else "cpu"
  output = Path(FLAGS.output or REPO / "benchmarks" / "results" /
                f"train_step_{device}{'_quick' if FLAGS.quick else ''}.json")
  output.parent.mkdir(parents=True, exist_ok=True)

  def save(result):
    tmp = output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, output)

  with tempfile.TemporaryDirectory(prefix="train_step-") as workdir:
    result = run_benchmark(Path(workdir), save)
  plots.report(result, output, Path(FLAGS.plot or output.with_suffix(".png")))


if __name__ == "__main__":
  app.run(main, flags_parser=lambda argv: FLAGS(flags.FLAGS(argv, known_only=True)))  # absl's own flags, then ours
