r"""Reward-scoring throughput: dial_jax's ``Scorer`` (JAX) vs transformers' ``AutoModelForSequenceClassification``.

  python benchmarks/score_throughput.py                # gemma-3-270m, 64 HH texts x 256 tokens, batch 8
  python benchmarks/score_throughput.py --quick        # tiny random Gemma 3, a few seconds (CI smoke test)

Both sides score the same texts from the same HF directory, in float32, with the same batch size:

* dial_jax: ``Scorer`` (jit, length buckets; all texts have ``--seq_len`` tokens, so one shape, one compile).
  The first batch (compilation) is timed separately and excluded from the throughput.
* PyTorch: ``AutoModelForSequenceClassification.from_pretrained(dir, num_labels=1, attn_implementation="sdpa")``,
  ``eval()``, ``torch.no_grad()``, the tokenizer with ``padding="longest"`` per batch, ``torch.set_num_threads``
  = the cores this process may use. Its first batch is a warm-up, also excluded.

The converted bundled directory has no score head, so both heads would be random: the torch model gets dial_jax's
head copied into ``score.weight``, and the rewards of the two must agree (``--tolerance``) before anything is timed.
Throughput counts the whole ``texts -> rewards`` call (tokenisation included, on both sides); each side is timed
``--repeats`` times, alternating, and the median is reported. Results go to ``--output`` (JSON) and stdout (a
markdown table).

Texts: ``chosen`` dialogues of ``../shared/data/raw/hh-rlhf-harmless/test.jsonl.gz`` (in file order) with at least
``--seq_len`` tokens, cut to exactly ``--seq_len`` tokens (special tokens such as Gemma's <bos> included) by decoding
their first tokens back to text; a cut whose re-tokenisation is not exactly ``--seq_len`` tokens is skipped.
"""
from __future__ import annotations

import datetime
import gzip
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAW_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "raw"
HH_TEST = RAW_DATA / "hh-rlhf-harmless" / "test.jsonl.gz"
if str(REPO) not in sys.path:  # this checkout's dial_jax (and tests/ for --quick), wherever it is run from
  sys.path.insert(0, str(REPO))

from absl import app, flags, logging  # noqa: E402
from benchmarks.common import CompileEvents, machine_busy_s  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "gemma-3-270m", "HF model directory or bundled model name (see dial_jax.hf.load).")
flags.DEFINE_integer("num_texts", 64, "Texts to score per timed pass.")
flags.DEFINE_integer("batch_size", 8, "Texts per forward pass (both implementations).")
flags.DEFINE_integer("seq_len", 256, "Tokens per text (every text has exactly this many).")
flags.DEFINE_integer("repeats", 3, "Timed passes per implementation (alternating); the median is reported.")
flags.DEFINE_float("tolerance", 1e-3, "Largest allowed |reward_jax - reward_torch|; checked before timing.")
flags.DEFINE_string("output", None, "JSON results path (default benchmarks/results/score_throughput[_quick].json).")
flags.DEFINE_bool("quick", False, "Tiny random Gemma 3 (+ tiny tokenizer) in a temp dir, few short texts: seconds.")

QUICK_DEFAULTS = {"num_texts": 8, "batch_size": 4, "seq_len": 32, "repeats": 1}


def hh_dialogues():
  if not HH_TEST.is_file():
    raise FileNotFoundError(f"{HH_TEST} is missing: the benchmark reads ../shared/data/raw beside the checkout")
  with gzip.open(HH_TEST, "rt", encoding="utf-8") as f:
    for line in f:
      yield json.loads(line)["chosen"]


def fixed_length_texts(tokenizer, num_texts: int, seq_len: int) -> tuple[list[str], dict]:
  """``num_texts`` HH dialogues cut to exactly ``seq_len`` tokens (with special tokens), and how they were chosen."""
  texts, seen, too_short, bad_cut = [], 0, 0, 0
  for dialogue in hh_dialogues():
    seen += 1
    full = tokenizer(dialogue, add_special_tokens=True)["input_ids"]
    body = tokenizer(dialogue, add_special_tokens=False)["input_ids"]
    n_special = len(full) - len(body)
    if len(full) < seq_len:
      too_short += 1
      continue
    text = tokenizer.decode(body[:seq_len - n_special])
    if len(tokenizer(text, add_special_tokens=True)["input_ids"]) != seq_len:
      bad_cut += 1  # the cut re-tokenises differently (e.g. mid-word): skip rather than pad
      continue
    texts.append(text)
    if len(texts) == num_texts:
      break
  if len(texts) < num_texts:
    raise ValueError(f"only {len(texts)} HH dialogues have >= {seq_len} tokens and cut cleanly; ask for fewer")
  info = {"source": str(HH_TEST.relative_to(RAW_DATA.parent.parent.parent)), "field": "chosen",
          "selection": f"first {num_texts} dialogues in file order with >= {seq_len} tokens, each cut to its first "
                       f"{seq_len} tokens (special tokens included) and decoded back to text; cuts that do not "
                       f"re-tokenise to exactly {seq_len} tokens skipped",
          "dialogues_read": seen, "skipped_too_short": too_short, "skipped_bad_cut": bad_cut,
          "num_texts": len(texts), "tokens_per_text": seq_len}
  return texts, info


def quick_model_dir(workdir: Path) -> Path:
  """A small random Gemma 3 ``*ForSequenceClassification`` (the parity-test reference) and a tiny BPE tokenizer."""
  import transformers
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  from tokenizers.processors import TemplateProcessing

  from tests.models.hf_reference import VOCAB, make_reference

  corpus = [d for _, d in zip(range(200), hh_dialogues())]
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<eos>", "<bos>",
                                                                                        "<unk>"]))
  tok.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
  tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                                   eos_token="<eos>", unk_token="<unk>")
  model_dir = workdir / "quick-gemma3"
  make_reference("gemma3").save_pretrained(model_dir)
  tokenizer.save_pretrained(model_dir)
  return model_dir


def machine_info() -> dict:
  import jax
  import jaxlib
  import torch
  import transformers
  import flax

  cpu_model = platform.processor()
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu_model = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  mem_gib = None
  try:
    mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
  except (ValueError, OSError, AttributeError):
    pass
  return {
      "cpu_count": os.cpu_count(), "usable_cpus": usable_cpus(), "cpu_model": cpu_model, "memory_gib": mem_gib,
      "platform": platform.platform(), "python": platform.python_version(),
      "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__, "torch": torch.__version__,
      "transformers": transformers.__version__, "jax_devices": [str(d) for d in jax.devices()],
      "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""), "torch_num_threads": torch.get_num_threads(),
  }


def usable_cpus() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def torch_scorer(model_dir: Path, tokenizer, head, batch_size: int):
  """(score(texts) -> np.ndarray, model) with transformers' sequence classifier and dial_jax's head copied in."""
  import numpy as np
  import torch
  import transformers

  transformers.logging.set_verbosity_error()  # "score.weight newly initialized": we overwrite it just below
  model = transformers.AutoModelForSequenceClassification.from_pretrained(
      model_dir, num_labels=1, attn_implementation="sdpa", dtype=torch.float32).eval()
  with torch.no_grad():
    model.score.weight.copy_(torch.from_numpy(np.array(head, np.float32).T))  # flax [D, 1] -> torch [1, D]

  def score(texts):
    out = np.zeros(len(texts), np.float32)
    with torch.no_grad():
      for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), padding="longest", return_tensors="pt")
        out[start:start + batch_size] = model(**batch).logits[:, 0].float().numpy()
    return out

  return score, model




def timed(fn, *args, stats: dict | None = None):
  """(fn(*args), wall seconds); ``stats`` collects this process' CPU seconds and other processes' busy cores."""
  busy, cpu, start = machine_busy_s(), time.process_time(), time.perf_counter()
  out = fn(*args)
  wall, cpu = time.perf_counter() - start, time.process_time() - cpu
  if stats is not None:
    stats.setdefault("wall_s", []).append(wall)
    stats.setdefault("cpu_s", []).append(cpu)
    if busy is not None:
      stats.setdefault("other_busy_cores", []).append(max(machine_busy_s() - busy - cpu, 0.0) / wall)
  return out, wall


def markdown_table(result: dict) -> str:
  j, t = result["dial_jax"], result["torch"]
  n = result["texts"]["num_texts"]
  rows = [
      "| implementation | texts/s | wall s / pass (median) | CPU s / pass (median) | first batch (excluded) |",
      "|---|---:|---:|---:|---:|",
      f"| dial_jax `Scorer` (JAX jit, float32) | {j['texts_per_s']:.2f} | {j['median_s']:.3f} | "
      f"{j['median_cpu_s']:.3f} | {j['first_batch_s']:.2f} s, of which compile {j['compile_s']:.2f} s |",
      f"| transformers `AutoModelForSequenceClassification` (PyTorch, sdpa, float32) | {t['texts_per_s']:.2f} | "
      f"{t['median_s']:.3f} | {t['median_cpu_s']:.3f} | {t['first_batch_s']:.2f} s |",
  ]
  c = result["config"]
  m = result["machine"]
  notes = [
      f"{n} texts x {c['seq_len']} tokens, batch {c['batch_size']}, median of {c['repeats']} passes; "
      f"dial_jax / torch = **{result['ratio_jax_over_torch']:.2f}x** in texts/s "
      f"({t['median_cpu_s'] / j['median_cpu_s']:.2f}x in CPU seconds); "
      f"max |reward diff| = {result['max_abs_reward_diff']:.2e} (reward std {result['reward_std']:.3f}).",
      f"Machine: {m['usable_cpus']} of {m['cpu_count']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, {m['platform']}; "
      f"jax {m['jax']}, torch {m['torch']} ({m['torch_num_threads']} threads), transformers {m['transformers']}; "
      f"{result['date']}.",
  ]
  other = j.get("other_processes_busy_cores", []) + t.get("other_processes_busy_cores", [])
  if other:
    notes.append(f"Other processes kept {statistics.mean(other):.2f} of {m['usable_cpus']} CPUs busy during the timed "
                 f"passes (mean; 0 = quiet machine); load average before start {m['loadavg_before'][0]:.2f}.")
  return "\n".join(rows) + "\n\n" + "\n".join(notes)


def run_benchmark(model_name: str, workdir: Path) -> dict:
  import jax
  import numpy as np
  import torch

  from dial_jax.hf import load
  from dial_jax.inference import Scorer

  threads = usable_cpus()
  load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
  if load_before and load_before[0] > 0.5:
    logging.warning("load average %.2f before starting: other processes compete for the %d CPUs, timings will be "
                    "noisy (see other_processes_busy_cores in the JSON)", load_before[0], threads)
  torch.set_num_threads(threads)
  n, bs, seq_len, repeats = FLAGS.num_texts, FLAGS.batch_size, FLAGS.seq_len, FLAGS.repeats

  model_dir = quick_model_dir(workdir) if FLAGS.quick else load.resolve_model_dir(model_name)
  logging.info("model directory %s", model_dir)
  start = time.perf_counter()
  scorer = Scorer.from_pretrained(model_dir, batch_size=bs, max_length=seq_len)
  jax.block_until_ready(scorer.variables)
  jax_load_s = time.perf_counter() - start
  texts, text_info = fixed_length_texts(scorer.tokenizer, n, seq_len)

  # dial_jax: the first batch compiles (one shape: all texts have seq_len tokens), then a full untimed pass.
  compile_events = CompileEvents()
  jax.monitoring.register_event_duration_secs_listener(compile_events)
  compile_events.take()
  _, jax_first = timed(scorer.score, texts[:bs])
  compile_parts, _ = compile_events.take()
  jax_rewards = scorer.score(texts)

  start = time.perf_counter()
  torch_score, torch_model = torch_scorer(model_dir, scorer.tokenizer, scorer.variables["params"]["score"]["kernel"],
                                          bs)
  torch_load_s = time.perf_counter() - start
  _, torch_first = timed(torch_score, texts[:bs])
  torch_rewards = torch_score(texts)

  diff = float(np.max(np.abs(jax_rewards - torch_rewards)))
  print(f"max |reward_jax - reward_torch| over {n} texts: {diff:.3e} (rewards: mean {jax_rewards.mean():.4f}, "
        f"std {jax_rewards.std():.4f})", flush=True)
  if not diff <= FLAGS.tolerance:
    raise SystemExit(f"rewards disagree: max abs diff {diff:.3e} > tolerance {FLAGS.tolerance}; not timing")

  stats = {"dial_jax": {}, "torch": {}}
  for r in range(repeats):
    _, t_jax = timed(scorer.score, texts, stats=stats["dial_jax"])
    _, t_torch = timed(torch_score, texts, stats=stats["torch"])
    other = stats["dial_jax"].get("other_busy_cores", []) + stats["torch"].get("other_busy_cores", [])
    print(f"pass {r + 1}/{repeats}: dial_jax {t_jax:.2f} s, torch {t_torch:.2f} s"
          + (f" (other processes busy: {statistics.mean(other[-2:]):.2f} of {threads} cores)" if other else ""),
          flush=True)
  _, timing_compiles = compile_events.take()  # the untimed full pass and the timed ones
  jax.monitoring.unregister_event_duration_listener(compile_events)

  def summary(st, first, load_s):
    ts = st["wall_s"]
    med = statistics.median(ts)
    per_batch = med / -(-n // bs)
    out = {"texts_per_s": n / med, "median_s": med, "best_s": min(ts), "times_s": ts, "first_batch_s": first,
           "steady_batch_s": per_batch, "load_s": load_s,
           "process_cpu_s": st["cpu_s"], "median_cpu_s": statistics.median(st["cpu_s"])}
    if "other_busy_cores" in st:
      out["other_processes_busy_cores"] = st["other_busy_cores"]
    return out

  jax_summary = summary(stats["dial_jax"], jax_first, jax_load_s)
  jax_summary["compile_s"] = sum(compile_parts.values())  # trace + lower to MLIR + XLA compile, first batch
  jax_summary["compile_s_parts"] = compile_parts
  jax_summary["compiles_during_timing"] = timing_compiles  # 0 expected: no bucket recompiles
  try:
    jax_summary["compiled_shapes"] = scorer._apply._cache_size()  # 1 expected: no bucket recompiles
  except AttributeError:
    pass
  torch_summary = summary(stats["torch"], torch_first, torch_load_s)
  torch_summary["num_threads"] = torch.get_num_threads()
  torch_summary["attn_implementation"] = torch_model.config._attn_implementation

  return {
      "benchmark": "reward scoring throughput, texts/s (texts -> rewards, tokenisation included)",
      "command": " ".join([Path(sys.executable).name, *sys.argv]),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": {**machine_info(), "loadavg_before": load_before},
      "config": {"model": "quick random gemma3" if FLAGS.quick else model_name, "model_dir": str(model_dir),
                 "num_texts": n, "batch_size": bs, "seq_len": seq_len, "repeats": repeats, "dtype": "float32",
                 "quick": FLAGS.quick},
      "texts": text_info,
      "dial_jax": jax_summary,
      "torch": torch_summary,
      "ratio_jax_over_torch": jax_summary["texts_per_s"] / torch_summary["texts_per_s"],
      "max_abs_reward_diff": diff,
      "reward_mean": float(jax_rewards.mean()),
      "reward_std": float(jax_rewards.std()),
  }


def main(argv):
  del argv
  if FLAGS.quick:
    for name, value in QUICK_DEFAULTS.items():
      if not FLAGS[name].present:
        FLAGS[name].value = value
  output = Path(FLAGS.output or REPO / "benchmarks" / "results" /
                ("score_throughput_quick.json" if FLAGS.quick else "score_throughput.json"))
  with tempfile.TemporaryDirectory(prefix="score_throughput-") as workdir:
    result = run_benchmark(FLAGS.model, Path(workdir))
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(json.dumps(result, indent=1) + "\n")
  print()
  print(markdown_table(result))
  print(f"\nwrote {output}")


if __name__ == "__main__":
  app.run(main)
