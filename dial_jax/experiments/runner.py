"""The experiment grid: selection runs on target_val, then source-only / DIAL / oracle / alternative losses x seeds.

Every finished run appends one JSON line to the results file (flushed and fsynced); a run whose ``run_id`` is
already there is skipped, so an interrupted grid resumes where it stopped and loses one run at most.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from dial_jax.data import batching, pipeline
from dial_jax.experiments import prefix_cache
from dial_jax.hf import load
from dial_jax.inference import Scorer, evaluate_domain
from dial_jax.train import state as state_lib
from dial_jax.train import step as step_lib

SPLITS = ("source_train", "target_train", "target_val", "target_test")
EVAL_SPLITS = ("target_val", "target_test")
EMBEDDING_ROWS = 150  # texts per domain in the saved embeddings (figure)


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run of the grid. Selection runs are ordinary runs with seed 0: the main table reuses them."""

  setting: str
  mode: str           # source_only | dial | oracle
  domain_loss: str
  lambda_: float
  learning_rate: float
  seed: int
  variant: str = ""   # an exploratory override "section.key=value" on top of the chosen configuration

  @property
  def run_id(self) -> str:
    base = (f"{self.setting}/{self.mode}/{self.domain_loss}/lam={self.lambda_:g}/lr={self.learning_rate:g}"
            f"/seed={self.seed}")
    return f"{base}/{self.variant}" if self.variant else base


# ---------------------------------------------------------------------------------------------- results file


def read_results(path: str | os.PathLike) -> list[dict]:
  """All rows of the results file (missing file = none). A torn last line (crash mid-write) is ignored."""
  path = Path(path)
  if not path.exists():
    return []
  rows = []
  lines = path.read_text(encoding="utf-8").splitlines()
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if n == len(lines):
        logging.warning("%s: ignoring a torn last line (%s)", path, e)
      else:
        raise ValueError(f"{path}: line {n} is not valid JSON: {e}") from e
  return rows


def append_result(path: str | os.PathLike, row: dict) -> None:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps(row, sort_keys=True) + "\n")
    f.flush()
    os.fsync(f.fileno())


def target_metric(setting_rows_or_eval: dict, split: str = "target_val") -> float:
  """The setting's target metric of one run: accuracy (pairs) or Pearson (scored texts)."""
  values = setting_rows_or_eval["eval"][split]
  return values["accuracy"] if "accuracy" in values else values["pearson"]


# ---------------------------------------------------------------------------------------------- one setting


@dataclasses.dataclass
class SettingData:
  """A setting's splits re-indexed into its prefix cache, the top model and its frozen starting point."""

  name: str
  domains: dict[str, pipeline.Domain]
  model: Any
  top_backbone: dict
  cache: np.ndarray
  cache_seconds: float | None   # time to compute the cache (None: made before that was recorded)
  sizes: dict[str, int]


def prepare_setting(exp: ml_collections.ConfigDict, setting: str, *, base_model=None) -> SettingData:
  """Load and tokenize the splits, then load (or compute once) the prefix cache of the frozen layers."""
  model, variables, model_dir = base_model or load.load_reward_model(exp.model)
  tokenizer = load.load_tokenizer(model_dir)
  root = Path(exp.data_dir) / setting
  domains = {}
  for split in SPLITS:
    domain = pipeline.load_domain(root / f"{split}.jsonl", tokenizer, exp.max_length, limit=exp.limits[split])
    if domain.n_skipped:
      logging.warning("%s/%s: skipped %d bad rows", setting, split, domain.n_skipped)
    domains[split] = domain
  token_lists = prefix_cache.token_lists_of(domains.values())
  cfg = model.config
  bottom_cfg, top_cfg = prefix_cache.split_config(cfg, exp.top_layers)
  bottom, top = prefix_cache.split_params(variables["params"], cfg.num_layers, exp.top_layers)
  key = prefix_cache.fingerprint(token_lists, exp.model, exp.top_layers, exp.max_length)
  path = Path(exp.cache_dir) / f"{setting}-{key}.npy"
  cache, seconds = prefix_cache.load_or_compute(path, lambda: prefix_cache.compute_prefix_cache(
      bottom_cfg, bottom, token_lists, pad_id=cfg.pad_token_id, batch_size=exp.cache_batch_size,
      max_length=exp.max_length, min_bucket=exp.train_config.data.min_bucket))
  logging.info("%s: prefix cache %s (%d rows), computed in %s s", setting, path, cache.shape[0],
               "?" if seconds is None else f"{seconds:.0f}")
  reindexed = dict(zip(domains, prefix_cache.reindex(list(domains.values()))))
  return SettingData(setting, reindexed, prefix_cache.top_model(top_cfg, cache.shape[0]), top, cache, seconds,
                     {k: len(v) for k, v in domains.items()})


def run_config(exp: ml_collections.ConfigDict, spec: RunSpec) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(exp.train_config.to_dict())
  c.data.setting = spec.setting
  c.dial.mode, c.dial.domain_loss, c.dial.lambda_ = spec.mode, spec.domain_loss, spec.lambda_
  c.train.learning_rate, c.train.seed, c.model.head_seed = spec.learning_rate, spec.seed, spec.seed
  if spec.variant:
    key, _, value = spec.variant.partition("=")
    section, name = key.split(".")
    old = c[section][name]
    c[section][name] = type(old)(value) if not isinstance(old, bool) else value.lower() in ("1", "true")
  return c


def _embeddings(scorer: Scorer, domain: pipeline.Domain) -> np.ndarray:
  texts = (domain.chosen if domain.kind == "pairs" else domain.texts)[:EMBEDDING_ROWS]
  return scorer.score_tokens(texts, return_embeddings=True)[1]


def train_run(data: SettingData, config: ml_collections.ConfigDict, *, save_embeddings: Path | None = None) -> dict:
  """Train the top model with the DIAL train step per ``config``; evaluate on the target splits."""
  step_lib.validate(config)
  start = time.time()
  model = data.model
  hidden = model.config.hidden_size
  head = jax.random.normal(jax.random.PRNGKey(config.model.head_seed), (hidden, 1), jnp.float32) * 0.02
  variables = prefix_cache.top_variables(data.cache, data.top_backbone, head)
  tx, critic_tx = state_lib.make_optimizer(config), state_lib.make_critic_optimizer(config)
  critic = state_lib.make_critic(config)
  state, shardings = state_lib.create_train_state(variables, config, model.config.num_layers, hidden, tx, critic_tx)
  batches = pipeline.PairedBatches(
      data.domains["source_train"], data.domains["target_train"], batch_size=config.train.batch_size,
      grad_accum_steps=config.train.grad_accum_steps,
      buckets=batching.bucket_lengths(config.data.max_length, config.data.min_bucket),
      pad_id=model.config.pad_token_id, seed=config.train.seed)
  step_fn = step_lib.make_train_step(model, critic, tx, critic_tx, config, state_shardings=shardings,
                                     batch_sharding=NamedSharding(shardings.step.mesh, PartitionSpec()))
  scorer = Scorer(model, variables, None, batch_size=config.data.eval_batch_size, max_length=config.data.max_length)
  before = None
  if save_embeddings is not None:
    before = {d: _embeddings(scorer, data.domains[d]) for d in ("source_train", "target_val")}

  history, n_nonfinite = [], 0
  for step in range(config.train.num_steps):
    state, metrics = step_fn(state, batches.batch(step))
    if int(metrics["nonfinite"]):
      n_nonfinite += 1
    if (step + 1) % config.train.log_every == 0 or step + 1 == config.train.num_steps:
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      history.append({"step": step + 1, **{k: m[k] for k in ("loss", "source_loss", "domain_loss", "wasserstein",
                                                               "source_accuracy", "target_accuracy") if k in m}})
  train_seconds = time.time() - start
  scorer.variables = state_lib.merge(state.trainable, state.frozen)
  evals = {split: evaluate_domain(scorer, data.domains[split]) for split in EVAL_SPLITS}
  if save_embeddings is not None:
    after = {d: _embeddings(scorer, data.domains[d]) for d in ("source_train", "target_val")}
    save_embeddings.parent.mkdir(parents=True, exist_ok=True)
    np.savez(save_embeddings, **{f"before_{k}": v for k, v in before.items()},
             **{f"after_{k}": v for k, v in after.items()})
  return {"eval": evals, "history": history, "nonfinite_steps": n_nonfinite, "train_seconds": train_seconds,
          "seconds": time.time() - start}


# ---------------------------------------------------------------------------------------------- the grid


def _best(rows: list[dict], key: Callable[[dict], Any], candidates: list) -> Any:
  """The candidate whose seed-0 run has the best target_val metric (ties: the earlier); None until all ran."""
  scores = {key(r): target_metric(r) for r in rows if r["seed"] == 0 and not r.get("variant")}
  if any(c not in scores for c in candidates):
    return None
  return max(candidates, key=lambda c: (scores[c], -candidates.index(c)))


def selections(exp: ml_collections.ConfigDict, setting: str, rows: list[dict]) -> tuple[float | None, float | None]:
  """(learning rate, lambda) chosen on target_val from the setting's finished runs (None while undecided)."""
  mine = [r for r in rows if r["setting"] == setting]
  lr = _best([r for r in mine if r["mode"] == "source_only"], lambda r: r["learning_rate"],
             list(exp.select_learning_rates))
  if lr is None:
    return None, None
  lam = _best([r for r in mine if r["mode"] == "dial" and r["domain_loss"] == "wdgrl" and r["learning_rate"] == lr],
              lambda r: r["lambda"], list(exp.select_lambdas))
  return lr, lam


def grid(exp: ml_collections.ConfigDict, setting: str, rows: list[dict]) -> Iterator[RunSpec]:
  """The runs of one setting in order; later ones need the selections that earlier rows settle."""
  for lr in exp.select_learning_rates:
    yield RunSpec(setting, "source_only", "wdgrl", 0.0, lr, 0)
  lr, lam = selections(exp, setting, rows)
  if lr is None:
    return
  for lam_i in exp.select_lambdas:
    yield RunSpec(setting, "dial", "wdgrl", lam_i, lr, 0)
  if lam is None:
    return
  for seed in exp.seeds:
    yield RunSpec(setting, "source_only", "wdgrl", 0.0, lr, seed)
    yield RunSpec(setting, "dial", "wdgrl", lam, lr, seed)
  for seed in exp.oracle_seeds:
    yield RunSpec(setting, "oracle", "wdgrl", 0.0, lr, seed)
  if setting in exp.alt_settings:
    for loss in exp.alt_domain_losses:
      for seed in exp.alt_seeds:
        yield RunSpec(setting, "dial", loss, lam, lr, seed)
  if setting in exp.explore_settings:
    for variant in exp.explore_variants:
      yield RunSpec(setting, "dial", "wdgrl", lam, lr, 0, variant)


def embeddings_path(exp: ml_collections.ConfigDict, spec: RunSpec) -> Path:
  """Where a run saves source/target embeddings before and after training (for the report's figure)."""
  return Path(exp.artifacts_dir) / (spec.run_id.replace("/", "_") + ".npz")


PADDED_ONLY_KEYS = ("packing", "pack_row_length", "pack_rows_multiple")


def grid_fingerprint(exp: ml_collections.ConfigDict) -> str:
  """Hash of everything that defines a run besides its RunSpec: rows made under other settings never count."""
  parts = {k: exp[k] for k in ("model", "top_layers", "max_length")}
  parts["limits"] = exp.limits.to_dict()
  train_config = exp.train_config.to_dict()
  for key in PADDED_ONLY_KEYS:  # the grid's batches are always padded (see train_run), so these change nothing
    train_config["data"].pop(key, None)
  parts["train_config"] = train_config
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def git_commit() -> str:
  """HEAD's short hash, with ``-dirty`` when tracked files differ from it."""
  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "dial_jax", "configs"]).returncode != 0
    return head + ("-dirty" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def run_grid(exp: ml_collections.ConfigDict, *, only_settings=None, max_runs: int = 0) -> int:
  """Run every missing run of the grid (settings in order); returns how many ran."""
  results = Path(exp.results)
  fingerprint = grid_fingerprint(exp)
  base_model = None  # loaded once, and only when some setting has a run to make
  ran = 0
  for setting in exp.settings:
    if only_settings and setting not in only_settings:
      continue
    data = None
    while True:
      rows = [r for r in read_results(results) if r.get("grid") == fingerprint]
      done = {r["run_id"] for r in rows}
      todo = [s for s in grid(exp, setting, rows) if s.run_id not in done]
      if not todo:
        break
      if max_runs and ran >= max_runs:
        return ran
      spec = todo[0]
      if data is None:
        base_model = base_model or load.load_reward_model(exp.model)
        data = prepare_setting(exp, setting, base_model=base_model)
      config = run_config(exp, spec)
      save = None
      if setting == exp.embedding_setting and spec.seed == 0 and spec.domain_loss == "wdgrl":
        save = embeddings_path(exp, spec)
      logging.info("run %s", spec.run_id)
      out = train_run(data, config, save_embeddings=save)
      row = {"run_id": spec.run_id, **dataclasses.asdict(spec), "lambda": spec.lambda_, **out,
             "data_sizes": data.sizes, "cache_seconds": data.cache_seconds, "model": exp.model,
             "top_layers": exp.top_layers, "max_length": exp.max_length, "num_steps": config.train.num_steps,
             "batch_size": config.train.batch_size, "grid": fingerprint, "commit": git_commit(),
             "time": time.time()}
      row.pop("lambda_")
      row["lambda"] = config.dial.lambda_  # effective (a variant may override it)
      append_result(results, row)
      ran += 1
      logging.info("done %s: val %.4f test %.4f (%.0f s)", spec.run_id, target_metric(row),
                   target_metric(row, "target_test"), out["seconds"])
  return ran
