"""Issue 14, items 3 and 7: export never deletes a run; bad CLI arguments get one-line messages before the model
loads (score, evaluate, export), naming the flag, file or line.

The score CLI runs in-process (its absl flags parsed here, ``load_scorer`` replaced by a stub that fails the test
if reached); export and evaluate run as subprocesses, whose error paths import no jax.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from absl import flags

from dial_jax import score
from dial_jax.hf import export as hf_export
from dial_jax.hf import load
from tests import helpers

REPO = Path(__file__).resolve().parents[1]


def _run(module, *args, timeout=120):
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                        timeout=timeout)


def _one_line_error(done, *parts):
  """The command failed with exactly one stderr line, ``error: ...`` holding every part."""
  assert done.returncode != 0, done.stdout[-2000:]
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
  for part in parts:
    assert str(part) in lines[0], (part, lines[0])
  return lines[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return helpers.make_tiny_model_dir(tmp_path_factory.mktemp("safety") / "model")


def _fake_workdir(path: Path, model_dir, steps=(2, 4)) -> Path:
  """A workdir as the export CLI checks it: config.json, checkpoints/<step>/ and run outputs."""
  (path / "checkpoints").mkdir(parents=True)
  for s in steps:
    (path / "checkpoints" / str(s)).mkdir()
    (path / "checkpoints" / str(s) / "array").write_bytes(b"weights")
  (path / "config.json").write_text(json.dumps({"model": {"name": str(model_dir)}}))
  (path / "results.json").write_text("{}")
  (path / "model.safetensors").write_bytes(b"looks like an export, but is a run")
  return path


def _snapshot(root: Path) -> dict:
  return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------- export
def test_export_refuses_output_that_is_inside_or_contains_the_workdir(tmp_path, model_dir):
  wd = _fake_workdir(tmp_path / "runs" / "wd", model_dir)
  before = _snapshot(tmp_path)
  _one_line_error(_run("dial_jax.export", f"--workdir={wd}", f"--output={wd}", "--overwrite"), "is the workdir")
  # the same directory named another way
  _one_line_error(_run("dial_jax.export", f"--workdir={wd}", f"--output={wd}/../wd/", "--overwrite"),
                  "is the workdir")
  _one_line_error(_run("dial_jax.export", f"--workdir={wd}", f"--output={wd / 'checkpoints'}", "--overwrite"),
                  "is inside --workdir")
  _one_line_error(_run("dial_jax.export", f"--workdir={wd}", f"--output={tmp_path / 'runs'}", "--overwrite"),
                  "contains --workdir")
  _one_line_error(_run("dial_jax.export", f"--workdir={wd}", f"--output={model_dir}", "--overwrite"),
                  "backbone directory")
  assert _snapshot(tmp_path) == before


def test_export_step_must_exist_and_lists_the_steps(tmp_path, model_dir):
  wd = _fake_workdir(tmp_path / "wd", model_dir)
  _one_line_error(_run("dial_jax.export", f"--workdir={wd}", f"--output={tmp_path / 'out'}", "--step=99"),
                  "--step=99", "available steps: 2, 4")
  _one_line_error(_run("dial_jax.export", f"--workdir={tmp_path / 'nowhere'}", f"--output={tmp_path / 'out'}"),
                  "not a training workdir")
  assert not (tmp_path / "out").exists()


def test_overwrite_only_replaces_a_previous_export(tmp_path, model_dir):
  # A training run (checkpoints/ beside config.json and weights) is never replaced.
  wd = _fake_workdir(tmp_path / "wd", model_dir)
  with pytest.raises(FileExistsError, match="does not look like a previous export"):
    hf_export.check_output_dir(wd, overwrite=True)
  # Nor a directory with a config.json but no weights, or with a subdirectory.
  notes = tmp_path / "notes"
  notes.mkdir()
  (notes / "config.json").write_text("{}")
  (notes / "todo.txt").write_text("keep me")
  with pytest.raises(FileExistsError, match="does not look like a previous export"):
    hf_export.check_output_dir(notes, overwrite=True)
  nested = tmp_path / "nested"
  shutil.copytree(model_dir, nested)
  (nested / "eval").mkdir()
  with pytest.raises(FileExistsError, match="does not look like a previous export"):
    hf_export.check_output_dir(nested, overwrite=True)
  # A previous export (or an empty directory) may be replaced.
  hf_export.check_output_dir(model_dir, overwrite=True)
  (tmp_path / "empty").mkdir()
  hf_export.check_output_dir(tmp_path / "empty", overwrite=True)
  with pytest.raises(FileExistsError, match="--overwrite"):
    hf_export.check_output_dir(model_dir, overwrite=False)


# -------------------------------------------------------------------------------------------------- score
@pytest.fixture
def score_cli(monkeypatch):
  """Runs score.main in-process with the given flags; the model must never load unless ``load=True``."""
  def run(*args, load=False):
    loaded = []

    def stub(model, batch_size, max_length, dtype):
      if not load:
        pytest.fail(f"the model was loaded for {args}")
      loaded.append(model)

      class Fake:
        def score(self, texts, progress=False):
          return np.arange(len(texts), dtype=np.float32) + 0.5
      return Fake()

    monkeypatch.setattr(score, "load_scorer", stub)
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["score", *map(str, args)])
    try:
      score.main([])
    except SystemExit as e:
      return str(e.code)
    finally:
      flags.FLAGS.unparse_flags()
    return None
  return run


def _rows(path: Path, rows) -> Path:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def _assert_one_line(message, *parts):
  assert message is not None and message.startswith("error: ") and "\n" not in message, message
  for part in parts:
    assert part in message, (part, message)


def test_score_bad_flags_fail_before_the_model_loads(score_cli, tmp_path, model_dir):
  inp = _rows(tmp_path / "in.jsonl", [{"text": "a"}, {"prompt": "p", "response": "r"}])
  base = [f"--model={model_dir}", f"--input={inp}"]
  out = f"--output={tmp_path / 'out.jsonl'}"
  _assert_one_line(score_cli(*base, out, "--max_length=0"), "--max_length=0")
  _assert_one_line(score_cli(*base, out, "--batch_size=0"), "--batch_size=0")
  _assert_one_line(score_cli(*base, f"--output={tmp_path / 'no_such_dir' / 'out.jsonl'}"),
                   "no_such_dir", "does not exist")
  _assert_one_line(score_cli(f"--model={model_dir}", f"--input={tmp_path / 'missing.jsonl'}", out),
                   "missing.jsonl", "no such file")
  _assert_one_line(score_cli(f"--model={tmp_path / 'no_model'}", f"--input={inp}", out), "no_model")
  assert not (tmp_path / "out.jsonl").exists()


def test_score_output_must_not_be_the_input(score_cli, tmp_path, model_dir):
  inp = _rows(tmp_path / "in.jsonl", [{"text": "a"}, {"text": 3}, {"text": "b"}])
  before = inp.read_bytes()
  for output in (inp, tmp_path / "." / "in.jsonl"):
    _assert_one_line(score_cli(f"--model={model_dir}", f"--input={inp}", f"--output={output}", "--skip_bad_rows"),
                     "is the --input file")
  assert inp.read_bytes() == before  # the bad row did not vanish from the user's file
  tmp_named = _rows(tmp_path / "x.jsonl.tmp", [{"text": "a"}])  # score writes OUTPUT.tmp, then renames it
  _assert_one_line(score_cli(f"--model={model_dir}", f"--input={tmp_named}", f"--output={tmp_path / 'x.jsonl'}"),
                   "is the --input file")
  assert tmp_named.read_text() == '{"text": "a"}\n'


def test_score_row_with_a_reward_needs_overwrite_reward(score_cli, tmp_path, model_dir):
  inp = _rows(tmp_path / "in.jsonl", [{"text": "a"}, {"text": "b", "reward": 7.0}])
  out = tmp_path / "out.jsonl"
  args = [f"--model={model_dir}", f"--input={inp}", f"--output={out}"]
  _assert_one_line(score_cli(*args), "line 2", "'reward'", "--overwrite_reward")
  _assert_one_line(score_cli(*args, "--skip_bad_rows"), "line 2", "'reward'")  # not silently skipped
  assert not out.exists()
  assert score_cli(*args, "--overwrite_reward", load=True) is None
  assert [json.loads(line) for line in out.read_text().splitlines()] == [
      {"text": "a", "reward": 0.5}, {"text": "b", "reward": 1.5}]


def test_truncated_weights_and_missing_tokenizer_are_named(score_cli, tmp_path, model_dir):
  inp = _rows(tmp_path / "in.jsonl", [{"text": "a"}])
  out = f"--output={tmp_path / 'out.jsonl'}"
  cut = tmp_path / "cut"
  shutil.copytree(model_dir, cut)
  data = (cut / "model.safetensors").read_bytes()
  (cut / "model.safetensors").write_bytes(data[:len(data) // 2])
  _assert_one_line(score_cli(f"--model={cut}", f"--input={inp}", out), str(cut / "model.safetensors"), "truncated")
  with pytest.raises(ValueError, match=r"cut/model\.safetensors: truncated safetensors file"):
    load.load_reward_model(cut)
  (cut / "model.safetensors").write_bytes(data[:5])
  with pytest.raises(ValueError, match=r"cut/model\.safetensors: not a readable safetensors file"):
    load.load_reward_model(cut)

  no_tok = tmp_path / "no_tok"
  shutil.copytree(model_dir, no_tok)
  for name in load.TOKENIZER_FILES + ("tokenizer_config.json", "special_tokens_map.json", "merges.txt"):
    (no_tok / name).unlink(missing_ok=True)
  _assert_one_line(score_cli(f"--model={no_tok}", f"--input={inp}", out), str(no_tok), "no tokenizer files")
  with pytest.raises(FileNotFoundError, match="no_tok has no tokenizer files"):
    load.load_tokenizer(no_tok)


# ----------------------------------------------------------------------------------------------- evaluate
_EVALUATE_CASES = """
import json, sys
from absl import flags
from dial_jax import evaluate
out = []
for args in json.loads(sys.argv[1]):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["evaluate", *args])
  try:
    evaluate.main([])
    out.append(None)
  except SystemExit as e:
    out.append(str(e.code))
print(json.dumps(out))
"""


def test_evaluate_bad_arguments_fail_before_the_model_loads(tmp_path):
  """dial_jax.evaluate's main (one subprocess: its flags clash with score's) on bad arguments."""
  data = _rows(tmp_path / "test.jsonl", [{"id": "a", "prompt": "p", "response_chosen": "c",
                                          "response_rejected": "r"}])
  model = f"--model={tmp_path / 'no_model'}"  # never reached: the argument checks come first
  cases = [[model, f"--data={data}", "--batch_size=0"], [model, f"--data={data}", "--max_length=0"],
           [model, f"--data={data}", "--limit=-1"], [model, f"--data={tmp_path / 'nope.jsonl'}"],
           [model, f"--data={data}"]]
  done = subprocess.run([sys.executable, "-c", _EVALUATE_CASES, json.dumps(cases)], capture_output=True, text=True,
                        cwd=REPO, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  messages = json.loads(done.stdout.strip().splitlines()[-1])
  expected = [["--batch_size=0"], ["--max_length=0"], ["--limit=-1"], ["nope.jsonl", "no such file"],
              ["no_model", "no such directory"]]
  for message, parts in zip(messages, expected):
    _assert_one_line(message, *parts)
