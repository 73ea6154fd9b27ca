"""The training loop, the only one: ``train`` runs the DIAL step over batches of given domains with any reward model
(the full backbone, or the experiments' prefix-cache top model), logs every step metric, evaluates, checkpoints;
``train_and_evaluate`` builds model, data and workdir from a config and calls it.
"""
from __future__ import annotations

import atexit
import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from dial_jax import config as config_lib
from dial_jax import parallel, paths, probe
from dial_jax.checkpoint import Checkpointer
from dial_jax.data import batching, matching, pipeline, settings
from dial_jax.hf import load
from dial_jax.inference import Scorer, evaluate_domain, heldout_gap
from dial_jax.train import state as state_lib
from dial_jax.train import step as step_lib
from dial_jax.train import writers as writers_lib

EVAL_SPLITS = ("target_test", "target_val", "source_val")
# Keys that may change when a run resumes: they do not change what the run computes (train.num_steps may grow).
RESUME_SAFE_KEYS = ("train.num_steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                    "train.keep_checkpoints", "train.on_nonfinite", "train.wandb_project", "data.eval_batch_size",
                    "data.max_eval_examples", "data.skip_bad_rows", "mesh.data", "mesh.fsdp", "mesh.tensor",
                    "data.dir")


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


def load_data(config: ml_collections.ConfigDict, tokenizer):
  """(source train, target train, {eval split: Domain}) of the configured setting. Eval subsets
  (``data.max_eval_examples``) are the same draw for every seed, so runs are paired on the same examples."""
  d = config.data
  data_dir = local_data_dir(d.dir, d.setting)
  root = Path(data_dir) / d.setting
  if (Path(data_dir) / settings.MANIFEST).is_file():  # prepared data: the splits must be those prepare wrote
    settings.check_manifest(data_dir, d.setting)
  else:
    logging.info("%s has no %s (not made by dial_jax.prepare): split files are used as they are", d.dir,
                 settings.MANIFEST)
  load_split = lambda split, limit=0: pipeline.load_domain(root / f"{split}.jsonl", tokenizer, d.max_length,
                                                          skip_bad_rows=d.skip_bad_rows, limit=limit,
                                                          truncation=d.truncation)
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


def local_data_dir(data_dir: str, setting: str) -> str:
  """``data_dir``, or for a bucket (``gs://...``) a local temporary copy of its manifest and ``setting``'s split
  files (checked against the manifest like local ones; messages then name the copy), removed at exit."""
  if not paths.is_uri(data_dir):
    return data_dir
  src, dst = paths.path(data_dir), Path(tempfile.mkdtemp(prefix="dial_data_"))
  atexit.register(shutil.rmtree, dst, ignore_errors=True)
  (dst / setting).mkdir()
  if not (src / setting).is_dir():
    raise FileNotFoundError(f"{src / setting}: no such directory (prepared splits of {setting!r})")
  names = [settings.MANIFEST] if (src / settings.MANIFEST).is_file() else []
  names += [f"{setting}/{p.name}" for p in (src / setting).iterdir() if p.name.endswith(".jsonl")]
  for name in names:
    (dst / name).write_bytes((src / name).read_bytes())
  logging.info("copied %s (%d files) to %s", data_dir, len(names), dst)
  return str(dst)


def abstract_variables(model):
  """The variables tree with logical-axis boxes (shapes only), for the sharding rules."""
  ids = jnp.zeros((1, 8), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids)))


def paired_batches(config: ml_collections.ConfigDict, source, target, pad_id: int, mesh) -> pipeline.PairedBatches:
  """This process's train batches per ``config``. Packed row counts are kept a multiple of the rows each process's
  devices split (data x fsdp), so packed rows are always sharded, never silently replicated."""
  row_shards = max(mesh.shape["data"] * mesh.shape["fsdp"] // jax.process_count(), 1)
  return pipeline.PairedBatches(
      source, target, batch_size=config.train.batch_size, grad_accum_steps=config.train.grad_accum_steps,
      buckets=batching.bucket_lengths(config.data.max_length, config.data.min_bucket), pad_id=pad_id,
      seed=config.train.seed, process_index=jax.process_index(), process_count=jax.process_count(),
      packing_mode=config_lib.packing_mode(config), pack_row_length=config.data.pack_row_length,
      pack_rows_multiple=math.lcm(config.data.pack_rows_multiple, row_shards))


def evaluate(scorer: Scorer, evals: dict, *, progress: bool = False, keep_scores: bool = False,
             keep_embeddings: bool = False) -> dict[str, dict]:
  return {name: evaluate_domain(scorer, domain, progress=progress, desc=f"eval {name}", keep_scores=keep_scores,
                                keep_embeddings=keep_embeddings)
          for name, domain in evals.items()}


def evaluation_with_gap(scorer: Scorer, evals: dict, source: pipeline.Domain, *, progress: bool,
                        keep_scores: bool) -> tuple[dict, dict | None]:
  """(metrics per split, held-out domain gap) of the model, during training (``train.eval_every``) and at its end.
  Without a source_val split (few-shot) the source training pairs are evaluated too: they are the label-free rules'
  source check. The gap (``inference.heldout_gap``, labels unused) comes from the same forward passes' embeddings:
  logged every evaluation, it shows whether the alignment DIAL trains for reaches texts it did not train on."""
  if "source_val" not in evals and "source_train" not in evals:
    evals = {**evals, "source_train": source}
  results = evaluate(scorer, evals, progress=progress, keep_scores=keep_scores, keep_embeddings=True)
  return results, heldout_gap({split: values.pop("embeddings") for split, values in results.items()})


def source_check(values_per_split: dict) -> float | None:
  """The source-check metric of an evaluation: source_val's headline metric (accuracy for pairs, Pearson for scored
  texts), or the source training pairs' where there is no source_val (few-shot)."""
  values = values_per_split.get("source_val", values_per_split.get("source_train", {}))
  return values.get("accuracy", values.get("pearson"))


class BestSoFar:
  """``train.keep_best``: the trainable parameters of the evaluation with the highest source-check metric so far
  (ties keep the earlier step). Without a checkpointer a copy stays on device; with one they are saved in
  ``<workdir>/checkpoints_best`` (orbax keeps the best), so a resumed run keeps its best and export can read it."""

  def __init__(self, checkpointer: Checkpointer | None):
    self.checkpointer, self.trainable = checkpointer, None
    self.step, self.metric = checkpointer.best_record() if checkpointer is not None else (None, None)

  def offer(self, step: int, metric: float | None, state: state_lib.TrainState) -> bool:
    if metric is None or (self.metric is not None and metric <= self.metric):
      return False
    self.step, self.metric = step, metric
    if self.checkpointer is not None:
      self.checkpointer.save_best(step, state, metric)
    else:  # the train step donates the state's buffers: keep a copy
      self.trainable = jax.tree.map(jnp.copy, state.trainable)
    return True

  def trainable_of(self, template: state_lib.TrainState):
    if self.checkpointer is not None:
      return self.checkpointer.restore_best(template).trainable
    return self.trainable


def _write_gap(writer, step: int, gap: dict | None) -> None:
  if gap is not None:
    writer.write(step, "heldout_gap", {k: v for k, v in gap.items() if not isinstance(v, str)})


def _write_json_atomic(path, obj) -> None:
  paths.write_text_atomic(path, json.dumps(_strict(obj), indent=2, sort_keys=True, allow_nan=False))


def _strict(obj):
  """``obj`` with non-finite floats as None (results.json is strict JSON)."""
  if isinstance(obj, dict):
    return {k: _strict(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_strict(v) for v in obj]
  return writers_lib.finite_or_none(obj)


class MetricWindow:
  """Train metrics averaged over the steps since the last log (skipped non-finite steps excluded)."""

  def __init__(self):
    self.sums: dict[str, float] = {}
    self.count, self.skipped, self.start = 0, 0, time.time()

  def add(self, metrics: dict) -> None:
    if metrics["nonfinite"]:
      self.skipped += 1
      return
    for k, v in metrics.items():
      self.sums[k] = self.sums.get(k, 0.0) + float(v)
    self.count += 1

  def flush(self, steps: int) -> dict[str, float]:
    out = {k: v / self.count for k, v in self.sums.items() if k != "nonfinite"} if self.count else {}
    out["nonfinite_steps"] = float(self.skipped)
    out["step_time_s"] = (time.time() - self.start) / max(steps, 1)
    self.__init__()
    return out


@dataclasses.dataclass
class Outcome:
  """What :func:`train` returns: the results (eval per split, last train metrics, ...) and the trained variables."""

  results: dict[str, Any]
  variables: Any


def train(config: ml_collections.ConfigDict, model, variables, source: pipeline.Domain, target: pipeline.Domain,
          evals: dict[str, pipeline.Domain], *, mesh, pad_id: int, tokenizer=None, writer=None,
          checkpointer: Checkpointer | None = None, progress: bool | None = None,
          keep_eval_scores: bool = False) -> Outcome:
  """Train ``model`` from ``variables`` with the DIAL step per ``config`` on ``source``/``target``; evaluate on
  ``evals`` every ``train.eval_every`` steps and at the end. With a ``checkpointer`` it resumes from the latest
  checkpoint, saves every ``train.checkpoint_every`` steps and on SIGTERM. Every step metric, averaged over the
  ``train.log_every`` window, goes to ``writer``; ``keep_eval_scores`` keeps the final evaluation's per-example
  margins / rewards in the results."""
  is_main = jax.process_index() == 0
  writer = writer or writers_lib.MultiWriter([])
  progress = (is_main and sys.stderr.isatty()) if progress is None else progress
  blind = config.dial.length_blind and config_lib.domain_loss_active(config)
  for d in (source, target) if blind else ():
    if d.lengths is None:
      raise ValueError(f"dial.length_blind needs each text's length in words; domain {d.name!r} has none (domains "
                       "from pipeline.load_domain have them)")
  if config.dial.match_target_lengths and config_lib.domain_loss_active(config):
    target, info = matching.match_lengths(target, source, config.train.seed)
    logging.info("dial.match_target_lengths: %d target pairs redrawn by length (%.0f effective, %d distinct); "
                 "median length gap within a pair: source %.1f, target %.1f, redrawn %.1f words", len(target),
                 info["effective_pairs"], info["distinct_pairs"], info["median_length_gap_source"],
                 info["median_length_gap_target"], info["median_length_gap_matched"])
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
  scorer = Scorer(model, None, tokenizer, batch_size=config.data.eval_batch_size, max_length=config.data.max_length,
                  mesh=mesh)
  # Fitted on the starting model before any restore, so a resumed run fits the same direction again.
  length_direction = fit_length_direction(state, config, scorer, source, target) if blind else None
  if checkpointer is not None and checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
    logging.info("resumed from step %d", int(state.step))
  elif config.model.head_init == "probe":
    state = head_at_probe(state, config, scorer, source, target, evals)
    # The optimizer starts from the head it trains (weight_decay_target=start anchors there).
    state = state.replace(opt_state=jax.jit(tx.init, out_shardings=state_shardings.opt_state)(state.trainable))
  train_step = step_lib.make_train_step(model, critic, tx, critic_tx, config, state_shardings=state_shardings,
                                        batch_sharding=batch_shardings, length_direction=length_direction)

  step = start = int(state.step)
  num_steps = config.train.num_steps
  window, train_metrics, n_skipped = MetricWindow(), {}, 0
  preemption = PreemptionWatcher() if checkpointer is not None else None
  bar = tqdm(total=num_steps, initial=step, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
  last_log = step
  best = BestSoFar(checkpointer) if config.train.keep_best else None
  while step < num_steps:
    state, metrics = train_step(state, parallel.global_batch(batches.batch(step), batch_shardings))
    step += 1
    metrics = jax.device_get(metrics)
    window.add(metrics)
    bar.update(1)
    if int(metrics["nonfinite"]):
      n_skipped += 1
      if config.train.on_nonfinite == "stop":
        bar.close()
        last_good = checkpointer.latest_step() if checkpointer is not None else None
        if checkpointer is not None:
          checkpointer.close()
        raise FloatingPointError(f"non-finite loss, gradient or parameters at step {step}; last good checkpoint: "
                                 f"{last_good}")
      logging.warning("step %d: non-finite loss, gradient or parameters, update skipped (%d so far)", step, n_skipped)
    if step % config.train.log_every == 0 or step == num_steps:
      train_metrics = window.flush(step - last_log)
      last_log = step
      writer.write(step, "train", train_metrics)
      bar.set_postfix({k: f"{train_metrics[k]:.3g}" for k in ("loss", "source_accuracy", "wasserstein")
                       if k in train_metrics}, refresh=False)
      if not progress and is_main:
        eta = (num_steps - step) * train_metrics["step_time_s"]
        logging.info("step %d/%d (%.2f s/step, ETA %.0f s): %s", step, num_steps, train_metrics["step_time_s"], eta,
                     " ".join(f"{k}={v:.4g}" for k, v in sorted(train_metrics.items())))
    if config.train.eval_every and step % config.train.eval_every == 0 and step < num_steps:
      scorer.variables = state_lib.merge(state.trainable, state.frozen)
      values_per_split, gap = evaluation_with_gap(scorer, evals, source, progress=progress, keep_scores=False)
      for split, values in values_per_split.items():
        writer.write(step, f"eval/{split}", values)
        logging.info("step %d eval %s: %s", step, split, values)
      _write_gap(writer, step, gap)
      if best is not None:
        best.offer(step, source_check(values_per_split), state)
    if preemption is not None and preemption.requested():
      _flush(writer)
      checkpointer.maybe_save(step, state, force=True)
      checkpointer.close()
      bar.close()
      logging.warning("SIGTERM received: saved a checkpoint at step %d; rerun the same command to resume", step)
      raise Preempted(step)
    if checkpointer is not None:
      if checkpointer.due(step, force=step == num_steps):
        _flush(writer)  # the metrics up to a checkpoint are stored before it (a bucket's are uploaded in batches)
      checkpointer.maybe_save(step, state, force=step == num_steps)
  bar.close()
  if checkpointer is not None:
    checkpointer.wait_until_finished()  # the last checkpoint is on disk before the (long) final evaluation
  if preemption is not None:
    preemption.uninstall()

  variables = state_lib.merge(state.trainable, state.frozen)
  scorer.variables = variables
  eval_results, gap = evaluation_with_gap(scorer, evals, source, progress=progress, keep_scores=keep_eval_scores)
  for split, values in eval_results.items():
    writer.write(step, f"eval/{split}", {k: v for k, v in values.items() if not isinstance(v, list)})
  _write_gap(writer, step, gap)
  results = {"eval": eval_results, "heldout_gap": gap, "final_train_metrics": train_metrics,
             "skipped_nonfinite_steps": n_skipped, "trained_steps": step - start}
  if best is not None:  # the last step is a candidate too
    best.offer(step, source_check(eval_results), state)
    if best.step != step:
      variables = state_lib.merge(best.trainable_of(state), state.frozen)
      scorer.variables = variables
      eval_results, gap = evaluation_with_gap(scorer, evals, source, progress=progress,
                                              keep_scores=keep_eval_scores)
      results.update({"eval": eval_results, "heldout_gap": gap})
    results["kept_step"] = best.step
    writer.write(step, "keep_best", {"kept_step": best.step, "source_check": best.metric})
    logging.info("train.keep_best: kept step %d (source check %.4g) of %d", best.step, best.metric, step)
  if checkpointer is not None:
    checkpointer.close()
  return Outcome(results, variables)


def head_at_probe(state: state_lib.TrainState, config: ml_collections.ConfigDict, scorer: Scorer,
                  source: pipeline.Domain, target: pipeline.Domain, evals: dict) -> state_lib.TrainState:
  """``state`` with the reward head at the linear probe on the starting model's embeddings (``dial_jax.probe``),
  fitted on the labelled training pairs: the source's, or the target's for the oracle. Its L2 is ``model.probe_l2``
  or, when that is 0, chosen on the same domain's validation split when there is one; ``model.probe_max_pairs`` caps
  the fitted pairs (a seeded draw: the probe embeds every one with the whole model). Fine-tuning then starts from a
  head that already ranks, so the first updates do not distort the features to fit a random head (LP-FT)."""
  oracle = config.dial.mode == "oracle"
  fit_domain, val_domain = (target, evals.get("target_val")) if oracle else (source, evals.get("source_val"))
  fit_domain = pipeline.take(fit_domain, config.model.probe_max_pairs, config.train.seed)
  scorer.variables = state_lib.merge(state.trainable, state.frozen)
  diffs = lambda d: probe.pair_differences(d, probe.embeddings(scorer, d), seed=config.train.seed)
  fit_diffs = diffs(fit_domain)
  fixed_l2 = config.model.probe_l2 or None
  val_diffs = diffs(val_domain)[0] if val_domain is not None and fixed_l2 is None else None
  coef, l2 = probe.fit(fit_diffs, val_diffs, l2=fixed_l2)
  logging.info("head_init=probe: the head starts at the linear probe on %s (%d pairs, L2 %g, training accuracy %.3f)",
               fit_domain.name, len(fit_diffs[0]), l2, probe.pairwise_accuracy(fit_diffs[0] @ coef))
  flat = flax.traverse_util.flatten_dict(state.trainable)
  kernel = flat[("params", "score", "kernel")]
  flat[("params", "score", "kernel")] = jax.device_put(jnp.asarray(coef[:, None], kernel.dtype), kernel.sharding)
  return state.replace(trainable=flax.traverse_util.unflatten_dict(flat))


def fit_length_direction(state: state_lib.TrainState, config: ml_collections.ConfigDict, scorer: Scorer,
                         source: pipeline.Domain, target: pipeline.Domain) -> np.ndarray:
  """``dial.length_blind``'s direction: ``probe.length_direction`` of the starting model's embeddings of both
  training domains (each a seeded draw of at most ``model.probe_max_pairs`` pairs or texts; the target's labels do
  not enter)."""
  scorer.variables = state_lib.merge(state.trainable, state.frozen)
  parts = []
  for d in (source, target):
    d = pipeline.take(d, config.model.probe_max_pairs, config.train.seed)
    parts.append((probe.embeddings(scorer, d), d.lengths))
  direction, r = probe.length_direction(parts)
  logging.info("dial.length_blind: the domain loss loses the starting model's length direction (Pearson %.3f of the "
               "projections with the length in words)", r)
  return direction


def _flush(writer) -> None:
  if hasattr(writer, "flush"):
    writer.flush()


def check_resume(saved: dict, config: ml_collections.ConfigDict, workdir) -> None:
  """Stop (one line, listing the keys) when ``config`` differs from the run saved in ``workdir`` in anything but
  :data:`RESUME_SAFE_KEYS`; ``train.num_steps`` may only grow."""
  old = {**config_lib.ADDED_KEYS, **config_lib.flatten(saved)}
  new = config_lib.flatten(json.loads(config.to_json_best_effort()))
  new["model.name"] = _absolute_model_name(new["model.name"])
  safe = set(RESUME_SAFE_KEYS) - ({"train.eval_every"} if new.get("train.keep_best") else set())  # the candidates
  differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in safe)
  if differ:
    listed = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ[:8])
    raise config_lib.ConfigError(
        f"{workdir} holds another run ({listed}{', ...' if len(differ) > 8 else ''}); use a new --workdir, or rerun "
        f"with the run's own config (saved in {paths.path(workdir) / 'config.json'})")
  if new["train.num_steps"] < old.get("train.num_steps", 0):
    raise config_lib.ConfigError(f"{workdir}: train.num_steps={new['train.num_steps']} is below the saved run's "
                                 f"{old['train.num_steps']} (num_steps may only grow on resume)")


class WorkdirLock:
  """``<workdir>/lock`` held by one launch at a time (process 0): a second launch into the same workdir stops
  with a message naming the holder. A lock left by a dead process on this host is taken over.

  On a bucket the lock is a create-if-absent object (Cloud Storage enforces it). Its holder rewrites it every
  ``refresh_s``, so a lock not rewritten for ``stale_s`` (its holder died with its VM, e.g. a preempted TPU VM that
  did not get to release it) is taken over from any host."""

  refresh_s, stale_s = 60.0, 600.0

  def __init__(self, workdir):
    self.path = paths.path(workdir) / "lock"
    self.held = False
    self._stop, self._renewer = None, None

  def acquire(self) -> None:
    me = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    remote = paths.is_uri(self.path)
    try:
      paths.create_exclusive(self.path, json.dumps(me))
    except FileExistsError:
      holder = paths.read_json(self.path, {})
      holder = holder if isinstance(holder, dict) else {}
      dead = holder.get("host") == me["host"] and not _pid_alive(holder.get("pid", -1))
      stale = remote and time.time() - float(holder.get("time") or 0) > self.stale_s
      if dead or stale:
        why = "no longer runs" if dead else f"has not renewed it for {self.stale_s:.0f} s"
        logging.warning("%s: taking over the lock of process %s on %s, which %s", self.path, holder.get("pid"),
                        holder.get("host"), why)
        self.path.unlink(missing_ok=True)
        return self.acquire()
      raise RuntimeError(f"{self.path.parent} is in use by process {holder.get('pid')} on {holder.get('host')} "
                         f"(lock file {self.path}); wait for it, or delete the lock if that process is gone") from None
    self.held = True
    if remote:
      self._stop = threading.Event()
      self._renewer = threading.Thread(target=self._renew, args=(me,), daemon=True)
      self._renewer.start()

  def _renew(self, me: dict) -> None:
    while not self._stop.wait(self.refresh_s):
      try:
        self.path.write_text(json.dumps({**me, "time": time.time()}))
      except Exception as e:  # a failed renewal must not stop training
        logging.warning("%s: could not renew the lock (%s)", self.path, e)

  def release(self) -> None:
    if self.held:
      if self._stop is not None:
        self._stop.set()
        self._renewer.join(timeout=60)  # a renewal in flight must not re-create the lock after it is deleted
      self.path.unlink(missing_ok=True)
      self.held = False


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(int(pid), 0)
  except (OSError, ValueError):
    return False
  return True


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Train per ``config`` in ``workdir`` (resuming from its latest checkpoint) and return the results."""
  config_lib.validate(config)
  if config.train.warmup_steps >= config.train.num_steps:  # e.g. a smoke run of a preset: allowed, but say so
    logging.warning("train.warmup_steps=%d >= train.num_steps=%d: the learning rate never reaches its peak",
                    config.train.warmup_steps, config.train.num_steps)
  workdir = paths.absolute(workdir)  # local: absolute; gs://...: as it is
  is_main = jax.process_index() == 0
  saved_config = workdir / "config.json"
  has_checkpoints = (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir())
  if has_checkpoints and saved_config.exists():
    check_resume(json.loads(saved_config.read_text()), config, workdir)
  elif has_checkpoints:
    raise config_lib.ConfigError(f"{workdir} has checkpoints but no config.json: it is not a run this version can "
                                 "resume; use a new --workdir")
  if not paths.is_uri(workdir):
    workdir.mkdir(parents=True, exist_ok=True)
  elif not paths.bucket_exists(workdir):  # objects need no directories; mkdir would even create a missing bucket
    raise config_lib.ConfigError(f"{workdir}: the bucket does not exist or cannot be read; create it first")
  lock = WorkdirLock(workdir)
  if is_main:
    lock.acquire()
  try:
    return _train_in_workdir(config, workdir, is_main)
  finally:
    lock.release()


def _train_in_workdir(config, workdir, is_main: bool) -> dict:
  start_time = time.time()
  mesh = parallel.make_mesh(config.mesh)
  logging.info("mesh: %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, jax.process_count())
  model, variables, tokenizer, model_dir = load.build_model(config, mesh)
  source, target, evals = load_data(config, tokenizer)
  logging.info("data: source %d %s, target %d %s, eval %s", len(source), source.kind, len(target), target.kind,
               {k: len(v) for k, v in evals.items()})
  if is_main:  # the run is known to be compatible with the workdir only now
    stored = json.loads(config.to_json_best_effort())
    stored["model"]["name"] = _absolute_model_name(config.model.name)
    _write_json_atomic(workdir / "config.json", stored)
  pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else tokenizer.pad_token_id
  writer = writers_lib.make_writers(workdir, enabled=is_main, wandb_project=config.train.wandb_project,
                                    config=config.to_dict())
  checkpointer = Checkpointer(workdir, config.train.checkpoint_every, config.train.keep_checkpoints,
                              keep_best=config.train.keep_best)
  try:
    outcome = train(config, model, variables, source, target, evals, mesh=mesh, pad_id=pad_id, tokenizer=tokenizer,
                    writer=writer, checkpointer=checkpointer)
  finally:
    writer.close()
  results = {
      "setting": config.data.setting, "mode": config.dial.mode, "domain_loss": config.dial.domain_loss,
      "lambda": config.dial.lambda_, "model": config.model.name, "num_steps": config.train.num_steps,
      "seed": config.train.seed, **outcome.results, "wall_time_s": time.time() - start_time,
      "data_sizes": {"source_train": len(source), "target_train": len(target),
                     **{k: len(v) for k, v in evals.items()}},
  }
  if is_main:
    _write_json_atomic(workdir / "results.json", results)
  logging.info("results: %s", json.dumps(_strict(results["eval"])))
  return results


def _absolute_model_name(name: str) -> str:
  """A relative model path is stored absolute, so the workdir's readers find it from any directory."""
  path = Path(name).expanduser()
  return str(path.absolute()) if path.exists() else name
