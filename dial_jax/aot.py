r"""Compile a config's real train and eval steps for a TPU slice on this machine: no TPU and no weights needed.

  python -m dial_jax.aot --config=configs/few_shot.py:paper --topology=v5e-16
  python -m dial_jax.aot --config=configs/few_shot.py:paper --topology=v4-8 --config.mesh.data=1 \
      --config.mesh.fsdp=-1 --config.model.remat_policy=dots --output=aot.json

The backbone's ``config.json`` alone gives the parameter shapes (``dial_jax/hf/model_configs`` ships it for
``google/gemma-2b``, ``gemma-3-270m`` and ``smollm2-135m``; a local HF directory works too). The parameters,
optimizer state and batch are abstract (``jax.ShapeDtypeStruct``), the mesh spans the slice's compile-only TPU
devices (``jax.experimental.topologies``, libtpu: ``pip install -e '.[tpu]'``), and the step is the one
``dial_jax.main`` runs, with its shardings. The batch is the worst case the data pipeline can produce: every text
``data.max_length`` tokens with no prompt shared between chosen and rejected.

Reported per chip (XLA's accounting of the compiled program): argument, output, temporary and total bytes against
the chip's HBM, and whether the step fits; FLOPs per step (XLA's count of the compiled program on all chips) and the
model FLOPs (``dial_jax.flops``, useful work only); the roofline lower bound of the step time, FLOPs / (chips x bf16
peak). XLA's cost analysis counts a loop body once, so the per-micro-batch part is multiplied by
``train.grad_accum_steps`` (the critic's inner loop, a few small matmuls, is not). Exit status 1 when a step does
not fit or the config cannot run on the slice (each reason printed on one line), 0 otherwise.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dial_jax import cli_logging  # noqa: F401  (first: quiets library INFO logs)
from dial_jax import config as config_lib
from dial_jax import flops as flops_lib
from dial_jax import parallel, tpu_slices
from dial_jax.data import batching, pipeline
from dial_jax.hf import load
from dial_jax.inference import Scorer
from dial_jax.models.families import decoder_config_from_hf
from dial_jax.models.reward import RewardModel
from dial_jax.train import state as state_lib
from dial_jax.train import step as step_lib

MODEL_CONFIGS = Path(__file__).resolve().parent / "hf" / "model_configs"
GIB = 2**30


def model_config_dir(name: str) -> Path:
  """A directory with the backbone's ``config.json``: a local HF directory, or the copy shipped for a hub id or a
  bundled name (``google/gemma-2b`` -> ``model_configs/google--gemma-2b``)."""
  path = Path(name).expanduser()
  if (path / "config.json").is_file():
    return path
  shipped = MODEL_CONFIGS / name.replace("/", "--")
  if (shipped / "config.json").is_file():
    return shipped
  known = sorted(p.name.replace("--", "/") for p in MODEL_CONFIGS.iterdir() if (p / "config.json").is_file())
  raise FileNotFoundError(f"model.name={name!r}: no config.json; pass a local HF directory or one of {known} "
                          f"(or add {shipped}/config.json)")


def abstract_model(config: ml_collections.ConfigDict) -> tuple[RewardModel, dict]:
  """(the reward model the config trains, the backbone's HF config as a dict), from ``config.json`` only."""
  model_dir = model_config_dir(config.model.name)
  decoder = decoder_config_from_hf(load.load_hf_config(model_dir))
  m = config.model
  model = RewardModel(decoder, pooling=m.pooling, lora=load.lora_config(config), dtype=jnp.dtype(m.dtype),
                      param_dtype=jnp.dtype(m.param_dtype), remat_policy=m.remat_policy,
                      last_token_only=m.last_token_only)
  cfg = json.loads((model_dir / "config.json").read_text())
  return model, cfg.get("text_config", cfg)


def worst_case_batch(config: ml_collections.ConfigDict, mesh, hosts: int, pad_id: int):
  """(global ``ShapeDtypeStruct``s of one train batch, problems): the data pipeline's batch when every text has
  ``data.max_length`` tokens and chosen and rejected share no prefix, as each of ``hosts`` processes builds its rows
  (``loop.paired_batches``). A config that cannot run on that many hosts is a problem; the batch of one process
  is compiled instead."""
  length = config.data.max_length
  pair = pipeline.Domain(name="worst_case", kind="pairs", chosen=[[3] + [5] * (length - 1)],
                         rejected=[[4] + [5] * (length - 1)])
  problems = []

  def build(processes: int):
    row_shards = max(mesh.shape["data"] * mesh.shape["fsdp"] // processes, 1)
    return pipeline.PairedBatches(
        pair, pair, batch_size=config.train.batch_size, grad_accum_steps=config.train.grad_accum_steps,
        buckets=batching.bucket_lengths(length, config.data.min_bucket), pad_id=pad_id, seed=0, process_index=0,
        process_count=processes, packing_mode=step_lib.packing_mode(config),
        pack_row_length=config.data.pack_row_length,
        pack_rows_multiple=math.lcm(config.data.pack_rows_multiple, row_shards)).batch(0)

  try:
    local, processes = build(hosts), hosts
  except ValueError as e:
    problems.append(f"cannot run on {hosts} hosts: {e} (train.batch_size / train.grad_accum_steps pairs per "
                    "micro-batch, split over the hosts)")
    local, processes = build(1), 1
  return {k: jax.ShapeDtypeStruct((v.shape[0], v.shape[1] * processes) + v.shape[2:], v.dtype)
          for k, v in local.items()}, problems


def abstract_train_state(model: RewardModel, config: ml_collections.ConfigDict, mesh):
  """(abstract ``TrainState``, its shardings, the variables' shardings): ``state.create_train_state`` traced with
  abstract variables, so nothing is allocated."""
  ids = jnp.zeros((1, 8), jnp.int32)
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids)))
  variable_shardings = parallel.variable_shardings(boxed, mesh)
  variables = nn.unbox(boxed)
  tx, critic_tx = state_lib.make_optimizer(config), state_lib.make_critic_optimizer(config)
  captured = {}

  def create(variables):
    state, shardings = state_lib.create_train_state(
        variables, config, model.config.num_layers, model.config.hidden_size, tx, critic_tx, variable_shardings, mesh)
    captured["shardings"] = shardings
    return state

  state = jax.eval_shape(create, variables)
  return state, captured["shardings"], variable_shardings, (tx, critic_tx)


def per_chip_bytes(abstract, shardings) -> int:
  """Bytes one device holds of a tree of abstract arrays under ``shardings`` (the largest shard)."""
  total = 0
  is_sharding = lambda x: isinstance(x, NamedSharding)
  for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings, is_leaf=is_sharding)):
    total += math.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
  return total


def memory(compiled) -> dict[str, int]:
  """Per-chip bytes of a compiled program (XLA): total = arguments + outputs - aliased (donated) + temporaries."""
  m = compiled.memory_analysis()
  out = {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes, "alias": m.alias_size_in_bytes,
         "temp": m.temp_size_in_bytes, "generated_code": m.generated_code_size_in_bytes}
  out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


def cost(compiled) -> dict[str, float]:
  c = compiled.cost_analysis()
  c = c[0] if isinstance(c, (list, tuple)) else c
  return {"flops": float(c.get("flops", 0.0)), "bytes_accessed": float(c.get("bytes accessed", 0.0))}


def _gib(n: float) -> str:
  return f"{n / GIB:.2f} GiB" if abs(n) >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def _compile(lowered):
  """(compiled, None), or (None, XLA's one-line reason) when the program does not fit in HBM."""
  try:
    return lowered.compile(), None
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return None, " ".join(str(e).split())


def _program(compiled, error, hbm: float, resident: int = 0) -> dict:
  """Memory and cost of one compiled program (per chip), or the compiler's out-of-memory message."""
  if compiled is None:
    return {"fits": False, "error": error}
  mem = memory(compiled)
  mem["resident_state"] = resident
  mem["total"] += resident
  return {"fits": mem["total"] <= hbm, "memory_per_chip": mem, "cost_per_chip": cost(compiled)}


def analyse(config: ml_collections.ConfigDict, topology: str, *, include_eval: bool = True) -> dict:
  """Compile the config's train (and eval) step for the slice and return the report (see the module docstring)."""
  tpu = tpu_slices.get_slice(topology)
  devices = tpu_slices.devices(tpu)
  hosts = len({d.process_index for d in devices})
  mesh = parallel.make_mesh(config.mesh, devices)
  model, hf_cfg = abstract_model(config)
  pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
  hbm = tpu.chip.hbm_gib * GIB
  accum, chips = config.train.grad_accum_steps, tpu.chips
  peak = chips * tpu.chip.bf16_tflops * 1e12
  problems: list[str] = []

  start = time.time()
  state, state_shardings, variable_shardings, (tx, critic_tx) = abstract_train_state(model, config, mesh)
  batch, batch_problems = worst_case_batch(config, mesh, hosts, pad_id)
  problems += batch_problems
  batch_shardings = parallel.batch_shardings({k: v.shape for k, v in batch.items()}, mesh)
  # dial.length_blind's direction is fitted on data at the start of training; any unit vector compiles the same.
  length_direction = (np.eye(model.config.hidden_size, 1)[:, 0] if config.dial.length_blind
                      and config_lib.domain_loss_active(config) else None)
  train_step = step_lib.make_train_step(model, state_lib.make_critic(config), tx, critic_tx, config,
                                        state_shardings=state_shardings, batch_sharding=batch_shardings,
                                        length_direction=length_direction)
  train = _program(*_compile(train_step.lower(state, batch)), hbm)
  train["compile_s"] = round(time.time() - start, 1)
  parts = {name: per_chip_bytes(getattr(state, name), getattr(state_shardings, name))
           for name in ("frozen", "trainable", "opt_state", "critic", "critic_opt_state")}
  parts["batch"] = per_chip_bytes(batch, batch_shardings)

  lora = load.lora_config(config)
  train["model_flops_per_step"] = flops_lib.model_flops(
      hf_cfg, [config.data.max_length] * (4 * config.train.batch_size), lora_rank=lora.rank,
      lora_targets=lora.targets, trainable=config.train.trainable)["total"]
  train["model_bound_s"] = train["model_flops_per_step"] / peak
  if "cost_per_chip" in train:
    train["flops_per_step"] = train["cost_per_chip"]["flops"] * accum * chips
    train["bound_s"] = train["flops_per_step"] / peak
    train["memory_bound_s"] = train["cost_per_chip"]["bytes_accessed"] * accum / (tpu.chip.hbm_gbps * 1e9)

  report = {
      "topology": tpu.name, "libtpu_topology": tpu.topology, "chip": tpu.chip.name, "chips": chips, "hosts": hosts,
      "hbm_bytes_per_chip": hbm, "mesh": dict(mesh.shape), "model": config.model.name, "dtype": config.model.dtype,
      "param_dtype": config.model.param_dtype, "remat_policy": config.model.remat_policy,
      "trainable": config.train.trainable, "packing": step_lib.packing_mode(config),
      "batch": {k: list(v.shape) for k, v in batch.items()}, "pairs_per_domain": config.train.batch_size,
      "grad_accum_steps": accum, "max_length": config.data.max_length, "state_bytes_per_chip": parts,
      "train": train,
  }
  programs = [("train step", train)]
  if include_eval:
    start = time.time()
    rows = (config.data.eval_batch_size, config.data.max_length)
    row_sharding = NamedSharding(mesh, parallel.logical_to_spec(("batch", None), rows, mesh))
    abstract_vars = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                 state_lib.merge(state.trainable, state.frozen),
                                 state_lib.merge(state_shardings.trainable, state_shardings.frozen))
    ids = jax.ShapeDtypeStruct(rows, jnp.int32, sharding=row_sharding)
    scorer = Scorer(model, None, None, batch_size=rows[0], max_length=rows[1], mesh=mesh)
    # While evaluating, the optimizer and critic states stay resident beside the eval program's own buffers.
    resident = parts["opt_state"] + parts["critic"] + parts["critic_opt_state"]
    evaluate = _program(*_compile(scorer._apply.lower(abstract_vars, ids, ids)), hbm, resident)
    evaluate.update(compile_s=round(time.time() - start, 1), rows=list(rows))
    if "cost_per_chip" in evaluate:
      evaluate["bound_s"] = evaluate["cost_per_chip"]["flops"] * chips / peak
    report["eval"] = evaluate
    programs.append(("eval step", evaluate))

  for name, prog in programs:
    if "error" in prog:
      problems.append(f"{name} does not fit on {tpu.name} ({_gib(hbm)} HBM per chip; frozen weights "
                      f"{_gib(parts['frozen'])} per chip): {prog['error']}")
    elif not prog["fits"]:
      mem = prog["memory_per_chip"]
      biggest = max((parts | {"temporaries": mem["temp"]}).items(), key=lambda kv: kv[1])
      problems.append(f"{name} does not fit on {tpu.name}: {_gib(mem['total'])} per chip > {_gib(hbm)} HBM "
                      f"({_gib(mem['total'] - hbm)} over; largest part: {biggest[0]} {_gib(biggest[1])})")
  report["fits"] = all(prog["fits"] for _, prog in programs)
  report["problems"] = problems
  return report


def format_report(r: dict) -> str:
  t, parts = r["train"], r["state_bytes_per_chip"]
  lines = [
      f"{r['model']} ({r['dtype']}, params {r['param_dtype']}, remat {r['remat_policy']}, {r['trainable']}, packing "
      f"{r['packing']}) on {r['topology']} ({r['chips']} x TPU {r['chip']}, {r['hosts']} host(s), "
      f"{_gib(r['hbm_bytes_per_chip'])} HBM per chip), mesh {r['mesh']}",
  ]
  if "memory_per_chip" in t:
    m = t["memory_per_chip"]
    lines.append(
        f"train step, per chip: arguments {_gib(m['argument'])} (frozen {_gib(parts['frozen'])}, optimizer "
        f"{_gib(parts['opt_state'])}, batch {_gib(parts['batch'])}), temporaries {_gib(m['temp'])}, outputs "
        f"{_gib(m['output'])} (donated {_gib(m['alias'])}): total {_gib(m['total'])} -> "
        f"{'fits' if t['fits'] else 'DOES NOT FIT'}")
    lines.append(f"FLOPs per step: compiled {t['flops_per_step']:.3e}, model {t['model_flops_per_step']:.3e} "
                 f"({r['pairs_per_domain']} pairs per domain x {r['max_length']} tokens)")
    lines.append(f"step time lower bound: {t['bound_s'] * 1e3:.1f} ms compute (compiled FLOPs / chips x peak; "
                 f"model FLOPs: {t['model_bound_s'] * 1e3:.1f} ms), {t['memory_bound_s'] * 1e3:.1f} ms HBM traffic")
  else:
    lines.append(f"train step: DOES NOT FIT (frozen weights {_gib(parts['frozen'])} per chip); model FLOPs per step "
                 f"{t['model_flops_per_step']:.3e}, bound {t['model_bound_s'] * 1e3:.1f} ms")
  e = r.get("eval")
  if e and "memory_per_chip" in e:
    em = e["memory_per_chip"]
    lines.append(f"eval step ({e['rows'][0]} x {e['rows'][1]} tokens), per chip: arguments {_gib(em['argument'])}, "
                 f"temporaries {_gib(em['temp'])}, + optimizer/critic state {_gib(em['resident_state'])}: total "
                 f"{_gib(em['total'])} -> {'fits' if e['fits'] else 'DOES NOT FIT'}")
  elif e:
    lines.append(f"eval step ({e['rows'][0]} x {e['rows'][1]} tokens): DOES NOT FIT")
  lines.append(f"compile: train {t['compile_s']} s" + (f", eval {e['compile_s']} s" if e else ""))
  lines += [f"PROBLEM: {p}" for p in r["problems"]]
  return "\n".join(lines)


def main(argv) -> int:
  from absl import flags
  FLAGS = flags.FLAGS
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  report = analyse(FLAGS.config, FLAGS.topology, include_eval=FLAGS.eval)
  print(format_report(report))
  if FLAGS.output:
    Path(FLAGS.output).write_text(json.dumps(report, indent=2))
  return 0 if report["fits"] and not report["problems"] else 1


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Config file with an optional preset: configs/few_shot.py:paper.",
                                  lock_config=True)
  flags.DEFINE_string("topology", "v5e-16", f"TPU slice: one of {', '.join(tpu_slices.SLICES)}, or a libtpu "
                      "topology name such as v5e:2x2")
  flags.DEFINE_string("output", "", "Write the report here as JSON.")
  flags.DEFINE_bool("eval", True, "Also compile the eval step.")
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
