"""The experiment grid: frozen-feature baselines, then per seed source-only, DIAL at each candidate lambda, oracle.

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
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dial_jax import config as config_lib
from dial_jax import metrics, parallel, probe
from dial_jax.data import pipeline
from dial_jax.experiments import prefix_cache
from dial_jax.experiments import rows as row_format
from dial_jax.experiments import selection
from dial_jax.hf import load
from dial_jax.inference import Scorer, heldout_gap
from dial_jax.train import loop, writers

SPLITS = ("source_train", "source_val", "target_train", "target_val", "target_test")
EVAL_SPLITS = ("target_val", "target_test", "source_val", "source_train")  # source_train: few-shot's only source check
EMBEDDING_ROWS = 150  # texts per domain in the saved embeddings (figure)


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run of the grid. Selection runs are ordinary runs with seed 0: the main table reuses them."""

  setting: str
  mode: str           # frozen_source | frozen_oracle | source_only | dial | oracle
  domain_loss: str
  lambda_: float
  learning_rate: float
  seed: int
  variant: str = ""   # overrides "section.key=value[,section.key=value]" on top of the grid's configuration

  @property
  def run_id(self) -> str:
    base = (f"{self.setting}/{self.mode}/{self.domain_loss}/lam={self.lambda_:g}/lr={self.learning_rate:g}"
            f"/seed={self.seed}")
    return f"{base}/{self.variant}" if self.variant else base


# ---------------------------------------------------------------------------------------------- results file


read_results = row_format.read_jsonl  # all rows of the results file


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


def setting_options(exp: ml_collections.ConfigDict, setting: str) -> tuple[int, str]:
  """(max_length, truncation) of a setting: the grid's, unless ``exp.setting_overrides`` changes them."""
  extra = dict(exp.setting_overrides.get(setting, {}))
  return extra.get("max_length", exp.max_length), extra.get("truncation", exp.truncation)


def prepare_setting(exp: ml_collections.ConfigDict, setting: str, *, base_model=None) -> SettingData:
  """Load and tokenize the splits (seeded, group-stratified subsets of ``exp.limits``), then load (or compute once)
  the prefix cache of the frozen layers."""
  model, variables, model_dir = base_model or load.load_reward_model(exp.model)
  tokenizer = load.load_tokenizer(model_dir)
  max_length, truncation = setting_options(exp, setting)
  root = Path(exp.data_dir) / setting
  domains = {}
  for split in SPLITS:
    path = root / f"{split}.jsonl"
    if split == "source_val" and (not path.exists() or not path.read_text().strip()):
      continue  # few-shot has no source validation split
    domain = pipeline.load_domain(path, tokenizer, max_length, limit=exp.limits[split], seed=exp.data_seed,
                                  truncation=truncation)
    if domain.n_skipped:
      logging.warning("%s/%s: skipped %d bad rows", setting, split, domain.n_skipped)
    domains[split] = domain
  token_lists = prefix_cache.token_lists_of(domains.values())
  cfg = model.config
  bottom_cfg, top_cfg = prefix_cache.split_config(cfg, exp.top_layers)
  bottom, top = prefix_cache.split_params(variables["params"], cfg.num_layers, exp.top_layers)
  key = prefix_cache.fingerprint(token_lists, exp.model, exp.top_layers, max_length)
  path = Path(exp.cache_dir) / f"{setting}-{key}.npy"
  plan = dict(batch_size=exp.cache_batch_size, max_length=max_length, min_bucket=exp.train_config.data.min_bucket)
  cache, seconds = prefix_cache.load_or_compute(
      path, prefix_cache.cache_shape(token_lists, cfg.hidden_size),
      lambda out, done, checkpoint: prefix_cache.compute_prefix_cache(
          bottom_cfg, bottom, token_lists, pad_id=cfg.pad_token_id, **plan, out=out, batches_done=done,
          checkpoint=checkpoint), plan)
  logging.info("%s: prefix cache %s (%d rows), computed in %s s", setting, path, cache.shape[0],
               "?" if seconds is None else f"{seconds:.0f}")
  reindexed = dict(zip(domains, prefix_cache.reindex(list(domains.values()))))
  return SettingData(setting, reindexed, prefix_cache.top_model(top_cfg, cache.shape[0]), top, cache, seconds,
                     {k: len(v) for k, v in domains.items()})


def run_config(exp: ml_collections.ConfigDict, spec: RunSpec) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(exp.train_config.to_dict())
  c.data.setting = spec.setting
  c.data.max_length, c.data.truncation = setting_options(exp, spec.setting)
  frozen = spec.mode.startswith("frozen_")  # baselines train nothing; their config is source-only's
  c.dial.mode = "source_only" if frozen else spec.mode
  c.dial.domain_loss, c.dial.lambda_ = ("wdgrl" if frozen else spec.domain_loss), spec.lambda_
  c.train.learning_rate, c.train.seed, c.model.head_seed = spec.learning_rate, spec.seed, spec.seed
  for override in filter(None, spec.variant.split(",")):
    key, _, value = override.partition("=")
    section, name = key.split(".")
    old = c[section][name]
    c[section][name] = type(old)(value) if not isinstance(old, bool) else value.lower() in ("1", "true")
  return config_lib.validate(c)


def _embeddings(scorer: Scorer, domain: pipeline.Domain) -> np.ndarray:
  texts = (domain.chosen if domain.kind == "pairs" else domain.texts)[:EMBEDDING_ROWS]
  return scorer.score_tokens(texts, return_embeddings=True)[1]


def initial_variables(data: SettingData, config: ml_collections.ConfigDict) -> dict:
  """The top model's starting point: the frozen top layer(s) and a fresh head drawn from ``model.head_seed``."""
  hidden = data.model.config.hidden_size
  head = jax.random.normal(jax.random.PRNGKey(config.model.head_seed), (hidden, 1), jnp.float32) * 0.02
  return prefix_cache.top_variables(data.cache, data.top_backbone, head)


def train_run(data: SettingData, config: ml_collections.ConfigDict, *, save_embeddings: Path | None = None) -> dict:
  """Train the top model through the one training loop (``dial_jax.train.loop.train``) per ``config``; evaluate on
  the eval splits, keeping the test split's per-example scores for paired bootstraps."""
  config_lib.validate(config)
  start = time.time()
  model = data.model
  variables = initial_variables(data, config)
  before = None
  if save_embeddings is not None:
    scorer = Scorer(model, variables, None, batch_size=config.data.eval_batch_size, max_length=config.data.max_length)
    before = {d: _embeddings(scorer, data.domains[d]) for d in ("source_train", "target_val")}
  memory = writers.MemoryWriter()
  evals = {split: data.domains[split] for split in EVAL_SPLITS if split in data.domains}
  outcome = loop.train(config, model, variables, data.domains["source_train"], data.domains["target_train"], evals,
                       mesh=parallel.make_mesh(config.mesh), pad_id=model.config.pad_token_id, writer=memory,
                       progress=False, keep_eval_scores=True)
  train_seconds = time.time() - start
  history = [{k: v for k, v in row.items() if k != "kind"} for row in memory.rows if row["kind"] == "train"]
  gaps = [row for row in memory.rows if row["kind"] == "heldout_gap"]
  if save_embeddings is not None:
    scorer = Scorer(model, outcome.variables, None, batch_size=config.data.eval_batch_size,
                    max_length=config.data.max_length)
    after = {d: _embeddings(scorer, data.domains[d]) for d in ("source_train", "target_val")}
    save_embeddings.parent.mkdir(parents=True, exist_ok=True)
    np.savez(save_embeddings, **{f"before_{k}": v for k, v in before.items()},
             **{f"after_{k}": v for k, v in after.items()})
  evals = outcome.results["eval"]
  scores = {split: evals[split].pop("margins", None) or evals[split].pop("rewards", None) for split in evals}
  out = {"eval": evals, "test_scores": scores.get("target_test"), "history": history,
         "heldout_gap": outcome.results["heldout_gap"],
         "nonfinite_steps": outcome.results["skipped_nonfinite_steps"], "train_seconds": train_seconds,
         "seconds": time.time() - start}
  if "kept_step" in outcome.results:  # train.keep_best: eval and test_scores are that step's model's
    out["kept_step"] = outcome.results["kept_step"]
  if len(gaps) > 1:  # measured during training too (train.eval_every): the gap's curve, as the balance curves
    out["heldout_gap_curve"] = {k: [[g["step"], float(f"{g[k]:.4g}")] for g in gaps] for k in ("mean", "mmd")}
    # and each split's headline metric at the same evaluations (accuracy or Pearson), so a rule that stops early on
    # label-free signals (the gap, the source check) can be read against what it would have cost on the target
    out["eval_curve"] = {}
    for row in memory.rows:
      value = selection.metric_of(row)
      if row["kind"].startswith("eval/") and value is not None:
        out["eval_curve"].setdefault(row["kind"][len("eval/"):], []).append([row["step"], float(f"{value:.4g}")])
  return out


# ---------------------------------------------------------------------------------------------- the grid


def grid(exp: ml_collections.ConfigDict, setting: str) -> Iterator[RunSpec]:
  """The runs of one setting, seed by seed: frozen-feature baselines, then per seed source-only, DIAL at every
  candidate lambda (so both selection rules pick from finished runs) and oracle; then the variants."""
  lr = exp.train_config.train.learning_rate
  yield RunSpec(setting, "frozen_source", "none", 0.0, lr, 0)
  yield RunSpec(setting, "frozen_oracle", "none", 0.0, lr, 0)
  for seed in exp.seeds:
    yield RunSpec(setting, "source_only", "wdgrl", 0.0, lr, seed)
    for lam in exp.lambdas:
      yield RunSpec(setting, "dial", "wdgrl", lam, lr, seed)
    yield RunSpec(setting, "oracle", "wdgrl", 0.0, lr, seed)
  for variant, lam in exp.variants:
    for seed in exp.variant_seeds:
      yield RunSpec(setting, "dial", "wdgrl", lam, lr, seed, variant)


def embeddings_path(exp: ml_collections.ConfigDict, spec: RunSpec) -> Path:
  """Where a run saves source/target embeddings before and after training (for the report's figure); per grid, as
  two grids share run ids."""
  return Path(exp.artifacts_dir) / "embeddings" / grid_fingerprint(exp) / (spec.run_id.replace("/", "_") + ".npz")


# Config keys added after the current grid's runs were made, with the value at which they compute what the grid did.
NEUTRAL_KEYS = config_lib.ADDED_KEYS


def grid_fingerprint(exp: ml_collections.ConfigDict) -> str:
  """Hash of everything that defines a run besides its RunSpec: rows made under other settings never count."""
  parts = {k: exp[k] for k in ("model", "top_layers", "max_length", "truncation", "data_seed")}
  parts["limits"] = exp.limits.to_dict()
  parts["setting_overrides"] = exp.setting_overrides.to_dict()
  train_config = exp.train_config.to_dict()
  for key, default in NEUTRAL_KEYS.items():  # keys added after the grid started, at values that change nothing
    section, name = key.split(".")
    if train_config[section].get(name) == default:
      train_config[section].pop(name)
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


def frozen_run(data: SettingData, config: ml_collections.ConfigDict, oracle: bool) -> dict:
  """The frozen-feature baseline (``dial_jax.probe``): pairwise logistic regression on the untrained model's
  last-token features, fitted on the source pairs (``oracle``: on the target pairs, with their labels); L2 chosen on
  the fit split's validation (source_val, else target_val for the oracle, else a fixed default)."""
  start = time.time()
  scorer = Scorer(data.model, initial_variables(data, config), None, batch_size=config.data.eval_batch_size,
                  max_length=config.data.max_length)
  fit_split = "target_train" if oracle else "source_train"
  val_split = "target_val" if oracle else ("source_val" if "source_val" in data.domains else None)
  features = {split: probe.embeddings(scorer, data.domains[split])
              for split in {fit_split, val_split, *EVAL_SPLITS} if split in data.domains}
  diffs = lambda split: probe.pair_differences(data.domains[split], features[split], seed=config.train.seed)
  coef, l2 = probe.fit(diffs(fit_split), diffs(val_split)[0] if val_split else None)
  evals, scores = {}, {}
  for split in EVAL_SPLITS:
    if split not in data.domains:
      continue
    d = data.domains[split]
    h, h_rejected = features[split]
    if d.kind == "pairs":
      margins = (h - h_rejected) @ coef
      evals[split] = {"accuracy": probe.pairwise_accuracy(margins), "n": len(d), "chance": 0.5}
      scores[split] = margins.tolist()
    else:
      rewards = h @ coef
      evals[split] = {"pearson": metrics.pearson(rewards, d.scores), "spearman": metrics.spearman(rewards, d.scores),
                      "n": len(d), "chance": 0.0}
      scores[split] = rewards.tolist()
  gap = heldout_gap({split: np.concatenate([h for h in features[split] if h is not None]) for split in features})
  return {"eval": evals, "test_scores": scores.get("target_test"), "history": [], "heldout_gap": gap,
          "nonfinite_steps": 0, "l2": l2, "train_seconds": 0.0, "seconds": time.time() - start}


def run_grid(exp: ml_collections.ConfigDict, *, only_settings=None, max_runs: int = 0) -> int:
  """Run every missing run of the grid (settings in order); returns how many ran."""
  results = Path(exp.results)
  fingerprint = grid_fingerprint(exp)
  base_model = None  # loaded once, and only when some setting has a run to make
  ran = 0
  for setting in exp.settings:
    if only_settings and setting not in only_settings:
      continue
    done = {r["run_id"] for r in read_results(results) if r.get("grid") == fingerprint}
    todo = [s for s in grid(exp, setting) if s.run_id not in done]
    if not todo:
      continue
    base_model = base_model or load.load_reward_model(exp.model)
    data = prepare_setting(exp, setting, base_model=base_model)
    for spec in todo:
      if max_runs and ran >= max_runs:
        return ran
      config = run_config(exp, spec)
      logging.info("run %s", spec.run_id)
      if spec.mode.startswith("frozen_"):
        out = frozen_run(data, config, oracle=spec.mode == "frozen_oracle")
      else:
        save = None
        if setting == exp.embedding_setting and spec.seed == 0 and not spec.variant:
          save = embeddings_path(exp, spec)
        out = train_run(data, config, save_embeddings=save)
      row = {"run_id": spec.run_id, **dataclasses.asdict(spec), **out,
             "data_sizes": data.sizes, "cache_seconds": data.cache_seconds, "model": exp.model,
             "top_layers": exp.top_layers, "max_length": config.data.max_length, "num_steps": config.train.num_steps,
             "batch_size": config.train.batch_size, "grid": fingerprint, "commit": git_commit(),
             "time": time.time()}
      row.pop("lambda_")
      row["lambda"] = config.dial.lambda_  # effective (a variant may override it)
      append_result(results, row_format.compact(row, exp.artifacts_dir))
      ran += 1
      logging.info("done %s: val %s test %s (%.0f s)", spec.run_id, target_metric(row),
                   target_metric(row, "target_test"), out["seconds"])
  return ran
