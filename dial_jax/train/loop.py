"""The training loop: build model, data and state from a config; train, evaluate, checkpoint, write results."""
from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from absl import logging

from dial_jax import parallel
from dial_jax.checkpoint import Checkpointer
from dial_jax.data import batching, pipeline
from dial_jax.hf import load
from dial_jax.inference import Scorer, evaluate_domain
from dial_jax.metrics import MetricWriter
from dial_jax.models.decoder import LoraConfig
from dial_jax.train import state as state_lib
from dial_jax.train import step as step_lib

EVAL_SPLITS = ("target_test", "target_val", "source_val")


class Preempted(SystemExit):
  """Raised after the checkpoint that a SIGTERM asked for is safely written (exit status 143)."""

  def __init__(self, step: int):
    super().__init__(143)
    self.step = step


class PreemptionWatcher:
  """Notes SIGTERM (what TPU VMs and SLURM send before preemption) so the loop can stop at a step boundary; with
  several processes they agree (any process signalled -> all stop at the same step)."""

  def __init__(self):
    self._flag = False
    self._previous = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    del signum, frame
    self._flag = True

  def requested(self) -> bool:
    if jax.process_count() == 1:
      return self._flag
    flags = multihost_utils.process_allgather(np.asarray(self._flag))
    return bool(np.any(flags))

  def uninstall(self) -> None:
    signal.signal(signal.SIGTERM, self._previous)


def lora_config(config: ml_collections.ConfigDict) -> LoraConfig:
  if config.train.trainable != "lora":
    return LoraConfig()
  return LoraConfig(rank=config.lora.rank, alpha=float(config.lora.alpha), targets=tuple(config.lora.targets))


def build_model(config: ml_collections.ConfigDict):
  """(model, variables, tokenizer, model_dir) for the configured backbone."""
  model, variables, model_dir = load.load_reward_model(
      config.model.name, dtype=jnp.dtype(config.model.dtype), param_dtype=jnp.dtype(config.model.param_dtype),
      pooling=config.model.pooling, lora=lora_config(config), head_seed=config.model.head_seed,
      remat_policy=config.model.remat_policy, last_token_only=config.model.get("last_token_only", False))
  return model, variables, load.load_tokenizer(model_dir), model_dir


def load_data(config: ml_collections.ConfigDict, tokenizer):
  """(source train, target train, {eval split: Domain}) of the configured setting."""
  d = config.data
  root = Path(d.dir) / d.setting
  load_split = lambda split, limit=0: pipeline.load_domain(root / f"{split}.jsonl", tokenizer, d.max_length,
                                                          skip_bad_rows=d.skip_bad_rows, limit=limit)
  source, target = load_split("source_train"), load_split("target_train")
  evals = {}
  for split in EVAL_SPLITS:
    if (root / f"{split}.jsonl").exists():
      domain = load_split(split, d.max_eval_examples)
      if len(domain):
        evals[split] = domain
  for dom in [source, target, *evals.values()]:
    if dom.n_skipped:
      logging.warning("%s: skipped %d bad rows", dom.name, dom.n_skipped)
  return source, target, evals


def abstract_variables(model):
  """The variables tree with logical-axis boxes (shapes only), for the sharding rules."""
  ids = jnp.zeros((1, 8), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids)))


def evaluate(scorer: Scorer, evals: dict) -> dict[str, dict]:
  return {name: evaluate_domain(scorer, domain) for name, domain in evals.items()}


def _write_json_atomic(path: Path, obj) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
  os.replace(tmp, path)


def paired_batches(config: ml_collections.ConfigDict, source, target, pad_id: int, mesh) -> pipeline.PairedBatches:
  """This process's train batches per ``config``. Packed row counts are kept a multiple of the rows each process's
  devices split (data x fsdp), so packed rows are always sharded, never silently replicated."""
  row_shards = max(mesh.shape["data"] * mesh.shape["fsdp"] // jax.process_count(), 1)
  return pipeline.PairedBatches(
      source, target, batch_size=config.train.batch_size, grad_accum_steps=config.train.grad_accum_steps,
      buckets=batching.bucket_lengths(config.data.max_length, config.data.min_bucket), pad_id=pad_id,
      seed=config.train.seed, process_index=jax.process_index(), process_count=jax.process_count(),
      packing_mode=step_lib.packing_mode(config), pack_row_length=config.data.get("pack_row_length", 0),
      pack_rows_multiple=math.lcm(config.data.get("pack_rows_multiple", 1), row_shards))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Train per ``config`` in ``workdir`` (resuming from its latest checkpoint) and return the results."""
  step_lib.validate(config)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  start_time = time.time()

  mesh = parallel.make_mesh(config.mesh)
  logging.info("mesh: %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, jax.process_count())
  model, variables, tokenizer, model_dir = build_model(config)
  source, target, evals = load_data(config, tokenizer)
  logging.info("data: source %d %s, target %d %s, eval %s", len(source), source.kind, len(target), target.kind,
               {k: len(v) for k, v in evals.items()})
  pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else tokenizer.pad_token_id
  batches = paired_batches(config, source, target, pad_id, mesh)

  tx, critic_tx = state_lib.make_optimizer(config), state_lib.make_critic_optimizer(config)
  critic = state_lib.make_critic(config)
  variable_shardings = parallel.variable_shardings(abstract_variables(model), mesh)
  state, state_shardings = state_lib.create_train_state(
      variables, config, model.config.num_layers, model.config.hidden_size, tx, critic_tx, variable_shardings, mesh)
  del variables
  local_shapes = {k: v.shape for k, v in batches.batch(0).items()}
  global_shapes = {k: (s[0], s[1] * jax.process_count()) + s[2:] for k, s in local_shapes.items()}
  batch_shardings = parallel.batch_shardings(global_shapes, mesh)
  checkpointer = Checkpointer(workdir, config.train.checkpoint_every, config.train.keep_checkpoints)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
    logging.info("resumed from step %d", int(state.step))
  train_step = step_lib.make_train_step(model, critic, tx, critic_tx, config, state_shardings=state_shardings,
                                        batch_sharding=batch_shardings)
  scorer = Scorer(model, None, tokenizer, batch_size=config.data.eval_batch_size, max_length=config.data.max_length,
                  mesh=mesh)
  writer = MetricWriter(workdir, enabled=is_main)

  step = int(state.step)
  train_metrics, n_skipped = {}, 0
  preemption = PreemptionWatcher()
  while step < config.train.num_steps:
    state, metrics = train_step(state, parallel.global_batch(batches.batch(step), batch_shardings))
    step += 1
    if int(metrics["nonfinite"]):
      n_skipped += 1
      if config.train.on_nonfinite == "stop":
        checkpointer.close()
        raise FloatingPointError(f"non-finite loss or gradient at step {step}; last good checkpoint: "
                                 f"{checkpointer.latest_step()}")
      logging.warning("step %d: non-finite loss or gradient, update skipped (%d so far)", step, n_skipped)
    if step % config.train.log_every == 0 or step == config.train.num_steps:
      train_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      writer.write(step, "train", train_metrics)
      logging.info("step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in sorted(train_metrics.items())))
    if config.train.eval_every and step % config.train.eval_every == 0 and step < config.train.num_steps:
      scorer.variables = state_lib.merge(state.trainable, state.frozen)
      for split, values in evaluate(scorer, evals).items():
        writer.write(step, f"eval/{split}", values)
        logging.info("step %d eval %s: %s", step, split, values)
    if preemption.requested():
      checkpointer.maybe_save(step, state, force=True)
      checkpointer.close()
      logging.warning("SIGTERM received: saved a checkpoint at step %d in %s; rerun the same command to resume",
                      step, workdir)
      raise Preempted(step)
    checkpointer.maybe_save(step, state, force=step == config.train.num_steps)
  checkpointer.close()
  preemption.uninstall()

  scorer.variables = state_lib.merge(state.trainable, state.frozen)
  results = {
      "setting": config.data.setting, "mode": config.dial.mode, "domain_loss": config.dial.domain_loss,
      "lambda": config.dial.lambda_, "model": config.model.name, "num_steps": config.train.num_steps,
      "seed": config.train.seed, "eval": evaluate(scorer, evals), "final_train_metrics": train_metrics,
      "skipped_nonfinite_steps": n_skipped, "wall_time_s": time.time() - start_time,
      "data_sizes": {"source_train": len(source), "target_train": len(target),
                     **{k: len(v) for k, v in evals.items()}},
  }
  if is_main:
    for split, values in results["eval"].items():
      writer.write(step, f"eval/{split}", values)
    _write_json_atomic(workdir / "results.json", results)
  logging.info("results: %s", json.dumps(results["eval"]))
  return results
