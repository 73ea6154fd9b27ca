"""`python -m dial_jax.score` on HF directories written by transformers' *ForSequenceClassification."""
import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from dial_jax import score
from dial_jax.inference import Scorer
from tests.conftest import RAW_DATA
from tests.models.hf_reference import make_reference, make_tokenizer

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _real_rows(n=10):
  with gzip.open(RAW_DATA / "hh-rlhf-harmless" / "test.jsonl.gz", "rt") as f:
    dialogues = [json.loads(line)["chosen"] for _, line in zip(range(n), f)]
  rows = []
  for i, d in enumerate(dialogues):
    cut = d.rfind("\n\nAssistant:") + len("\n\nAssistant:")
    rows.append({"prompt": d[:cut], "response": d[cut:], "id": i} if i % 2 else {"text": d[:300 + 40 * i]})
  return rows


@pytest.fixture(scope="module")
def tokenizer():
  return make_tokenizer()


@pytest.mark.parametrize("family", ["gemma", "gemma3", "llama"])
def test_score_matches_transformers_logits(family, tokenizer, tmp_path):
  ref = make_reference(family)
  assert type(ref).__name__.endswith("ForSequenceClassification")
  ref.save_pretrained(tmp_path / "model")
  tokenizer.save_pretrained(tmp_path / "model")
  rows = _real_rows()
  with open(tmp_path / "in.jsonl", "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  scorer = Scorer.from_pretrained(tmp_path / "model", batch_size=4, max_length=512)
  texts = score.read_rows(str(tmp_path / "in.jsonl"), False)[1]
  rewards = scorer.score(texts)
  expected = []
  for text in texts:
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    assert ids.shape[1] <= 512
    with torch.no_grad():
      expected.append(float(ref(input_ids=ids).logits[0, 0]))
  np.testing.assert_allclose(rewards, expected, atol=1e-4, rtol=0)


def test_score_cli_end_to_end_with_bad_rows(tokenizer, tmp_path):
  ref = make_reference("gemma3")
  ref.save_pretrained(tmp_path / "model")
  tokenizer.save_pretrained(tmp_path / "model")
  rows = _real_rows(4)
  lines = [json.dumps(r) for r in rows] + ['{"prompt": "p", "response": 3}', "not json", "", '{"text": "last"}']
  (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
  cmd = [sys.executable, "-m", "dial_jax.score", f"--model={tmp_path / 'model'}", f"--input={tmp_path / 'in.jsonl'}",
         f"--output={tmp_path / 'out.jsonl'}", "--batch_size=2", "--max_length=256"]
  failed = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
  assert failed.returncode != 0
  assert "line 5: field 'response' must be a string" in failed.stderr
  ok = subprocess.run(cmd + ["--skip_bad_rows"], capture_output=True, text=True, cwd=REPO)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "skipped 2 malformed rows" in ok.stdout
  out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert len(out) == 5
  for row_in, row_out in zip(rows + [{"text": "last"}], out):
    assert {k: v for k, v in row_out.items() if k != "reward"} == row_in
    assert isinstance(row_out["reward"], float)


@pytest.mark.parametrize("line,message", [
    ('{"prompt": "a"}', "missing field 'response'"),
    ('{"foo": 1}', "needs a 'text' field"),
    ('{"text": "   "}', "empty text"),
    ('[1, 2]', "expected a JSON object"),
    ('{"text": "a"', "invalid JSON"),
])
def test_bad_rows_name_the_line_and_problem(tmp_path, line, message):
  path = tmp_path / "in.jsonl"
  path.write_text('{"text": "fine"}\n' + line + "\n")
  with pytest.raises(score.BadRow, match=f"line 2: .*{message}" if "JSON" not in message else "line 2: "):
    score.read_rows(str(path), False)
  rows, _, skipped = score.read_rows(str(path), True)
  assert (len(rows), skipped) == (1, 1)


def test_non_utf8_row_is_reported(tmp_path):
  path = tmp_path / "in.jsonl"
  path.write_bytes(b'{"text": "ok"}\n{"text": "\xff\xfe"}\n')
  with pytest.raises(score.BadRow, match="line 2: not valid UTF-8"):
    score.read_rows(str(path), False)
