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
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAW_DATA = REPO.parent / "shared" / "data" / "raw"
if str(REPO) not in sys.path:  # this checkout's dial_jax, configs/ and tests/, wherever the script is run from
  sys.path.insert(0, str(REPO))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # GPU: JAX and torch share the card in step 2

from absl import app, flags, logging  # noqa: E402
from benchmarks.common import CompileEvents, machine_busy_s  # noqa: E402
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
PARTS = ("source_chosen", "source_rejected", "target_chosen", "target_rejected")
PACKING = {"dial_jax": "none", "dial_jax_packed": "sequences", "dial_jax_shared": "shared_prefix"}  # data.packing
GEMMA3_270M = dict(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                   query_pre_attn_scalar=256, hidden_activation="gelu_pytorch_tanh", pad_token_id=0, bos_token_id=2,
                   eos_token_id=1, rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                                    "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})


# ----------------------------------------------------------------------------------------------------- machine

def usable_cpus() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1



def other_busy_cpus(seconds: float = 2.0) -> float | None:
  """CPUs that other processes kept busy over the next ``seconds`` (this process sleeps meanwhile)."""
  before = machine_busy_s()
  if before is None:
    return None
  time.sleep(seconds)
  return max(machine_busy_s() - before, 0.0) / seconds


def machine_info() -> dict:
  import jax
  import torch
  import transformers
  import flax

  cpu_model = platform.processor()
  try:
    cpu_model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  info = {"cpu_count": os.cpu_count(), "usable_cpus": usable_cpus(), "cpu_model": cpu_model,
          "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
          "platform": platform.platform(), "python": platform.python_version(), "jax": jax.__version__,
          "flax": flax.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
          "jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()],
          "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""), "loadavg_before": list(os.getloadavg()),
          "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
  if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name(0)
  try:
    import peft
    info["peft"] = peft.__version__
  except ImportError:
    pass
  return info


def on_gpu() -> bool:
  import jax
  return jax.default_backend() == "gpu"


def _best_gflops(fn, sync, flop: float, repeats: int = 10) -> float:
  sync(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - start)
  return flop / min(times) / 1e9


def jax_matmul_gflops(dtype: str, gpu: bool) -> float:
  """Best-of-10 GFLOP/s of an n x n x n matmul in JAX (n = 8192 on a GPU, 2048 on a CPU)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  n = 8192 if gpu else 2048
  x = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32),
                  jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
  f = jax.jit(lambda x: jnp.matmul(x, x, precision="highest" if dtype == "float32" else None))
  return _best_gflops(lambda: f(x), jax.block_until_ready, 2 * n**3)


def torch_matmul_gflops(dtype: str, gpu: bool) -> float:
  """The same in PyTorch."""
  import torch

  n = 8192 if gpu else 2048
  t = torch.randn(n, n, generator=torch.Generator().manual_seed(0)).to(
      device="cuda" if gpu else "cpu", dtype=torch.bfloat16 if dtype == "bfloat16" else torch.float32)
  sync = (lambda _: torch.cuda.synchronize()) if gpu else (lambda _: None)
  return _best_gflops(lambda: torch.matmul(t, t), sync, 2 * n**3)


def matmul_peak(dtype: str, gpu: bool) -> dict:
  """Both frameworks' matmul GFLOP/s and the larger one: the peak MFU is measured against."""
  out = {"n": 8192 if gpu else 2048, "dtype": dtype, "jax_gflops": jax_matmul_gflops(dtype, gpu),
         "torch_gflops": torch_matmul_gflops(dtype, gpu)}
  out["peak_gflops"] = max(out["jax_gflops"], out["torch_gflops"])
  return out


# ----------------------------------------------------------------------------------------------------- models

def resolve_model(spec: str, workdir: Path) -> Path:
  """An HF directory for ``spec``: ``quick`` (tiny random Gemma 3), ``random:gemma-3-270m[:LAYERS]``, a bundled
  name or a directory. Random models are written once per spec into ``workdir``."""
  from dial_jax.hf import load

  if spec == "quick":
    path = workdir / "quick-gemma3"
    if not path.exists():
      from tests.helpers import make_tiny_model_dir
      make_tiny_model_dir(path)
    return path
  if spec.startswith("random:"):
    name, _, layers = spec[len("random:"):].partition(":")
    if name != "gemma-3-270m":
      raise ValueError(f"random models: only random:gemma-3-270m[:LAYERS] is known, got {spec!r}")
    path = workdir / spec.replace(":", "_")
    if not path.exists():
      write_random_gemma3(path, int(layers or GEMMA3_270M["num_hidden_layers"]))
    return path
  return load.resolve_model_dir(spec)


def write_random_gemma3(path: Path, layers: int) -> None:
  """A random ``Gemma3TextForSequenceClassification`` of the Gemma-3-270M shape (first ``layers`` layers), plus the
  Gemma tokenizer (``--tokenizer`` or the bundled model's), saved with ``save_pretrained``."""
  import torch
  import transformers
  from dial_jax.hf import load

  tok_dir = FLAGS.tokenizer or load.resolve_model_dir("gemma-3-270m")
  types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)]
  config = transformers.Gemma3TextConfig(**{**GEMMA3_270M, "num_hidden_layers": layers, "layer_types": types})
  config.num_labels = 1
  torch.manual_seed(0)
  model = transformers.AutoModelForSequenceClassification.from_config(config)
  model.save_pretrained(path)
  transformers.AutoTokenizer.from_pretrained(str(tok_dir)).save_pretrained(path)


def hf_config(model_dir: Path) -> dict:
  cfg = json.loads((Path(model_dir) / "config.json").read_text())
  return cfg.get("text_config", cfg)


# ----------------------------------------------------------------------------------------------------- data

def real_domains(tokenizer, max_length: int):
  """(source, target) ``Domain``s: HH-RLHF harmless test dialogues (source) and TL;DR comparisons (target) from
  ``../shared/data/raw``, tokenised and cut to ``max_length`` the way ``dial_jax.data.pipeline.load_domain`` does."""
  from dial_jax.data import pipeline, sources, tokenize

  raw = Path(FLAGS.raw_dir)
  if not raw.is_dir():
    raise FileNotFoundError(f"{raw} is missing: the benchmark reads ../shared/data/raw beside the checkout")
  hh, _ = sources.convert_hh(raw / "hh-rlhf-harmless" / "test.jsonl.gz")
  tldr, _ = sources.convert_comparisons([raw / "summarize-from-feedback" / f for f in ("batch13.json",
                                                                                      "batch18.json")], "tldr")
  out = []
  for name, rows in (("hh-rlhf-harmless", hh), ("tldr", tldr)):
    dom = pipeline.Domain(name=name, kind="pairs")
    for side, field in (("chosen", "response_chosen"), ("rejected", "response_rejected")):
      texts = [tokenize.join(r["prompt"], r[field]) for r in rows]
      setattr(dom, side, tokenize.encode(tokenizer, texts, max_length))
    out.append(dom)
  return tuple(out)


def make_batches(domains, *, pairs: int, max_length: int, n: int, pad_id: int, seed: int,
                 packing_mode: str = "none") -> list[dict]:
  """``n`` steps of dial_jax train batches from ``PairedBatches``, the pipeline training uses: length-bucketed, or
  packed per ``packing_mode`` (the same pairs either way)."""
  from dial_jax.data import batching, pipeline

  source, target = domains
  pb = pipeline.PairedBatches(source, target, batch_size=pairs, grad_accum_steps=1,
                              buckets=batching.bucket_lengths(max_length, min(FLAGS.min_bucket, max_length)),
                              pad_id=pad_id, seed=seed, packing_mode=packing_mode,
                              pack_row_length=FLAGS.pack_row_length, pack_rows_multiple=FLAGS.pack_row_multiple)
  return [pb.batch(step) for step in range(n)]


def sequences_of(batch: dict) -> list[list[int]]:
  """The step's token lists (padded batch), in the step's order."""
  return [batch[f"{p}_ids"][0, i, :int(m)].tolist() for p in PARTS
          for i, m in enumerate(batch[f"{p}_mask"][0].sum(-1))]


def computed_structure(batch: dict, packing_mode: str, row_length: int) -> tuple[list[int], list[tuple]]:
  """(plain sequence lengths, prefix-shared groups (lc, lr, k)) that an implementation computes for ``batch``."""
  from dial_jax.data import packing

  seqs = sequences_of(batch)
  if packing_mode != "shared_prefix":
    return [len(s) for s in seqs], []
  items = packing.make_items(seqs, packing.pair_indices(len(seqs) // 4), row_length, True)
  plain = [len(it.tokens) for it in items if len(it.ends) == 1]
  groups = []
  for it in items:
    if len(it.ends) == 2:
      k = it.branches.count(0)
      groups.append((k + it.branches.count(1), k + it.branches.count(2), k))
  return plain, groups


def batch_stats(batch: dict) -> dict:
  """Useful tokens and the token slots dial_jax (padded) and the reference compute for one batch."""
  lengths = [int(x) for p in PARTS for x in batch[f"{p}_mask"].sum(-1).ravel()]
  rows, padded = batch["source_chosen_ids"].shape[1], batch["source_chosen_ids"].shape[2]
  per_part = [int(batch[f"{p}_mask"].sum(-1).max()) for p in PARTS]
  return {"lengths": lengths, "useful_tokens": sum(lengths), "padded_length": padded,
          "slots": {"dial_jax": 4 * rows * padded, "torch": rows * sum(per_part)}}


def save_batches(batches: list[dict], path: Path) -> None:
  import numpy as np
  np.savez(path, **{f"{i}/{k}": v for i, b in enumerate(batches) for k, v in b.items()})


def load_batches(path: Path) -> list[dict]:
  import numpy as np
  data = np.load(path)
  out: dict[int, dict] = {}
  for key in data.files:
    i, k = key.split("/", 1)
    out.setdefault(int(i), {})[k] = data[key]
  return [out[i] for i in sorted(out)]


# ----------------------------------------------------------------------------------------------------- dial_jax side

def dial_config(model_dir: Path, max_length: int, pairs: int, dtype: str, packing_mode: str = "none"):
  from configs import base

  c = base.get_base_config()
  c.data.packing = packing_mode
  c.data.pack_rows_multiple = FLAGS.pack_row_multiple
  c.data.pack_row_length = FLAGS.pack_row_length
  c.model.name = str(model_dir)
  c.model.dtype = dtype
  c.model.remat_policy = FLAGS.remat_policy
  c.data.max_length = max_length
  c.data.min_bucket = min(FLAGS.min_bucket, max_length)
  c.train.batch_size = pairs
  c.train.seed = FLAGS.seed
  c.train.lr_schedule = "constant"  # the reference's AdamW has a constant learning rate
  if FLAGS.lora_rank > 0:
    c.lora.rank, c.lora.alpha = FLAGS.lora_rank, FLAGS.lora_alpha
  else:
    c.train.trainable = "full"
  return c


def build_dial_jax(config, example_batch: dict, *, donate: bool = True) -> dict:
  """Model, state, jitted step and batch shardings (for batches shaped like ``example_batch``), built as
  ``dial_jax.train.loop`` builds them."""
  from dial_jax import parallel
  from dial_jax.hf import load
  from dial_jax.train import loop, state as state_lib, step as step_lib

  mesh = parallel.make_mesh(config.mesh)
  model, variables, tokenizer, _ = load.build_model(config)
  tx, critic_tx = state_lib.make_optimizer(config), state_lib.make_critic_optimizer(config)
  critic = state_lib.make_critic(config)
  shardings = parallel.variable_shardings(loop.abstract_variables(model), mesh)
  state, state_shardings = state_lib.create_train_state(
      variables, config, model.config.num_layers, model.config.hidden_size, tx, critic_tx, shardings, mesh)
  del variables
  batch_shardings = parallel.batch_shardings({k: v.shape for k, v in example_batch.items()}, mesh)
  step = step_lib.make_train_step(model, critic, tx, critic_tx, config, state_shardings=state_shardings,
                                  batch_sharding=batch_shardings, donate=donate)
  return {"model": model, "state": state, "step": step, "batch_shardings": batch_shardings, "tokenizer": tokenizer}


def gp_coefficients(rng, critic_iter: int, n: int):
  """The interpolation coefficients dial_jax's step draws: ``uniform(fold_in(fold_in(split(rng)[1], micro=0), i))``."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  _, step_rng = jax.random.split(rng)
  micro = jax.random.fold_in(step_rng, 0)
  return [np.asarray(jax.random.uniform(jax.random.fold_in(micro, i), (n, 1), jnp.float32)) for i in range(critic_iter)]


def torch_hparams(config) -> dict:
  t, d = config.train, config.dial
  return dict(learning_rate=t.learning_rate, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
              critic_learning_rate=d.critic_learning_rate, critic_weight_decay=d.critic_weight_decay,
              lambda_=d.lambda_, gamma=d.gamma, critic_iter=d.critic_iter)


def check_numerics(model_dir: Path, batches: dict[str, dict], max_length: int, pairs: int, gpu: bool) -> dict:
  """One float32 step of each implementation from identical weights on the same pairs (``batches``: each dial_jax
  implementation's batch, ``dial_jax``'s padded one first, which the reference also takes); the three figures of
  every dial_jax implementation compared with the reference's."""
  import jax
  import torch

  import torch_reference as tr
  from dial_jax import parallel

  jax.config.update("jax_default_matmul_precision", "highest")
  batch = batches["dial_jax"]
  jax_ms = {}
  for impl, impl_batch in batches.items():
    config = dial_config(model_dir, max_length, pairs, "float32", PACKING[impl])
    built = build_dial_jax(config, impl_batch, donate=False)
    model, state = built["model"], built["state"]
    trainable, critic_vars, rng = jax.device_get((state.trainable, state.critic, state.rng))
    _, metrics = built["step"](state, parallel.global_batch(impl_batch, built["batch_shardings"]))
    jax_ms[impl] = {k: float(v) for k, v in jax.device_get(metrics).items()}
    del state, built

  device = "cuda" if gpu else "cpu"
  lora = trainable.get("lora") if config.train.trainable == "lora" else None
  tmodel = tr.load_model(model_dir, lora_rank=config.lora.rank if lora else 0, lora_alpha=config.lora.alpha,
                         lora_targets=tuple(config.lora.targets), score_weight=trainable["params"]["score"]["kernel"],
                         device="cpu")
  if lora:
    tr.copy_lora_from_dial_jax(tmodel, lora)
  tcritic = tr.Critic(model.config.hidden_size, tuple(config.dial.critic_widths), config.dial.critic_activation)
  tr.copy_critic_from_dial_jax(tcritic, critic_vars["params"])
  tmodel, tcritic = tmodel.to(device), tcritic.to(device)
  ref = tr.DialStep(tmodel, tcritic, **torch_hparams(config))
  n = 2 * pairs  # min(source rows, target rows)
  alphas = [torch.from_numpy(a.copy()).to(device) for a in gp_coefficients(rng, config.dial.critic_iter, n)]
  parts = {p: tr.trim(batch[f"{p}_ids"][0], batch[f"{p}_mask"][0], device) for p in PARTS}
  torch_m = ref.step(parts, alphas=alphas)
  del tmodel, tcritic, ref

  out = {"dtype": "float32", "rtol": FLAGS.rtol, "atol": FLAGS.atol, "impls": {}, "ok": True}
  for impl, jax_m in jax_ms.items():
    values = out["impls"][impl] = {}
    for key in ("source_loss", "wasserstein", "grad_norm", "loss", "critic_loss", "gradient_penalty"):
      a, b = jax_m[key], torch_m[key]
      diff = abs(a - b)
      within = diff <= FLAGS.atol + FLAGS.rtol * abs(b)
      checked = key in ("source_loss", "wasserstein", "grad_norm")
      values[key] = {"dial_jax": a, "torch": b, "abs_diff": diff, "rel_diff": diff / max(abs(b), 1e-30),
                     "checked": checked, "within_tolerance": bool(within)}
      if checked and not within:
        out["ok"] = False
  out["values"] = out["impls"]["dial_jax"]
  out["batch"] = {k: v for k, v in batch_stats(batch).items() if k != "lengths"}
  return out


# ----------------------------------------------------------------------------------------------------- workers


def rss_mib(field: str = "VmRSS") -> float:
  """This process' resident memory (``VmRSS``) or its high-water mark (``VmHWM``), MiB. (``ru_maxrss`` is not used: on
  Linux a child inherits its parent's value through fork and exec.)"""
  try:
    for line in Path("/proc/self/status").read_text().splitlines():
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024
  except OSError:
    pass
  return float("nan")


def timed_steps(run_step, batches, sync) -> list[dict]:
  """Wall and CPU seconds of ``run_step(batch)`` per batch, and how busy other processes kept the CPUs."""
  out = []
  for batch in batches:
    busy, cpu, start = machine_busy_s(), time.process_time(), time.perf_counter()
    sync(run_step(batch))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    row = {"wall_s": wall, "cpu_s": cpu}
    if busy is not None:
      row["other_busy_cpus"] = max(machine_busy_s() - busy - cpu, 0.0) / wall
    out.append(row)
    logging.info("  step: %.3f s wall, %.3f s CPU", wall, cpu)
  return out


def worker_dial_jax(spec: dict) -> dict:
  """dial_jax's jitted step, with the data.packing of ``spec["impl"]``."""
  import jax

  from dial_jax import parallel

  if spec["dtype"] == "float32":
    jax.config.update("jax_default_matmul_precision", "highest")  # true float32 on GPUs too (no TF32), like torch
  packed = PACKING[spec["impl"]] != "none"
  batches = load_batches(Path(spec["batches"][spec["impl"]]))  # PairedBatches' output: padded or packed host-side
  config = dial_config(Path(spec["model_dir"]), spec["max_length"], spec["pairs"], spec["dtype"], PACKING[spec["impl"]])
  start = time.perf_counter()
  built = build_dial_jax(config, batches[0])
  jax.block_until_ready(built["state"])
  setup_s, setup_rss = time.perf_counter() - start, rss_mib()
  shape_of = (lambda b: b["packed_ids"].shape[1]) if packed else (lambda b: b["source_chosen_ids"].shape[-1])
  put = lambda b: parallel.global_batch(b, built["batch_shardings"])
  warm, timed = batches[:spec["warmup"]], batches[spec["warmup"]:]
  holder = {"state": built.pop("state")}
  step = built["step"]

  def run(batch):
    holder["state"], metrics = step(holder["state"], put(batch))
    return metrics

  sync = jax.block_until_ready
  events = CompileEvents()
  jax.monitoring.register_event_duration_secs_listener(events)
  # Warm-up: the first batch of every shape the timed batches use (padded length, or packed rows): all compiles.
  seen, warmup = set(), []
  for batch in warm + timed:
    if shape_of(batch) in seen:
      continue
    seen.add(shape_of(batch))
    (row,) = timed_steps(run, [batch], sync)
    row["compile_s_parts"], row["compiles"] = events.take()
    row["compile_s"] = sum(row["compile_s_parts"].values())
    row["shape"] = int(shape_of(batch))
    warmup.append(row)
  steps = timed_steps(run, timed, sync)
  _, compiles_during_timing = events.take()
  jax.monitoring.unregister_event_duration_listener(events)
  out = {"setup_s": setup_s, "warmup": warmup, "steps": steps, "compiles_during_timing": compiles_during_timing,
         "compile_s": sum(w["compile_s"] for w in warmup), "setup_rss_mib": setup_rss,
         "peak_rss_mib": rss_mib("VmHWM"), "shape_kind": "packed rows" if packed else "padded length"}
  dev = jax.devices()[0]
  if dev.platform == "gpu":
    stats = dev.memory_stats() or {}
    out["peak_device_mib"] = stats.get("peak_bytes_in_use", float("nan")) / 2**20
  out["matmul_gflops"] = jax_matmul_gflops(spec["dtype"], spec["gpu"])  # this framework, just after the steps
  return out


def worker_torch(spec: dict) -> dict:
  import torch

  import torch_reference as tr

  gpu = spec["gpu"]
  device = "cuda" if gpu else "cpu"
  if not gpu:
    torch.set_num_threads(usable_cpus())
  batches = load_batches(Path(spec["batches"]["torch"]))
  warm, timed = batches[:spec["warmup"]], batches[spec["warmup"]:]
  start = time.perf_counter()
  h = spec["hparams"]
  model = tr.load_model(spec["model_dir"], lora_rank=h["lora_rank"], lora_alpha=h["lora_alpha"],
                        lora_targets=h["lora_targets"], device=device)
  critic = tr.Critic(h["hidden_size"], h["critic_widths"], h["critic_activation"]).to(device)
  ref = tr.DialStep(model, critic, **h["step"],
                    autocast_dtype=torch.bfloat16 if spec["dtype"] == "bfloat16" else None)
  setup_s, setup_rss = time.perf_counter() - start, rss_mib()

  def run(batch):
    return ref.step({p: tr.trim(batch[f"{p}_ids"][0], batch[f"{p}_mask"][0], device) for p in PARTS})

  sync = (lambda _: torch.cuda.synchronize()) if gpu else (lambda _: None)
  if gpu:
    torch.cuda.reset_peak_memory_stats()
  warmup = timed_steps(run, warm, sync)
  steps = timed_steps(run, timed, sync)
  out = {"setup_s": setup_s, "warmup": warmup, "steps": steps, "compile_s": 0.0, "setup_rss_mib": setup_rss,
         "peak_rss_mib": rss_mib("VmHWM"), "num_threads": torch.get_num_threads(),
         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
         "other_busy_cpus_before": spec.get("other_busy_cpus_before"),
         "attn_implementation": model.config._attn_implementation}
  if gpu:
    out["peak_device_mib"] = torch.cuda.max_memory_allocated() / 2**20
  out["matmul_gflops"] = torch_matmul_gflops(spec["dtype"], gpu)  # this framework, just after the steps
  return out


def run_worker(spec_path: str) -> None:
  spec = json.loads(Path(spec_path).read_text())
  sys.path.insert(0, str(Path(__file__).resolve().parent))
  result = (worker_torch if spec["impl"] == "torch" else worker_dial_jax)(spec)
  result.setdefault("peak_rss_mib", rss_mib("VmHWM"))
  Path(spec["output"]).write_text(json.dumps(result))


def spawn_worker(spec: dict, workdir: Path) -> dict:
  """Run one timing job in a fresh interpreter (its own peak memory) and return its result."""
  name = f"{spec['impl']}_{spec['tag']}"
  spec = {**spec, "output": str(workdir / f"{name}.result.json")}
  env = dict(os.environ)
  if FLAGS.glibc_tunables:
    env["GLIBC_TUNABLES"] = FLAGS.glibc_tunables
  if spec["impl"] == "torch" and not spec["gpu"] and "OMP_WAIT_POLICY" not in env:
    # libgomp's default busy-waiting makes torch's multi-threaded ops crawl when another process holds a core (seen
    # here: 2-5x slower steps on the 270M model, 100x on a tiny one), while on an idle machine it is ~20% faster
    # than passive waiting. So the reference gets whichever suits the machine's load right now.
    busy = other_busy_cpus()
    env["OMP_WAIT_POLICY"] = "PASSIVE" if busy is not None and busy > 0.3 else "ACTIVE"
    spec["other_busy_cpus_before"] = busy
  spec_path = workdir / f"{name}.spec.json"
  spec_path.write_text(json.dumps(spec))
  logging.info("%s: starting worker", name)
  proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), f"--worker={spec_path}"],
                        capture_output=True, text=True, env=env)
  if proc.returncode != 0:
    raise RuntimeError(f"worker {name} failed (status {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                       f"{proc.stderr[-5000:]}")
  return json.loads(Path(spec["output"]).read_text())


# ----------------------------------------------------------------------------------------------------- points

def summarize(result: dict, timed_stats: list[dict], flops: list[float], peak_gflops: float) -> dict:
  steps = result["steps"]
  tok_s = [s["useful_tokens"] / r["wall_s"] for s, r in zip(timed_stats, steps)]
  mfu = [f / r["wall_s"] / (peak_gflops * 1e9) for f, r in zip(flops, steps)]
  out = {"tokens_per_s": statistics.median(tok_s), "mfu": statistics.median(mfu),
         "mfu_vs_own_matmul": statistics.median(f / r["wall_s"] / (result["matmul_gflops"] * 1e9)
                                                for f, r in zip(flops, steps)) if "matmul_gflops" in result else None,
         "median_step_s": statistics.median(r["wall_s"] for r in steps),
         "median_step_cpu_s": statistics.median(r["cpu_s"] for r in steps),
         "tokens_per_cpu_s": statistics.median(s["useful_tokens"] / r["cpu_s"] for s, r in zip(timed_stats, steps)),
         "achieved_gflops": statistics.median(f / r["wall_s"] / 1e9 for f, r in zip(flops, steps)),
         "peak_memory_mib": result.get("peak_device_mib", result["peak_rss_mib"]),
         "memory_kind": "device peak_bytes_in_use / max_memory_allocated" if "peak_device_mib" in result
                        else "process peak RSS (ru_maxrss)",
         "tokens_per_s_per_step": tok_s, "mfu_per_step": mfu}
  other = [r["other_busy_cpus"] for r in steps if "other_busy_cpus" in r]
  if other:
    out["other_processes_busy_cpus"] = statistics.mean(other)
  return out


def run_point(tag: str, model_dir: Path, max_length: int, pairs: int, steps: int, domains, pad_id: int,
              peak: dict, workdir: Path, gpu: bool, impls) -> dict:
  """Time every implementation at one (model, max_length, pairs) point on the same real-data batches."""
  import numpy as np

  warmup = 1
  batch_files, slots, flops, computed = {}, {}, {}, {}
  cfg = hf_config(model_dir)
  config = dial_config(model_dir, max_length, pairs, FLAGS.dtype)
  targets = tuple(config.lora.targets) if FLAGS.lora_rank > 0 else ()
  for impl, mode in PACKING.items():  # every dial_jax layout of the same pairs (cheap), so the stats cover all
    batches = make_batches(domains, pairs=pairs, max_length=max_length, n=warmup + steps, pad_id=pad_id,
                           seed=FLAGS.seed, packing_mode=mode)
    batch_files[impl] = str(workdir / f"batches_{tag}_{impl}.npz")
    save_batches(batches, Path(batch_files[impl]))
    if mode == "none":
      padded = batches
      stats = [batch_stats(b) for b in padded]
      slots["dial_jax"] = [s["slots"]["dial_jax"] for s in stats[warmup:]]
      slots["torch"] = [s["slots"]["torch"] for s in stats[warmup:]]
    else:
      slots[impl] = [int(b["packed_ids"].size) for b in batches[warmup:]]
  batch_files["torch"] = batch_files["dial_jax"]
  timed_stats = stats[warmup:]
  for impl in (*PACKING, "torch"):
    counted = []
    for b in padded[warmup:]:
      plain, groups = computed_structure(b, PACKING.get(impl, "none"), FLAGS.pack_row_length or max_length)
      counted.append(model_flops(cfg, plain, groups=groups, lora_rank=max(FLAGS.lora_rank, 0), lora_targets=targets,
                                 trainable=config.train.trainable))
    flops[impl] = [c["total"] for c in counted]
    computed[impl] = [c["tokens"] for c in counted]
  useful = sum(s["useful_tokens"] for s in timed_stats)
  spec = {"tag": tag, "model_dir": str(model_dir), "max_length": max_length, "pairs": pairs, "dtype": FLAGS.dtype,
          "batches": batch_files, "warmup": warmup, "gpu": gpu, "pad_id": pad_id,
          "pack_row_multiple": FLAGS.pack_row_multiple,
          "hparams": {"lora_rank": max(FLAGS.lora_rank, 0), "lora_alpha": FLAGS.lora_alpha, "lora_targets": targets,
                      "hidden_size": cfg["hidden_size"], "critic_widths": list(config.dial.critic_widths),
                      "critic_activation": config.dial.critic_activation, "step": torch_hparams(config)}}
  point = {"tag": tag, "model": str(model_dir.name), "max_length": max_length, "pairs_per_domain": pairs,
           "sequences_per_step": 4 * pairs, "timed_steps": steps,
           "useful_tokens_per_step": [s["useful_tokens"] for s in timed_stats],
           "mean_useful_length": float(np.mean([l for s in timed_stats for l in s["lengths"]])),
           "dial_jax_padded_lengths": [s["padded_length"] for s in timed_stats],
           "computed_tokens_per_step": computed,
           "slots_per_step": slots,
           "useful_fraction": {impl: sum(computed[impl]) / sum(slots[impl]) for impl in slots},
           "slots_per_useful_token": {impl: sum(slots[impl]) / useful for impl in slots},
           "model_flops_per_step": flops, "impls": {}}
  for impl in impls:
    result = spawn_worker({**spec, "impl": impl}, workdir)
    point["impls"][impl] = {**summarize(result, timed_stats, flops[impl], peak["peak_gflops"]), "raw": result}
    s = point["impls"][impl]
    logging.info("%s %s: %.1f useful tokens/s, MFU %.1f%%, step %.2f s, peak memory %.0f MiB", tag, impl,
                 s["tokens_per_s"], 100 * s["mfu"], s["median_step_s"], s["peak_memory_mib"])
  if "torch" in point["impls"]:
    t = point["impls"]["torch"]
    for impl, j in point["impls"].items():
      if impl != "torch":
        j["ratio_over_torch"] = j["tokens_per_s"] / t["tokens_per_s"]
        j["ratio_over_torch_cpu_time"] = j["tokens_per_cpu_s"] / t["tokens_per_cpu_s"]
  return point


# ----------------------------------------------------------------------------------------------------- report

def _num(x: float) -> str:
  return f"{x:,.0f}" if x >= 1000 else f"{x:.1f}"


def slots_per_useful(point: dict, impl: str) -> str:
  if "slots_per_useful_token" in point:
    return f"{point['slots_per_useful_token'].get(impl, float('nan')):.2f}"
  return f"{1 / point['useful_fraction'].get(impl, 1.0):.2f}"  # older files: 1 / useful fraction, the same figure


def table(points: list[dict]) -> str:
  rows = ["| model | max len | pairs/domain | implementation | useful tok/s | MFU (vs own matmul) | step s (median) | "
          "useful tok / CPU s | computed slots / useful token | peak memory MiB | compile s (torch: first step) | "
          "tok/s vs torch |",
          "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for p in points:
    for impl, s in p["impls"].items():
      raw = s["raw"]
      first = raw["compile_s"] if impl != "torch" else (raw["warmup"][0]["wall_s"] if raw["warmup"] else 0.0)
      ratio = f"**{s['ratio_over_torch']:.2f}x**" if "ratio_over_torch" in s else ""
      mfu = f"{100 * s['mfu']:.1f}%" + (f" ({100 * s['mfu_vs_own_matmul']:.0f}%)" if s.get("mfu_vs_own_matmul") else "")
      rows.append(f"| {p['model']} | {p['max_length']} | {p['pairs_per_domain']} | {impl} | {_num(s['tokens_per_s'])} | "
                  f"{mfu} | {s['median_step_s']:.3g} | {_num(s['tokens_per_cpu_s'])} | "
                  f"{slots_per_useful(p, impl)} | {s['peak_memory_mib']:.0f} | {first:.1f} | {ratio} |")
  return "\n".join(rows)


def plot(result: dict, path: Path, title: str) -> None:
  """Useful tokens/s against max_length (length sweep) and against pairs per domain (batch sweep)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cfg = result["config"]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
  for ax, (x_key, fixed_key, fixed) in zip(axes, (("max_length", "pairs_per_domain", cfg["pairs"]),
                                                  ("pairs_per_domain", "max_length", cfg["seq_len"]))):
    series: dict[tuple, list] = {}
    sweep_models = {p["model"] for p in result["sweep"]}
    head = [result["headline"]] if result["headline"] and (result["headline"]["model"] in sweep_models
                                                           or not result["sweep"]) else []
    for p in result["sweep"] + head:
      if p[fixed_key] != fixed:
        continue
      for impl, st in p["impls"].items():
        series.setdefault((p["model"], impl), []).append((p[x_key], st["tokens_per_s"]))
    for (model, impl), xy in sorted(series.items()):
      xy.sort()
      ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", linestyle="--" if impl == "torch" else "-",
              label=f"{impl} ({model})")
    ax.set_xscale("log", base=2)
    ticks = sorted({x for xy in series.values() for x, _ in xy})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel({"max_length": f"max_length (tokens), {fixed} pairs/domain",
                   "pairs_per_domain": f"pairs per domain, max_length {fixed}"}[x_key])
    ax.set_ylabel("useful (non-pad) tokens / s")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run_benchmark(workdir: Path, save) -> dict:
  """Steps 1-3 of the module docstring; ``save(result)`` is called after every stage (partial results survive)."""
  from dial_jax.hf import load

  sys.path.insert(0, str(Path(__file__).resolve().parent))
  gpu = on_gpu()
  result = {
      "benchmark": "DIAL train step: useful tokens/s, MFU and peak memory, dial_jax vs PyTorch reference",
      "command": " ".join([Path(sys.executable).name, *sys.argv]),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": machine_info(), "device": "gpu" if gpu else "cpu", "complete": False,
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
  peak = result["matmul_peak"] = matmul_peak(FLAGS.dtype, gpu)
  logging.info("matmul peak (%s): jax %.1f, torch %.1f GFLOP/s", FLAGS.dtype, peak["jax_gflops"], peak["torch_gflops"])

  head_dir = resolve_model(FLAGS.model, workdir)
  sweep_dir = head_dir
  if FLAGS.sweep_model and (FLAGS.sweep_lengths or FLAGS.sweep_pairs):
    sweep_dir = resolve_model(FLAGS.sweep_model, workdir)
  domains_cache: dict[tuple, tuple] = {}

  def domains_for(model_dir: Path, max_length: int):
    key = (str(model_dir), max_length)
    if key not in domains_cache:
      tokenizer = load.load_tokenizer(model_dir)
      domains_cache[key] = (real_domains(tokenizer, max_length), tokenizer.pad_token_id)
    return domains_cache[key]

  head_domains, pad_id = domains_for(head_dir, FLAGS.seq_len)
  if not FLAGS.skip_numerics:
    checked = ["dial_jax"] + [i for i in FLAGS.impls if i in PACKING and i != "dial_jax"]
    batches = {impl: make_batches(head_domains, pairs=FLAGS.pairs, max_length=FLAGS.seq_len, n=1, pad_id=pad_id,
                                  seed=FLAGS.seed + 1, packing_mode=PACKING[impl])[0] for impl in checked}
    numerics = result["numerics"] = check_numerics(head_dir, batches, FLAGS.seq_len, FLAGS.pairs, gpu)
    save(result)
    for impl, values in numerics["impls"].items():
      for key, v in values.items():
        logging.info("numerics %s %s: dial_jax %.7g torch %.7g |diff| %.2e%s", impl, key, v["dial_jax"], v["torch"],
                     v["abs_diff"], "" if v["within_tolerance"] else "  OUT OF TOLERANCE")
    if not numerics["ok"]:
      if FLAGS.strict_numerics:
        raise SystemExit("numerics disagree beyond tolerance: not timing (see the values above)")
      logging.warning("numerics disagree beyond tolerance; timing anyway (--nostrict_numerics)")

  if not FLAGS.skip_headline:
    head = run_point("headline", head_dir, FLAGS.seq_len, FLAGS.pairs, FLAGS.steps, head_domains, pad_id, peak,
                     workdir, gpu, FLAGS.impls)
    head["model"] = model_label(FLAGS.model)
    result["headline"] = head
    save(result)
  grid = [(length, FLAGS.pairs) for length in map(int, FLAGS.sweep_lengths)]
  grid += [(FLAGS.seq_len, pairs) for pairs in map(int, FLAGS.sweep_pairs) if (FLAGS.seq_len, pairs) not in grid]
  if sweep_dir == head_dir and not FLAGS.skip_headline:  # the headline is already this point
    grid = [g for g in grid if g != (FLAGS.seq_len, FLAGS.pairs)]
  for length, pairs in grid:
    doms, pid = domains_for(sweep_dir, length)
    point = run_point(f"sweep_L{length}_p{pairs}", sweep_dir, length, pairs, FLAGS.sweep_steps, doms, pid, peak,
                      workdir, gpu, [i for i in (FLAGS.sweep_impls or FLAGS.impls) if i in FLAGS.impls])
    point["model"] = model_label(FLAGS.sweep_model or FLAGS.model)
    result["sweep"].append(point)
    save(result)
  # Measured again at the end: a different figure means the machine's load changed during the run. The larger of
  # the two is the machine's peak; every MFU is restated against it.
  result["matmul_peak_end"] = matmul_peak(FLAGS.dtype, gpu)
  restate_mfu(result, max(peak["peak_gflops"], result["matmul_peak_end"]["peak_gflops"]))
  result["complete"] = True
  save(result)
  return result


def restate_mfu(result: dict, peak_gflops: float) -> None:
  """Recompute every point's MFU against ``peak_gflops`` (recorded as ``mfu_peak_gflops``)."""
  for point in [result["headline"], *result["sweep"]]:
    if not point:
      continue
    for impl, st in point["impls"].items():
      st["mfu_per_step"] = [f / r["wall_s"] / (peak_gflops * 1e9)
                            for f, r in zip(flops_of(point, impl), st["raw"]["steps"])]
      st["mfu"] = statistics.median(st["mfu_per_step"])
  result["mfu_peak_gflops"] = peak_gflops


def flops_of(point: dict, impl: str) -> list[float]:
  """An implementation's model FLOPs per timed step (older result files: one list for all implementations)."""
  f = point["model_flops_per_step"]
  return f[impl] if isinstance(f, dict) else f


def model_label(spec: str) -> str:
  if spec == "quick":
    return "tiny random gemma3"
  if spec.startswith("random:"):
    name, _, layers = spec[len("random:"):].partition(":")
    return f"{name}-shaped, random" + (f", {layers} layers" if layers else "")
  return Path(spec).name


def main(argv):
  del argv
  if FLAGS.worker:
    run_worker(FLAGS.worker)
    return
  if FLAGS.quick:
    for name, value in QUICK_DEFAULTS.items():
      if not FLAGS[name].present:
        FLAGS[name].value = value
  if FLAGS.from_json:
    report(json.loads(Path(FLAGS.from_json).read_text()), Path(FLAGS.from_json))
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
  report(result, output)


def report(result: dict, output: Path) -> None:
  """Markdown table and summary lines on stdout, the PNG beside the JSON (or at --plot)."""
  points = [p for p in [result["headline"], *result["sweep"]] if p]
  png = Path(FLAGS.plot or output.with_suffix(".png"))
  m, c = result["machine"], result["config"]
  title = (f"DIAL train step, {c['dtype']}, LoRA r={c['lora_rank']}: "
           f"{m.get('gpu') or m['cpu_model']} ({result['date'][:10]})")
  if points:
    plot(result, png, title)
    print()
    print(table(points))
  other = [s["other_processes_busy_cpus"] for p in points for s in p["impls"].values()
           if "other_processes_busy_cpus" in s]
  print(f"\n`{result['command']}` on {result['date']}; {m.get('gpu') or m['cpu_model']}, {m['usable_cpus']} of "
        f"{m['cpu_count']} CPUs, {m['memory_gib']} GiB; jax {m['jax']}, torch {m['torch']}, transformers "
        f"{m['transformers']}, peft {m.get('peft')}; {c['dtype']}, LoRA r={c['lora_rank']} alpha={c['lora_alpha']}."
        + (f" Other processes kept {statistics.mean(other):.2f} CPUs busy during the timed steps (mean)." if other
           else "") + ("" if result.get("complete", True) else " INCOMPLETE RUN (partial results)."))
  if result["numerics"]:
    by_impl = result["numerics"].get("impls") or {"dial_jax": result["numerics"]["values"]}
    for impl, v in by_impl.items():
      print(f"\nnumerics, {impl} vs torch (float32, one step, same weights and pairs): " + ", ".join(
          f"{k} {v[k]['dial_jax']:.6g} vs {v[k]['torch']:.6g} (|diff| {v[k]['abs_diff']:.1e})"
          for k in ("source_loss", "wasserstein", "grad_norm")))
  end = result.get("matmul_peak_end")
  print(f"matmul peak {result['matmul_peak']['peak_gflops']:.1f} GFLOP/s ({result['matmul_peak']['dtype']}; jax "
        f"{result['matmul_peak']['jax_gflops']:.1f}, torch {result['matmul_peak']['torch_gflops']:.1f})"
        + (f", {end['peak_gflops']:.1f} when measured again at the end" if end else "")
        + (f"; MFU against {result['mfu_peak_gflops']:.1f}" if "mfu_peak_gflops" in result else "")
        + f"; wrote {output} and {png}")


if __name__ == "__main__":
  app.run(main, flags_parser=lambda argv: FLAGS(flags.FLAGS(argv, known_only=True)))  # absl's own flags, then ours
