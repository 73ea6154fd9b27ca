"""Evaluation end to end: evaluate_domain with a fake scorer, truncation (tokenize.encode, Scorer.score past
max_length) against a hand-truncated transformers reference, and the `python -m dial_jax.evaluate` CLI."""
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from dial_jax.data import pipeline, sources, tokenize
from dial_jax.inference import Scorer, evaluate_domain
from tests.conftest import RAW_DATA
from tests.models.hf_reference import make_reference, make_tokenizer

REPO = Path(__file__).resolve().parents[1]
MAX_LENGTH = 48  # shorter than most real texts below, so scoring truncates


class FakeScorer:
  """Reward = first token id; records what it was asked to score."""

  def __init__(self):
    self.calls = []

  def score_tokens(self, token_lists, **kwargs):
    self.calls.append([list(t) for t in token_lists])
    return np.asarray([t[0] for t in token_lists], np.float32)


def test_evaluate_domain_pairs_reads_chosen_then_rejected():
  chosen, rejected = [[5, 0], [1], [3, 3], [9]], [[2], [4, 4], [3], [0, 1]]
  scorer = FakeScorer()
  out = evaluate_domain(scorer, pipeline.Domain("d", "pairs", chosen=chosen, rejected=rejected), keep_scores=True)
  # rewards: chosen 5 1 3 9, rejected 2 4 3 0 -> win, loss, tie, win
  assert (out["accuracy"], out["margin"], out["n"], out["chance"]) == ((1 + 0 + 0.5 + 1) / 4, (3 - 3 + 0 + 9) / 4, 4,
                                                                       0.5)
  assert out["margins"] == [3, -3, 0, 9]
  assert out["accuracy_ci95"][0] < out["accuracy"] < out["accuracy_ci95"][1]
  assert scorer.calls == [chosen + rejected]


def test_evaluate_domain_reports_nonfinite_rewards_instead_of_scoring_them():
  class NaNScorer(FakeScorer):
    def score_tokens(self, token_lists, **kwargs):
      r = super().score_tokens(token_lists)
      return np.where(r == 7, np.nan, r)
  out = evaluate_domain(NaNScorer(), pipeline.Domain("d", "pairs", chosen=[[7], [2], [7]], rejected=[[1], [7], [1]]))
  assert out["accuracy"] is None and out["nonfinite_rewards"] == 3


def test_evaluate_domain_scored_correlates_with_the_score():
  texts = [[4], [1], [7], [2], [2], [9]]
  scores = np.float32([3, 1, 2, 2, 5, 4])
  out = evaluate_domain(FakeScorer(), pipeline.Domain("d", "scored", texts=texts, scores=scores))
  rewards = [4, 1, 7, 2, 2, 9]
  assert out["n"] == 6
  assert out["pearson"] == pytest.approx(stats.pearsonr(rewards, scores).statistic, abs=1e-12)
  assert out["spearman"] == pytest.approx(stats.spearmanr(rewards, scores).statistic, abs=1e-12)
  # the reward order matters, not only the set: reversed rewards give a different correlation
  rev = evaluate_domain(FakeScorer(), pipeline.Domain("d", "scored", texts=texts[::-1], scores=scores))
  assert rev["pearson"] != pytest.approx(out["pearson"], abs=1e-3)


def test_evaluate_domain_checks_the_reward_against_length():
  """With the texts' lengths (load_domain sets them) the evaluation adds what length alone does and how the reward
  relates to length: pairs, the longer response is chosen in 2 of 4 (one tie: 2.5 / 4) and the margins (3, -3, 0, 9)
  against the length differences (2, -1, 0, 4); essays, the partial Pearson given length from residuals."""
  chosen, rejected = [[5, 0], [1], [3, 3], [9]], [[2], [4, 4], [3], [0, 1]]
  lengths = np.array([[12, 10], [3, 4], [7, 7], [20, 16]])
  out = evaluate_domain(FakeScorer(), pipeline.Domain("d", "pairs", chosen=chosen, rejected=rejected, lengths=lengths))
  assert out["longer_accuracy"] == 2.5 / 4
  assert out["margin_length_pearson"] == pytest.approx(stats.pearsonr([3, -3, 0, 9], [2, -1, 0, 4]).statistic,
                                                       abs=1e-12)
  texts = [[4], [1], [7], [2], [2], [9]]
  scores = np.float32([3, 1, 2, 2, 5, 4])
  words = np.array([300, 120, 260, 200, 410, 380])
  out = evaluate_domain(FakeScorer(), pipeline.Domain("d", "scored", texts=texts, scores=scores, lengths=words))
  rewards = np.float64([4, 1, 7, 2, 2, 9])
  residual = lambda a: a - np.polyval(np.polyfit(words, a, 1), words)
  assert out["length_pearson"] == pytest.approx(stats.pearsonr(words, scores).statistic, abs=1e-12)
  assert out["reward_length_pearson"] == pytest.approx(stats.pearsonr(rewards, words).statistic, abs=1e-12)
  assert out["pearson_given_length"] == pytest.approx(
      stats.pearsonr(residual(rewards), residual(scores.astype(np.float64))).statistic, abs=1e-9)
  # Without lengths (a Domain built by hand) the fields are absent, not made up.
  assert "longer_accuracy" not in evaluate_domain(FakeScorer(), pipeline.Domain("d", "pairs", chosen=chosen,
                                                                                rejected=rejected))


class _NoBosTokenizer:
  """The tokenizer interface tokenize.encode uses, for a tokenizer without special tokens."""
  bos_token_id = None

  def __call__(self, texts, add_special_tokens, truncation):
    return {"input_ids": [[ord(c) for c in t] for t in texts]}


def test_encode_keeps_the_end_with_and_without_bos():
  tok = make_tokenizer()
  bos = tok.bos_token_id
  text = "Human: tell me a long story about the sea. Assistant: once upon a time there was a boat on the sea."
  full = tok(text)["input_ids"]
  assert full[0] == bos and len(full) > 12
  short, cut = tokenize.encode(tok, ["hello there", text], 12)
  assert short == tok("hello there")["input_ids"]
  assert cut == [bos] + full[-11:]
  assert tokenize.encode(tok, [text], len(full)) == [full]          # exactly max_length: untouched
  assert tokenize.encode(tok, [text], len(full) - 1)[0] == [bos] + full[2:]

  plain = _NoBosTokenizer()
  assert tokenize.encode(plain, ["abcdefgh", "xy"], 3) == [[ord(c) for c in "fgh"], [ord("x"), ord("y")]]
  # data.truncation=start keeps the first tokens (BOS included) instead
  assert tokenize.encode(tok, ["hello there", text], 12, truncation="start") == [short, full[:12]]
  assert tokenize.encode(plain, ["abcdefgh"], 3, truncation="start") == [[ord(c) for c in "abc"]]
  with pytest.raises(ValueError, match="truncation"):
    tokenize.encode(tok, [text], 12, truncation="middle")


def _real_pairs(n):
  with gzip.open(RAW_DATA / "hh-rlhf-harmless" / "test.jsonl.gz", "rt") as f:
    rows = [json.loads(line) for _, line in zip(range(n), f)]
  out = []
  for i, row in enumerate(rows):
    cut = row["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
    rcut = row["rejected"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
    out.append({"id": str(i), "prompt": row["chosen"][:cut], "response_chosen": row["chosen"][cut:],
                "response_rejected": row["rejected"][rcut:]})
  return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("evaluate") / "model"
  ref = make_reference("gemma3")
  ref.save_pretrained(path)
  make_tokenizer().save_pretrained(path)
  return path, ref


def _reference_rewards(ref, tokenizer, texts, max_length):
  """transformers logits of each text hand-truncated to <bos> + its last max_length - 1 tokens."""
  out = []
  for text in texts:
    ids = tokenizer(text)["input_ids"]
    if len(ids) > max_length:
      ids = ids[:1] + ids[-(max_length - 1):]
    with torch.no_grad():
      out.append(float(ref(input_ids=torch.tensor([ids])).logits[0, 0]))
  return np.asarray(out)


def test_score_truncates_like_a_hand_truncated_reference(model_dir):
  path, ref = model_dir
  tok = make_tokenizer()
  rows = _real_pairs(6)
  texts = [tokenize.join(r["prompt"], r["response_chosen"]) for r in rows]
  assert sum(len(tok(t)["input_ids"]) > MAX_LENGTH for t in texts) >= 4  # truncation is exercised
  rewards = Scorer.from_pretrained(path, batch_size=4, max_length=MAX_LENGTH).score(texts)
  np.testing.assert_allclose(rewards, _reference_rewards(ref, tok, texts, MAX_LENGTH), atol=1e-4, rtol=0)


def _run_cli(path, data, *extra):
  cmd = [sys.executable, "-m", "dial_jax.evaluate", f"--model={path}", f"--data={data}", "--batch_size=4",
         f"--max_length={MAX_LENGTH}", *extra]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_evaluate_cli_end_to_end(model_dir, tmp_path):
  """Pairs and scored files through the CLI give the metrics of transformers' rewards on the same (truncated)
  texts: accuracy exactly, margin and correlations to 1e-4."""
  path, ref = model_dir
  tok = make_tokenizer()
  pairs = _real_pairs(8)
  (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
  essays = sources.convert_asap(RAW_DATA / "asap-aes" / "asap_set1.tsv")[0][:8]
  (tmp_path / "scored.jsonl").write_text("".join(json.dumps(r) + "\n" for r in essays))

  got = _run_cli(path, tmp_path / "pairs.jsonl")
  chosen = _reference_rewards(ref, tok, [tokenize.join(r["prompt"], r["response_chosen"]) for r in pairs], MAX_LENGTH)
  rejected = _reference_rewards(ref, tok, [tokenize.join(r["prompt"], r["response_rejected"]) for r in pairs],
                                MAX_LENGTH)
  assert np.min(np.abs(chosen - rejected)) > 1e-3  # no near-ties: the accuracy is exact
  assert got["n"] == 8 and got["skipped_bad_rows"] == 0
  assert got["accuracy"] == np.mean(chosen > rejected)
  assert got["margin"] == pytest.approx(np.mean(chosen - rejected), abs=1e-4)
  assert 0 < got["accuracy"] < 1  # a random model: both outcomes occur, so a chosen/rejected swap shows
  # The length check counts the responses' words (not tokens, so not truncated at max_length).
  n_chosen = np.array([len(r["response_chosen"].split()) for r in pairs])
  n_rejected = np.array([len(r["response_rejected"].split()) for r in pairs])
  assert got["longer_accuracy"] == np.mean((n_chosen > n_rejected) + 0.5 * (n_chosen == n_rejected))
  assert got["margin_length_pearson"] == pytest.approx(
      stats.pearsonr(chosen - rejected, n_chosen - n_rejected).statistic, abs=1e-3)

  got = _run_cli(path, tmp_path / "scored.jsonl", "--limit=6")
  # --limit keeps a seeded subset (pipeline.subset_indices, by group where rows have one)
  keep = pipeline.subset_indices([r.get("group") or r["id"] for r in essays], 6, 0)
  texts = [tokenize.join(essays[i].get("prompt") or "", essays[i]["text"]) for i in keep]
  rewards = _reference_rewards(ref, tok, texts, MAX_LENGTH)
  scores = [essays[i]["score"] for i in keep]
  assert got["n"] == 6
  assert got["pearson"] == pytest.approx(stats.pearsonr(rewards, scores).statistic, abs=1e-4)
  assert got["spearman"] == pytest.approx(stats.spearmanr(rewards, scores).statistic, abs=1e-4)
  n_words = [len(essays[i]["text"].split()) for i in keep]
  assert got["length_pearson"] == pytest.approx(stats.pearsonr(n_words, scores).statistic, abs=1e-9)
  assert got["reward_length_pearson"] == pytest.approx(stats.pearsonr(rewards, n_words).statistic, abs=1e-3)


def test_evaluate_limit_help_matches_what_it_keeps(tmp_path):
  # The CLI's own --help (importing it here would register its flags beside other CLIs' in this process).
  helpful = subprocess.run([sys.executable, "-m", "dial_jax.evaluate", "--helpfull"], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parents[1]).stdout
  rows = _real_pairs(8)
  (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  tok = make_tokenizer()
  help_text = " ".join(helpful[helpful.index("--limit"):].split("--", 2)[1].split())
  assert "seeded random subset" in help_text
  domain = pipeline.load_domain(tmp_path / "pairs.jsonl", tok, MAX_LENGTH, limit=3)
  first = tokenize.encode(tok, [tokenize.join(r["prompt"], r["response_chosen"]) for r in rows[:3]], MAX_LENGTH)
  assert ("first N" in help_text) == (domain.chosen == first)
