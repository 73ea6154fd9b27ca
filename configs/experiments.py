"""The quality experiment grid (issue 13): four settings x frozen-feature baselines / source-only / DIAL / oracle.

  python -m dial_jax.experiments --config=configs/experiments.py            # the full grid (resumable)
  python -m dial_jax.experiments --config=configs/experiments.py:lpft --report=experiments/lpft/REPORT.md
  python -m dial_jax.experiments --config=configs/experiments.py:lpft_sp2 --report=experiments/lpft_sp2/REPORT.md
  python -m dial_jax.experiments --config=configs/experiments.py:essays512 --report=experiments/essays512/REPORT.md
  python -m dial_jax.experiments --config=configs/experiments.py:lpft_all --report=experiments/lpft_all/REPORT.md
  python -m dial_jax.experiments --config=configs/experiments.py:lpft_sp --report=experiments/lpft_sp/REPORT.md
  python -m dial_jax.experiments --config=configs/experiments.py:lpft_sp_control   # lpft_sp + a shuffled control
  python -m dial_jax.experiments --config=configs/experiments.py:lpft_control      # lpft + the same control
  python -m dial_jax.experiments --config=configs/experiments.py:lpft_all_control  # lpft_all + the same control
  python -m dial_jax.experiments --config=configs/experiments.py:smollm_sp_control # lpft_sp_control on SmolLM2-135M
  python -m dial_jax.experiments --config=configs/experiments.py:smollm_fresh      # its plain grid at 5 new seeds
  python -m dial_jax.experiments --config=configs/experiments.py:lpft_sp_fresh     # lpft_sp's plain grid, 5 new seeds
  python -m dial_jax.experiments --config=configs/experiments.py:lpft_sp_control_fresh  # its control at seeds 5-9
  python -m dial_jax.experiments --config=configs/experiments.py:lpft_sp_blind     # lpft_sp_control + length-blind
  python -m dial_jax.experiments --config=configs/experiments.py:lpft_sp_matched   # that + length-matched targets
  python -m dial_jax.experiments --config=configs/experiments.py:lpft_sp_matched_fresh  # that at seeds 5-9
  python -m dial_jax.experiments --config=configs/experiments.py:lpft_sp_matched1 # lpft_sp_matched + lambda 1
  python -m dial_jax.experiments --config=configs/experiments.py:lpft_sp10         # lpft_sp + lpft_sp_fresh, 10 seeds
  python -m dial_jax.experiments --config=configs/experiments.py:lpft_sp_l2        # lpft_sp, probe L2 fixed at 1e-3
  python -m dial_jax.experiments --config=configs/experiments.py:lpft_sp_l2wd      # that, 4 settings, decay 100
  python -m dial_jax.experiments --config=configs/experiments.py:lpft_sp_gapcurve  # lpft_sp, held-out gap per 40 steps
  python -m dial_jax.experiments --config=configs/experiments.py:lpft_sp_es        # lpft_sp, early stop on source check
  python -m dial_jax.experiments --config=configs/experiments.py:lpft_sp_es_control  # that + the shuffled control
  python -m dial_jax.experiments --config=configs/experiments.py:quick      # CI's short version

How it fits a 2-core CPU: the reward model is a bundled backbone (``model``: Gemma-3-270M; SmolLM2-135M in
``:smollm_sp_control``) with only its top ``top_layers`` layer(s) (+ final norm + head) trained in full. The frozen
layers below run once per text ("prefix cache", ``dial_jax/experiments/prefix_cache.py``); the top layer then trains
on cached activations through the one training loop (``dial_jax.train.loop.train``) and the unchanged DIAL step.

Nothing is selected on ``target_test``. DIAL runs at every candidate lambda for every seed, so the report can apply
both selection rules to finished runs (``dial_jax/experiments/selection.py``): the label-free rule (what a DIAL
user can do) and, for reference, the best lambda on ``target_val`` (which needs target labels).
"""
import ml_collections

from configs import base


def _with_shuffled_control(c: ml_collections.ConfigDict, settings) -> ml_collections.ConfigDict:
  """A grid (same fingerprint, so the same rows) whose only variant is the shuffled-domains control at every lambda
  and seed, its settings in the given order."""
  c.settings = tuple(settings)
  c.variants = tuple(("dial.domain_labels=shuffled", lam) for lam in c.lambdas)
  c.variant_seeds = c.seeds
  return c


def _default():
  """The study's first grid (no preset): the regime every preset starts from."""
  c = ml_collections.ConfigDict()
  c.settings = ("few_shot", "cross_lingual", "clean_to_noisy", "simple_to_complex")
  c.data_dir = base.get_base_config().data.dir
  c.results = "experiments/results.jsonl"   # append-only; one JSON object per finished run
  c.cache_dir = "experiments/cache"          # prefix caches (gitignored)
  c.artifacts_dir = "experiments/artifacts"  # embeddings for the figure (gitignored)
  c.model = "gemma-3-270m"
  c.top_layers = 1
  c.max_length = 256
  c.truncation = "end"
  # Essays: keep the start, as the authors did (their opening carries the content; nearly all exceed 256 tokens).
  c.setting_overrides = ml_collections.ConfigDict({"simple_to_complex": {"truncation": "start"}})
  c.cache_batch_size = 8
  # Examples per split (0 = all), drawn once (seed data_seed, stratified by group) and shared by every run.
  c.limits = ml_collections.ConfigDict(dict(source_train=400, source_val=150, target_train=400, target_val=200,
                                            target_test=400))
  c.data_seed = 0
  c.seeds = (0, 1, 2, 3, 4)
  c.lambdas = (1.0, 10.0, 100.0)    # DIAL candidates (scale-aware critic: W is in units of the embedding RMS)
  # Variants: (overrides, lambda), at variant_seeds. The authors' critic (raw embeddings) at the paper's lambda.
  c.variants = (("dial.critic_input_scale=none", 0.01),)
  c.variant_seeds = (0, 1, 2)
  c.embedding_setting = "few_shot"               # the 2-D embedding figure and W-over-training curve

  # The train config every run starts from (see configs/base.py); the runner sets mode, lambda, seed.
  # The regime is ``base.study_regime``; the CPU presets of configs/<setting>.py train in that of ``base.STUDY_GRID``.
  t = base.study_regime(base.get_base_config())
  t.data.max_length = c.max_length
  t.data.min_bucket = 64
  t.data.eval_batch_size = 32
  t.data.packing = "none"           # the top model reads cache rows: padded batches
  t.train.top_k_layers = c.top_layers
  t.train.log_every = 10
  t.train.checkpoint_every = 0
  c.train_config = t
  return c


def _lpft():  # the head starts at the frozen-feature probe (LP-FT) and moves at the body's learning rate
  c = _default()
  base.lpft(c.train_config)
  c.variants = ()
  return c


def _lpft_all():  # LP-FT with every prepared target training pair and up to 1,000 source pairs
  c = _default()
  base.lpft(c.train_config)
  c.variants = ()
  c.settings = ("few_shot", "clean_to_noisy", "cross_lingual", "simple_to_complex")
  c.limits.source_train = 1000
  c.limits.target_train = 0
  return c


def _lpft_sp():  # lpft_all, with every parameter decayed toward its start (L2-SP): the CPU presets' regime
  c = get_config("lpft_all")
  base.decay_to_start(c.train_config)
  # DIAL aligning the pairs' chosen - rejected differences (what a linear head reads) instead of the embeddings,
  # at every seed and lambda, so both rules choose its lambda and the report checks the bars with it. The critic
  # must be nonlinear there (a linear one sees only means, and both-sign differences have mean 0 in both domains).
  # The second family: the same with a 10x faster critic (the first one's W stayed ~0: too weak a critic, or nothing
  # to find?). The third and fourth: multi-kernel MMD (no critic to train, so its value cannot grow as a critic
  # converges and "W falls" reads the features alone) on the differences and on the embeddings.
  c.variants = tuple((v, lam) for v in ("dial.align=pair_differences,dial.critic_activation=gelu",
                                        "dial.align=pair_differences,dial.critic_activation=gelu,"
                                        "dial.critic_learning_rate=0.001",
                                        "dial.align=pair_differences,dial.domain_loss=mmd",
                                        "dial.domain_loss=mmd") for lam in c.lambdas)
  c.variant_seeds = c.seeds
  return c


def _lpft_sp_control():  # lpft_sp's grid (same runs and rows) plus the shuffled-domains control
  # DIAL with the domain loss comparing random halves of the mixed source and target rows (no domain information,
  # same form of gradient): does DIAL's gain survive without the domain labels? Settings where DIAL was above
  # source-only in lpft_sp first.
  c = _with_shuffled_control(get_config("lpft_sp"),
                             ("simple_to_complex", "cross_lingual", "few_shot", "clean_to_noisy"))
  return c


def _lpft_control():  # lpft's grid (same runs and rows) plus the shuffled-domains control
  # The same control in the grid where source-only drifts below its probe (no decay toward the start) and DIAL
  # gained in few-shot and clean-to-noisy: do those gains need the domain labels? Those two settings first.
  c = _with_shuffled_control(get_config("lpft"),
                             ("few_shot", "clean_to_noisy", "cross_lingual", "simple_to_complex"))
  return c


def _lpft_all_control():  # lpft_all's grid (same runs and rows) plus the shuffled-domains control
  # The third LP-FT regime: no decay, every target pair. Clean-to-noisy (DIAL's one gain over 0.01 there) first.
  c = _with_shuffled_control(get_config("lpft_all"),
                             ("clean_to_noisy", "few_shot", "cross_lingual", "simple_to_complex"))
  return c


def _smollm_sp_control():  # lpft_sp_control's design on the second bundled backbone (new prefix caches)
  # Does what the Gemma grids found hold on another backbone (SmolLM2-135M: Llama architecture, English only)?
  # Simple-to-complex (Gemma's one clear DIAL gain) and cross-lingual (the widest gap for an English model) first.
  c = _with_shuffled_control(get_config("lpft_sp"),
                             ("simple_to_complex", "cross_lingual", "clean_to_noisy", "few_shot"))
  c.model = "smollm2-135m"
  return c


def _smollm_fresh():  # smollm_sp_control's plain grid (same fingerprint: its probes are reused) at 5 new
  # seeds, run after every run measures its held-out domain gap: the test of the held-out label-free rule
  # (selection.label_free_heldout_lambda), fixed in experiments/smollm_fresh/NOTES.md before these runs.
  c = get_config("smollm_sp_control")
  c.seeds = (5, 6, 7, 8, 9)
  c.variants, c.variant_seeds = (), ()
  return c


def _lpft_sp_fresh():  # lpft_sp's plain grid (same fingerprint: its probes are reused) at 5 new seeds, on
  # the presets' backbone: the second test of the held-out label-free rule (experiments/lpft_sp_fresh/NOTES.md).
  # Clean-to-noisy first: the setting where the two label-free rules are expected to disagree.
  c = get_config("lpft_sp")
  c.settings = ("clean_to_noisy", "simple_to_complex", "cross_lingual", "few_shot")
  c.seeds = (5, 6, 7, 8, 9)
  c.variants, c.variant_seeds = (), ()
  return c


def _lpft_sp_control_fresh():  # the shuffled-domains control of lpft_sp_control at lpft_sp_fresh's seeds (5-9;
  # same fingerprint, so their source-only and DIAL runs are reused) at lambda 10 and 100: do the control's findings
  # replicate out of sample? (predictions: experiments/lpft_sp_control_fresh/NOTES.md, written before the runs)
  c = get_config("lpft_sp_fresh")
  c.settings = ("simple_to_complex", "clean_to_noisy", "few_shot", "cross_lingual")
  c.variants = tuple(("dial.domain_labels=shuffled", lam) for lam in (10.0, 100.0))
  c.variant_seeds = c.seeds
  return c


def _lpft_sp_blind():  # lpft_sp_control's grid (same runs and rows) plus DIAL with dial.length_blind at lambda 100:
  # does DIAL still lose TL;DR accuracy when its alignment cannot push along the length direction?
  # (predictions: experiments/lpft_sp_blind/NOTES.md, written before the runs). Clean-to-noisy and few-shot first.
  c = get_config("lpft_sp_control")
  c.settings = ("clean_to_noisy", "few_shot", "simple_to_complex", "cross_lingual")
  c.variants = (*c.variants, ("dial.length_blind=true", 100.0))
  return c


def _lpft_sp_matched():  # lpft_sp_blind's grid (same runs and rows) in the pair settings, plus DIAL whose domain
  # loss sees target pairs redrawn so their response lengths follow the source's (dial.match_target_lengths) at
  # lambda 10 and 100: is the length preference DIAL removes on TL;DR the price of the domains' different length gaps?
  # (predictions: experiments/lpft_sp_matched/NOTES.md, written before the runs). Scored targets cannot be matched.
  c = get_config("lpft_sp_blind")
  c.settings = ("clean_to_noisy", "few_shot", "cross_lingual")
  c.variants = (*c.variants, *(("dial.match_target_lengths=true", lam) for lam in (10.0, 100.0)))
  return c


def _lpft_sp_matched_fresh():  # lpft_sp_matched's new runs at seeds 5-9 beside lpft_sp_control_fresh's (same
  # fingerprint: its source-only, DIAL and control runs are reused); fixed, with its predictions, while
  # lpft_sp_matched ran (experiments/lpft_sp_matched/NOTES.md), to run whatever seeds 0-4 show.
  c = get_config("lpft_sp_control_fresh")
  c.settings = ("clean_to_noisy", "few_shot", "cross_lingual")
  c.variants = (*c.variants, *(("dial.match_target_lengths=true", lam) for lam in (10.0, 100.0)))
  return c


def _lpft_sp_matched1():  # lpft_sp_matched (same runs and rows) plus the option at lambda 1 in the two TL;DR
  # settings, where the domain labels (not the push: the control keeps it) remove the length preference
  # (predictions fixed after lpft_sp_matched's results, before these runs: experiments/lpft_sp_matched/NOTES.md)
  c = get_config("lpft_sp_matched")
  c.settings = ("clean_to_noisy", "few_shot")
  c.variants = (*c.variants, ("dial.match_target_lengths=true", 1.0))
  return c


def _lpft_sp10():  # lpft_sp's plain grid at seeds 0-9: lpft_sp's and lpft_sp_fresh's runs as one grid
  # (same fingerprint, no new run): lambda and the intervals from ten seeds (experiments/lpft_sp10/NOTES.md).
  c = get_config("lpft_sp")
  c.seeds = tuple(range(10))
  c.variants, c.variant_seeds = (), ()
  return c


def _lpft_sp_l2():  # lpft_sp with the probe's L2 fixed at 1e-3 (where source_val chose 1.0, the head starts
  # near 0 and the decay toward the start keeps it there): does source-only then learn? (experiments/lpft_sp_l2)
  c = get_config("lpft_sp")
  c.settings = ("cross_lingual", "clean_to_noisy")
  c.train_config.model.probe_l2 = 1e-3
  c.variants, c.variant_seeds = (), ()
  return c


def _lpft_sp_l2wd():  # lpft_sp_l2 on all four settings with a 10x looser decay toward the start (100, not
  # 1000), so fine-tuning can move more than the head's start (experiments/lpft_sp_l2wd/NOTES.md)
  c = get_config("lpft_sp_l2")
  c.settings = ("cross_lingual", "clean_to_noisy", "simple_to_complex", "few_shot")
  c.train_config.train.weight_decay = 100.0
  return c


def _lpft_sp_gapcurve():  # lpft_sp measuring the held-out domain gap every 40 steps: does DIAL's alignment
  # reach held-out texts early and lose them later, or never? (experiments/lpft_sp_gapcurve/NOTES.md)
  c = get_config("lpft_sp")
  c.settings = ("cross_lingual", "simple_to_complex")
  c.seeds = (0, 1, 2)
  c.lambdas = (10.0, 100.0)
  c.variants, c.variant_seeds = (), ()
  c.train_config.train.eval_every = 40
  return c


def _lpft_sp_es():  # lpft_sp with label-free early stopping: every run keeps its parameters at the
  # evaluation (every 20 steps) with the best source check (train.keep_best). Is DIAL's simple-to-complex gain more
  # than a brake on source-only's drift? (experiments/lpft_sp_es/NOTES.md)
  c = get_config("lpft_sp")
  c.settings = ("simple_to_complex", "cross_lingual", "clean_to_noisy", "few_shot")
  c.variants, c.variant_seeds = (), ()
  c.train_config.train.eval_every = 20
  c.train_config.train.keep_best = True
  return c


def _lpft_sp_es_control():  # lpft_sp_es's grid (same runs and rows) plus the shuffled-domains control: is
  # what DIAL adds beyond early stopping in simple-to-complex carried by the domain labels? Few-shot is left out
  # (every run there keeps step 20). (experiments/lpft_sp_es_control/NOTES.md)
  c = _with_shuffled_control(get_config("lpft_sp_es"), ("simple_to_complex", "cross_lingual", "clean_to_noisy"))
  return c


def _lpft_sp2():  # lpft_sp with the top two layers trained (new prefix caches); the plain grid only
  c = get_config("lpft_sp")
  c.top_layers = 2
  c.train_config.train.top_k_layers = c.top_layers
  c.variants = ()
  return c


def _essays512():  # simple-to-complex alone with 512-token inputs: 256 tokens cut 94 % of the essays
  c = _default()
  c.settings = ("simple_to_complex",)
  c.setting_overrides = ml_collections.ConfigDict(
      {"simple_to_complex": {"truncation": "start", "max_length": 512}})
  c.variants = ()
  return c


def _quick():  # CI: one setting, one seed, a few steps, tiny splits
  c = _default()
  c.settings = ("few_shot",)
  c.seeds = (0,)
  c.lambdas = (10.0,)
  c.variants = ()
  c.limits = ml_collections.ConfigDict(dict(source_train=8, source_val=8, target_train=8, target_val=8,
                                            target_test=8))
  c.max_length = 64
  c.train_config.data.max_length = 64
  c.train_config.train.num_steps = 3
  c.train_config.train.batch_size = 2
  c.train_config.train.log_every = 1
  c.train_config.train.eval_every = 2  # the held-out gap's curve (heldout_gap_curve) gets a point mid-run
  c.train_config.train.warmup_steps = 0
  return c


PRESETS = {
    "lpft": _lpft,
    "lpft_all": _lpft_all,
    "lpft_sp": _lpft_sp,
    "lpft_sp_control": _lpft_sp_control,
    "lpft_control": _lpft_control,
    "lpft_all_control": _lpft_all_control,
    "smollm_sp_control": _smollm_sp_control,
    "smollm_fresh": _smollm_fresh,
    "lpft_sp_fresh": _lpft_sp_fresh,
    "lpft_sp_control_fresh": _lpft_sp_control_fresh,
    "lpft_sp_blind": _lpft_sp_blind,
    "lpft_sp_matched": _lpft_sp_matched,
    "lpft_sp_matched_fresh": _lpft_sp_matched_fresh,
    "lpft_sp_matched1": _lpft_sp_matched1,
    "lpft_sp10": _lpft_sp10,
    "lpft_sp_l2": _lpft_sp_l2,
    "lpft_sp_l2wd": _lpft_sp_l2wd,
    "lpft_sp_gapcurve": _lpft_sp_gapcurve,
    "lpft_sp_es": _lpft_sp_es,
    "lpft_sp_es_control": _lpft_sp_es_control,
    "lpft_sp2": _lpft_sp2,
    "essays512": _essays512,
    "quick": _quick,
}


def get_config(arg=None):
  """The grid of preset ``arg`` (``configs/experiments.py:NAME``; none: the default grid)."""
  if arg in (None, ""):
    c = _default()
  elif arg in PRESETS:
    c = PRESETS[arg]()
  else:
    raise ValueError(f"unknown preset {arg!r}: use '' (the default grid) or one of {', '.join(PRESETS)}")
  c.preset = arg or ""  # the report's rerun command names it; not part of the grid fingerprint
  return c
