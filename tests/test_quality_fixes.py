"""Issue 13's fixes, each with a test that fails on the code before them, and the lambda selection rules."""
import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from dial_jax import losses
from dial_jax.data import pipeline, tokenize
from dial_jax.experiments import selection
from dial_jax.models.critic import Critic
from dial_jax.train import state as state_lib
from dial_jax.train import step as step_lib


# 1. Subsets are seeded, group-stratified random draws (not the first N rows of a file sorted by id).

def test_subset_is_stratified_by_group_and_seeded():
  sizes = np.arange(5, 65, 2)  # 30 groups of 5..63 rows, sorted by group like UKPConvArg's ids
  groups = np.repeat([f"topic{i:02d}" for i in range(30)], sizes)
  idx = pipeline.subset_indices(groups, 200, seed=0)
  assert len(idx) == 200 and len(set(idx)) == 200 and list(idx) == sorted(idx)
  counts = {g: int(np.sum(groups[idx] == g)) for g in set(groups)}
  expected = {f"topic{i:02d}": 200 * s / sizes.sum() for i, s in enumerate(sizes)}
  assert all(abs(counts[g] - expected[g]) <= 1.0 for g in counts), (counts, expected)  # proportional to +-1
  assert np.array_equal(idx, pipeline.subset_indices(groups, 200, seed=0))
  assert not np.array_equal(idx, pipeline.subset_indices(groups, 200, seed=1))
  assert np.array_equal(pipeline.subset_indices(groups, 0, seed=0), np.arange(len(groups)))


def test_ukp_subset_covers_the_topics(tmp_path):
  """The real simple-to-complex source: a 200-pair subset spans most of the 30 topic/stance files (the first 200
  rows by id come from one)."""
  from tests import helpers
  data = helpers.prepare_data(tmp_path / "data", settings=("simple_to_complex",))
  domain_rows = [json.loads(line) for line in (data / "simple_to_complex" / "source_train.jsonl").open()]
  first = {r["group"] for r in domain_rows[:200]}
  idx = pipeline.subset_indices([r["group"] for r in domain_rows], 200, seed=0)
  drawn = {domain_rows[i]["group"] for i in idx}
  assert len(first) <= 2 and len(drawn) >= 25, (len(first), len(drawn))


# 2. The scale-aware critic keeps its slope near 1 at LLM embedding scale; the authors' does not.

def _critic_on_clouds(scale_mode: str, steps: int = 150):
  rng = np.random.default_rng(0)
  h_s = jnp.asarray(rng.normal(0, 10, (16, 64)) + 100.0 / np.sqrt(64), jnp.float32)  # means 100 apart
  h_t = jnp.asarray(rng.normal(0, 10, (16, 64)) - 0.0, jnp.float32)
  scale = step_lib.critic_input_scale(jnp.concatenate([h_s, h_t]), scale_mode)
  critic = Critic(widths=(32, 16))
  params = critic.init(jax.random.PRNGKey(0), h_s)
  tx = losses.make_critic_optimizer(1e-2, 1e-3)
  opt = tx.init(params)
  for i in range(steps // 10):  # as the step runs it: the critic, its penalty and W on h / scale
    params, opt, m = losses.critic_update(params, opt, h_s / scale, h_t / scale, jax.random.PRNGKey(i),
                                          apply_fn=critic.apply, optimizer=tx, gamma=1.0, num_iters=10)
  slope = losses.critic_slope(lambda x: critic.apply(params, x), jnp.concatenate([h_s, h_t]) / scale)
  return float(slope), float(m["wasserstein"])


def test_shuffled_domain_labels_leave_the_critic_nothing_to_find():
  """The control's features are a fixed permutation of the true ones (same rows, same key -> same order), and on two
  clouds far apart the RMS critic's W is large with the true halves and near 0 with the shuffled ones (64 points a
  side in 16 dimensions; with fewer points than dimensions a critic also finds a gap between random halves)."""
  rng = np.random.default_rng(0)
  h_s = jnp.asarray(rng.normal(0, 10, (64, 16)) + 100.0 / np.sqrt(16), jnp.float32)
  h_t = jnp.asarray(rng.normal(0, 10, (64, 16)), jnp.float32)
  h = jnp.concatenate([h_s, h_t])
  shuffle = step_lib.shuffled_domains(lambda x: x, jax.random.PRNGKey(3), 128)
  mixed = shuffle(h)
  np.testing.assert_array_equal(np.sort(np.asarray(mixed), axis=0), np.sort(np.asarray(h), axis=0))
  np.testing.assert_array_equal(np.asarray(step_lib.shuffled_domains(lambda x: x, jax.random.PRNGKey(3), 128)(h)),
                                np.asarray(mixed))
  assert not np.array_equal(np.asarray(mixed), np.asarray(h))
  scale = step_lib.critic_input_scale(h, "rms")

  def w_after_training(a, b):
    critic = Critic(widths=(32, 16))
    params = critic.init(jax.random.PRNGKey(0), a)
    tx = losses.make_critic_optimizer(1e-2, 1e-3)
    opt = tx.init(params)
    for i in range(15):
      params, opt, m = losses.critic_update(params, opt, a / scale, b / scale, jax.random.PRNGKey(i),
                                            apply_fn=critic.apply, optimizer=tx, gamma=1.0, num_iters=10)
    return float(m["wasserstein"])

  w_true, w_shuffled = w_after_training(h_s, h_t), w_after_training(mixed[:64], mixed[64:])
  assert w_true > 1.0 and abs(w_shuffled) < 0.2 * w_true, (w_true, w_shuffled)


def test_rms_critic_stays_near_one_lipschitz_where_the_authors_critic_does_not():
  slope_none, w_none = _critic_on_clouds("none")
  slope_rms, w_rms = _critic_on_clouds("rms")
  assert slope_none > 5.0, slope_none          # the penalty does not bind on raw embeddings
  assert 0.5 < slope_rms < 2.0, slope_rms      # it does on RMS-scaled inputs
  assert w_rms < 2.0 < w_none


# 3. The head has its own learning rate (same schedule).

def test_head_learning_rate_scales_only_the_head_update():
  c = base.get_base_config()
  c.train.learning_rate, c.train.head_learning_rate, c.train.max_grad_norm = 1e-4, 1e-2, 0.0
  c.train.weight_decay, c.train.lr_schedule = 0.0, "constant"
  params = {"params": {"score": {"kernel": jnp.ones((4, 1))}, "backbone": {"w": jnp.ones((4, 4))}}}
  tx = state_lib.make_optimizer(c)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["params"]["score"]["kernel"], -1e-2, rtol=1e-4)  # Adam's first step: lr
  np.testing.assert_allclose(updates["params"]["backbone"]["w"], -1e-4, rtol=1e-4)


# 4. Truncation can keep the start (essays) or the end (responses).

class _Tok:
  bos_token_id = 1

  def __call__(self, texts, add_special_tokens=True, truncation=False):
    return {"input_ids": [[1] + [int(w) for w in t.split()] for t in texts]}


def test_truncation_keeps_start_or_end():
  text = " ".join(str(i) for i in range(10, 30))
  assert tokenize.encode(_Tok(), [text], 5, "start") == [[1, 10, 11, 12, 13]]
  assert tokenize.encode(_Tok(), [text], 5, "end") == [[1, 26, 27, 28, 29]]
  with pytest.raises(ValueError, match="truncation must be 'end' or 'start'"):
    tokenize.encode(_Tok(), [text], 5, "middle")


# 5. The paper preset: 2 pairs per domain per micro-batch, accumulation 2, constant lr, start kept.

def test_paper_preset_matches_the_authors():
  c = base.finish(base.get_base_config(), "paper")
  assert c.train.batch_size // c.train.grad_accum_steps == 2 and c.train.grad_accum_steps == 2
  assert c.train.lr_schedule == "constant" and c.data.truncation == "start" and c.data.max_length == 1024


# 6. LoRA: PEFT's init scale and default targets.

def test_lora_init_matches_peft_scale_and_targets(tmp_path):
  from dial_jax.hf import load
  from dial_jax.models.decoder import LoraConfig
  from tests import helpers
  assert tuple(base.get_base_config().lora.targets) == ("q_proj", "v_proj")
  model_dir = helpers.make_tiny_model_dir(tmp_path / "m")
  _, variables, _ = load.load_reward_model(model_dir, lora=LoraConfig(rank=8, alpha=8.0, targets=("q_proj",)))
  flat = flax.traverse_util.flatten_dict(variables["lora"])
  a = [np.asarray(v) for k, v in flat.items() if k[-1] == "lora_a"]
  assert a
  for arr in a:
    bound = 1.0 / np.sqrt(np.prod(arr.shape[:-1]))  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), +)
    assert np.abs(arr).max() <= bound and np.abs(arr).max() > 0.8 * bound


# 7. AdamW does not decay norm scales, biases or other 1-D parameters.

def test_weight_decay_skips_one_dimensional_parameters():
  c = base.get_base_config()
  c.train.learning_rate, c.train.weight_decay, c.train.max_grad_norm, c.train.lr_schedule = 0.1, 0.5, 0.0, "constant"
  params = {"norm": {"scale": jnp.ones((4,))}, "dense": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones((4,))}}
  tx = state_lib.make_optimizer(c)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new["norm"]["scale"], 1.0)
  np.testing.assert_array_equal(new["dense"]["bias"], 1.0)
  np.testing.assert_allclose(new["dense"]["kernel"], 1.0 - 0.1 * 0.5, rtol=1e-6)


# 8. With lambda statically 0 the critic is not run (source_only, oracle): no 0 * W, critic untouched.

@pytest.mark.parametrize("mode", ["source_only", "oracle"])
def test_no_critic_when_lambda_is_statically_zero(mode):
  from dial_jax import config as config_lib
  c = base.get_base_config()
  c.dial.mode = mode
  assert not config_lib.domain_loss_active(c)
  c.dial.mode, c.dial.lambda_ = "dial", 0.0
  assert not config_lib.domain_loss_active(c)
  c.dial.lambda_ = 0.01
  assert config_lib.domain_loss_active(c)


def test_source_only_step_leaves_the_critic_untouched_and_reports_no_w(tmp_path):
  from tests import helpers
  from tests.test_step import run_steps
  dirs = (helpers.make_tiny_model_dir(tmp_path / "m"), helpers.prepare_data(tmp_path / "d"))
  config = helpers.tiny_config(*dirs, **{"dial.mode": "source_only"})
  from tests.test_step import setup
  _, state0, _, _ = setup(config)
  critic0 = jax.tree.map(np.asarray, state0.critic)
  state, history, _ = run_steps(config, 2)
  for a, b in zip(jax.tree.leaves(critic0), jax.tree.leaves(state.critic)):
    np.testing.assert_array_equal(a, np.asarray(b))
  assert all("wasserstein" not in m and "critic_loss" not in m and m["domain_loss"] == 0 for m in history)


# The lambda selection rules.

def _row(mode, lam, seed, *, val, src, w=(5.0, 1.0), n=100):
  return {"mode": mode, "lambda": lam, "seed": seed,
          "eval": {"target_val": {"accuracy": val, "n": n}, "source_val": {"accuracy": src, "n": n}},
          "history": [{"step": 10, "wasserstein": w[0]}, {"step": 20, "wasserstein": w[1]}]}


def test_label_free_lambda_is_the_largest_that_keeps_source_accuracy_while_w_falls():
  so = [_row("source_only", 0.0, s, val=0.6, src=0.80) for s in range(3)]
  dial = {
      1.0: [_row("dial", 1.0, s, val=0.60, src=0.80) for s in range(3)],
      10.0: [_row("dial", 10.0, s, val=0.70, src=0.77) for s in range(3)],   # within 1 SE (0.04) of 0.80
      100.0: [_row("dial", 100.0, s, val=0.90, src=0.60) for s in range(3)],  # source fit lost
  }
  assert selection.label_free_lambda(so, dial) == 10.0
  dial[10.0] = [_row("dial", 10.0, s, val=0.7, src=0.79, w=(1.0, 2.0)) for s in range(3)]  # W does not fall
  assert selection.label_free_lambda(so, dial) == 1.0
  assert selection.target_val_lambda(dial) == 100.0  # the reference rule reads target labels


def test_heldout_rule_compares_the_final_gap_with_source_only_and_ignores_w_over_training():
  """The revised label-free rule: W rises in every DIAL run (a critic still converging), so the first rule picks no
  lambda; the held-out rule keeps the largest lambda that passes the source check and ends with a held-out gap below
  source-only's mean (0.50)."""
  def gapped(row, gap):
    return {**row, "heldout_gap": {"mean": gap, "mmd": gap / 10}}
  so = [gapped(_row("source_only", 0.0, s, val=0.6, src=0.80), 0.50 + 0.01 * s) for s in range(3)]
  dial = {
      1.0: [gapped(_row("dial", 1.0, s, val=0.6, src=0.80, w=(1.0, 2.0)), 0.45) for s in range(3)],
      10.0: [gapped(_row("dial", 10.0, s, val=0.6, src=0.79, w=(1.0, 2.0)), 0.40) for s in range(3)],
      100.0: [gapped(_row("dial", 100.0, s, val=0.6, src=0.60, w=(1.0, 2.0)), 0.10) for s in range(3)],  # no source fit
  }
  assert selection.label_free_lambda(so, dial) is None  # W rises everywhere
  assert selection.label_free_heldout_lambda(so, dial) == 10.0
  dial[10.0] = [gapped(r, 0.52) for r in dial[10.0]]  # above source-only's mean gap (0.51): not aligned
  assert selection.label_free_heldout_lambda(so, dial) == 1.0
  dial[1.0][2] = {k: v for k, v in dial[1.0][2].items() if k != "heldout_gap"}  # a row from before the gap
  assert not selection.has_heldout_gap(so, dial) and selection.label_free_heldout_lambda(so, dial) is None


def test_w_falls_reads_the_domain_gap_of_every_distance_loss():
  """W for WDGRL rows (old rows log only ``wasserstein``), ``domain_gap`` for new rows, and for old MMD / CORAL
  variant rows (which logged neither) the gap the step's loss implies: (loss - source_loss) / lambda."""
  def row(variant, ends, mode="dial", lam=10.0):
    return {"mode": mode, "lambda": lam, "variant": variant, "history_ends": ends}
  assert selection.w_falls(row("", {"wasserstein": [2.0, 1.0]}))
  assert not selection.w_falls(row("", {"domain_gap": [1.0, 2.0], "wasserstein": [2.0, 1.0]}))  # domain_gap first
  old_mmd = {"loss": [0.7 + 10 * 0.9, 0.3 + 10 * 0.5], "source_loss": [0.7, 0.3]}
  assert selection.domain_gap(row("dial.domain_loss=mmd", old_mmd), 0) == pytest.approx(0.9)
  assert selection.domain_gap(row("dial.align=pair_differences,dial.domain_loss=coral", old_mmd)) == pytest.approx(0.5)
  assert selection.w_falls(row("dial.domain_loss=mmd", old_mmd))
  rising = {"loss": [0.7 + 10 * 0.5, 0.3 + 10 * 0.9], "source_loss": [0.7, 0.3]}
  assert not selection.w_falls(row("dial.domain_loss=mmd", rising))
  # Neither DANN's loss (not a distance) nor a run without a domain loss has a gap.
  assert selection.domain_gap(row("dial.domain_loss=dann", old_mmd)) is None
  assert selection.domain_gap(row("", old_mmd, mode="source_only", lam=0.0)) is None
  assert not selection.w_falls(row("dial.domain_loss=dann", old_mmd))


def test_paired_bootstrap_interval():
  rng = np.random.default_rng(0)
  a = rng.normal(0, 1, (3, 400))
  b = a + 0.5  # every margin up by 0.5: accuracy gain is certain
  mean, lo, hi = selection.paired_bootstrap(a, b, selection.accuracy_of_margins, num_samples=300)
  assert lo > 0 and lo <= mean <= hi
  mean0, lo0, hi0 = selection.paired_bootstrap(a, a, selection.accuracy_of_margins, num_samples=300)
  assert mean0 == 0 and lo0 == 0 and hi0 == 0


def test_bootstrap_with_seeds_resampled_covers_the_spread_between_seeds():
  """Five runs whose gains disagree (+0.4 on three seeds, -0.4 on two) on 2,000 examples: with the runs fixed the
  interval is narrow and above 0 (these runs' mean gain of +0.08 is certain on other examples); drawing the seeds
  too covers -0.4..+0.4 and includes 0. One run: no seed to draw, both intervals are the same."""
  n = 2000
  a = np.zeros((5, n))  # accuracy of margins 0 is 0.5
  signs = np.array([1, 1, -1, 1, -1])
  rng = np.random.default_rng(0)
  b = np.stack([s * np.where(rng.random(n) < 0.9, 1.0, -1.0) for s in signs])  # accuracy 0.9 or 0.1
  fixed = selection.paired_bootstrap(a, b, selection.accuracy_of_margins, num_samples=400)
  both = selection.paired_bootstrap(a, b, selection.accuracy_of_margins, num_samples=400, resample_runs=True)
  assert fixed[0] == both[0] and abs(fixed[0] - 0.08) < 0.02
  assert 0 < fixed[1] < fixed[2] < 0.12
  assert both[1] < 0 < both[2] and both[1] < -0.2 and both[2] > 0.3
  one = selection.paired_bootstrap(a[:1], b[:1], selection.accuracy_of_margins, num_samples=400)
  assert selection.paired_bootstrap(a[:1], b[:1], selection.accuracy_of_margins, num_samples=400,
                                    resample_runs=True) == one
