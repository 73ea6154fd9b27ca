"""``python -m dial_jax.select``: the label-free choice of lambda from a user's finished runs (synthetic workdirs)."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def workdir(root: Path, mode: str, lam: float, seed: int, *, src: float, w=None, gap=None, setting="few_shot",
            target_acc=0.99, source_loss=(0.7, 0.5), grads=None) -> Path:
  """A finished run's results.json and metrics.jsonl (W over two logged windows when ``w`` is given; ``grads``: the
  last window's (domain, Bradley–Terry) gradient norms)."""
  d = root / f"{mode}_{lam:g}_{seed}_{setting}"
  d.mkdir(parents=True)
  results = {"setting": setting, "mode": mode, "domain_loss": "wdgrl", "lambda": lam, "seed": seed,
             "eval": {"source_val": {"accuracy": src, "n": 100}, "target_val": {"accuracy": target_acc, "n": 100}},
             "heldout_gap": None if gap is None else {"mean": gap, "mmd": gap / 10, "source_split": "source_val",
                                                      "target_split": "target_val", "n_source": 200, "n_target": 200}}
  (d / "results.json").write_text(json.dumps(results))
  rows = [{"step": s, "kind": "train", "loss": 1.0, "source_loss": loss, **({} if w is None else {"wasserstein": x})}
          for s, x, loss in zip((10, 20), w or (0, 0), source_loss)]
  if grads is not None:
    rows[-1].update({"balance/domain_grad_norm": grads[0], "balance/source_grad_norm": grads[1]})
  (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return d


def select(*dirs):
  return subprocess.run([sys.executable, "-m", "dial_jax.select", *map(str, dirs)], cwd=REPO, capture_output=True,
                        text=True)


def grid(root, *, gaps=(0.45, 0.40, 0.10)):
  """Source-only and DIAL at lambda 1, 10, 100 over three seeds. W rises in every DIAL run, so the first rule picks
  none; lambda 100 loses the source fit (its domain gradient 50x the Bradley–Terry one, source loss 0.69 against
  source-only's 0.30); lambdas 1 and 10 end below source-only's held-out gap (0.49-0.51)."""
  dirs = [workdir(root, "source_only", 0.0, s, src=0.80, gap=0.49 + 0.01 * s, source_loss=(0.7, 0.3)) for s in range(3)]
  for lam, src, gap, end in zip((1.0, 10.0, 100.0), (0.80, 0.79, 0.60), gaps, (0.31, 0.4, 0.69)):
    dirs += [workdir(root, "dial", lam, s, src=src, w=(1.0, 2.0), gap=gap, source_loss=(0.7, end),
                     grads=(0.0005 * lam * (1 + s), 0.01 * (1 + s))) for s in range(3)]
  return dirs


def test_select_prints_each_rule_and_its_choice(tmp_path):
  proc = select(*grid(tmp_path))
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert json.loads(lines[-1]) == {"label_free": None, "label_free_heldout": 10.0}
  assert "| DIAL λ=10 | 3 | 0.790 | 0/3 | 0.4000 ± 0.0000 | 0.400 | 0.5 |" in lines
  assert "| DIAL λ=100 | 3 | 0.600 | 0/3 | 0.1000 ± 0.0000 | 0.690 | 5 |" in lines
  assert "| source-only | 3 | 0.800 | — | 0.5000 ± 0.0100 | 0.300 | — |" in lines  # gap: mean ± std over seeds
  assert "label-free (W falls): none qualifies" in lines and "label-free (held-out gap): λ = 10" in lines
  assert "0.99" not in proc.stdout  # target_val's accuracy (target labels) is never shown or used


def test_select_falls_back_when_no_gap_was_measured(tmp_path):
  dirs = grid(tmp_path)
  results = json.loads((dirs[-1] / "results.json").read_text())
  (dirs[-1] / "results.json").write_text(json.dumps({**results, "heldout_gap": None}))  # a run from before
  proc = select(*dirs)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1])["label_free_heldout"] is None
  assert "label-free (held-out gap): not measured" in proc.stdout


def test_select_rejects_what_it_cannot_choose_from_in_one_line(tmp_path):
  dirs = grid(tmp_path)
  cases = [
      ([tmp_path / "nowhere", *dirs], f"error: {tmp_path / 'nowhere'}: no results.json"),
      ([workdir(tmp_path, "oracle", 0.0, 0, src=0.8), *dirs], "is neither source_only nor dial"),
      ([workdir(tmp_path, "dial", 1.0, 0, src=0.8, setting="cross_lingual"), *dirs], "runs of several settings"),
      (dirs[:3], "need at least one source-only run and one DIAL run"),
      ([dirs[3], *dirs], "DIAL lambda=1: seed 0 appears twice"),
  ]
  for args, message in cases:
    proc = select(*args)
    assert proc.returncode == 1 and message in proc.stderr.strip().splitlines()[-1], (message, proc.stderr[-500:])
