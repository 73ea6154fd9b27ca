"""The quality experiment grid (issue 7): four settings x source-only / DIAL / oracle x seeds, on the CPU.

  python -m dial_jax.experiments --config=configs/experiments.py            # the full grid (resumable)
  python -m dial_jax.experiments --config=configs/experiments.py:quick      # CI's short version

How it fits a 2-core CPU: the reward model is the bundled Gemma-3-270M with only its top ``top_layers`` layer(s)
(+ final norm + head) trained in full. The 17 frozen layers below run once per text ("prefix cache",
``dial_jax/experiments/prefix_cache.py``); the top layer then trains on cached activations and computes only the
last token's query path (the reward reads the last token alone), which is exact. Every run trains with the
unchanged DIAL train step (``dial_jax/train/step.py``).

Hyperparameters are picked on ``target_val`` (never on ``target_test``): first the learning rate of the
source-only model, then DIAL's lambda at that learning rate, both with seed 0 (``select_*`` below).
"""
import ml_collections

from configs import base


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.settings = ("few_shot", "cross_lingual", "clean_to_noisy", "simple_to_complex")
  c.data_dir = base.get_base_config().data.dir
  c.results = "experiments/results.jsonl"   # append-only; one JSON object per finished run
  c.cache_dir = "experiments/cache"          # prefix caches (gitignored)
  c.artifacts_dir = "experiments/artifacts"  # embeddings for the figure (gitignored)
  c.model = "gemma-3-270m"
  c.top_layers = 1
  c.max_length = 192
  c.cache_batch_size = 8
  # Examples per split (0 = all): the prefix cache's cost is one forward pass of the frozen layers per text.
  c.limits = ml_collections.ConfigDict(dict(source_train=200, target_train=200, target_val=100, target_test=300))
  c.seeds = (0, 1, 2)
  c.oracle_seeds = (0,)
  c.select_learning_rates = (5e-5, 2e-4)  # source-only, seed 0, chosen on target_val
  c.select_lambdas = (0.01, 0.1, 1.0)            # DIAL (wdgrl), seed 0, chosen on target_val
  c.alt_domain_losses = ("mmd", "coral", "dann")  # at DIAL's chosen lambda, in alt_settings, all seeds
  c.alt_settings = ("few_shot",)
  c.alt_seeds = (0,)
  # Exploratory DIAL variants (seed 0, on top of the chosen lr and lambda), reported apart from the main table,
  # for the settings where DIAL did not beat source-only on validation.
  c.explore_settings = ("cross_lingual", "clean_to_noisy", "simple_to_complex")
  c.explore_variants = ("dial.critic_activation=gelu", "dial.lambda_=0.001", "dial.critic_iter=10",
                        "dial.lambda_warmup_steps=75")
  c.embedding_setting = "few_shot"               # the 2-D embedding figure and W-over-training curve

  # The train config every run starts from (see configs/base.py); the runner sets mode, loss, lambda, lr, seed.
  t = base.get_base_config()
  t.data.max_length = c.max_length
  t.data.min_bucket = 64
  t.data.eval_batch_size = 32
  t.train.trainable = "top_k"
  t.train.top_k_layers = c.top_layers
  t.train.batch_size = 8
  t.train.num_steps = 150
  t.train.log_every = 10
  t.train.lr_schedule = "cosine"
  t.train.warmup_steps = 10
  c.train_config = t

  if arg == "quick":  # CI: one setting, one seed, a few steps, tiny splits, no selection sweeps
    c.settings = ("few_shot",)
    c.seeds = (0,)
    c.oracle_seeds = ()
    c.select_learning_rates = (1e-4,)
    c.select_lambdas = (0.1,)
    c.alt_domain_losses = ("mmd",)
    c.limits = ml_collections.ConfigDict(dict(source_train=8, target_train=8, target_val=8, target_test=8))
    c.max_length = 64
    c.train_config.data.max_length = 64
    c.train_config.train.num_steps = 3
    c.train_config.train.batch_size = 2
    c.train_config.train.log_every = 1
    c.train_config.train.warmup_steps = 0
  elif arg not in (None, ""):
    raise ValueError(f"unknown preset {arg!r}: use '' or 'quick'")
  return c
