"""The package's shape: no import cycle, layers import one way, one training loop, config checked in one place."""
import ast
import re
from pathlib import Path

import pytest

from configs import base
from dial_jax import config as config_lib

PACKAGE = Path(__file__).resolve().parents[1] / "dial_jax"

# Lower layers never import higher ones: models <- data <- inference <- train <- CLIs.
LAYERS = [
    ("dial_jax.config", "dial_jax.paths", "dial_jax.losses", "dial_jax.metrics", "dial_jax.parallel", "dial_jax.flops",
     "dial_jax.tpu_slices", "dial_jax.models", "dial_jax.hf"),
    ("dial_jax.data",),
    ("dial_jax.inference", "dial_jax.probe"),
    ("dial_jax.train", "dial_jax.checkpoint", "dial_jax.workdir"),
    ("dial_jax.main", "dial_jax.evaluate", "dial_jax.score", "dial_jax.export", "dial_jax.prepare", "dial_jax.aot",
     "dial_jax.cli_logging",
     "dial_jax.experiments", "dial_jax.cli_checks", "dial_jax.select"),
]


def module_name(path: Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
  """Every dial_jax module ``path`` imports, at module level or inside functions."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.startswith("dial_jax")}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dial_jax"):
      for a in node.names:  # "from dial_jax.train import loop" imports dial_jax.train.loop
        sub = f"{node.module}.{a.name}"
        out.add(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() else node.module)
  return out


def graph() -> dict[str, set[str]]:
  return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
  for i, prefixes in enumerate(LAYERS):
    if any(module == p or module.startswith(p + ".") for p in prefixes):
      return i
  raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: place it")


def find_cycle(g: dict[str, set[str]]):
  state = {}

  def visit(node, stack):
    state[node] = 1
    for nxt in sorted(g.get(node, ())):
      nxt = nxt if nxt in g else nxt.rsplit(".", 1)[0]
      if state.get(nxt) == 1:
        return stack[stack.index(nxt):] + [nxt]
      if nxt in g and not state.get(nxt):
        found = visit(nxt, stack + [nxt])
        if found:
          return found
    state[node] = 2
    return None

  for n in sorted(g):
    if not state.get(n):
      found = visit(n, [n])
      if found:
        return found
  return None


def test_no_import_cycle():
  assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()))


def test_the_cycle_finder_finds_a_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_layers_import_one_way():
  bad = [f"{m} (layer {layer_of(m)}) imports {i} (layer {layer_of(i)})"
         for m, deps in graph().items() for i in deps if layer_of(i) > layer_of(m)]
  assert not bad, "\n".join(bad)


def test_one_training_loop():
  """Exactly one place in the package calls a train step in a loop: dial_jax/train/loop.py."""
  callers = [p for p in PACKAGE.rglob("*.py") if re.search(r"\btrain_step\(state,", p.read_text())]
  assert [p.relative_to(PACKAGE).as_posix() for p in callers] == ["train/loop.py"]


def test_no_config_get_with_defaults():
  """Keys the base config defines are read directly, never with a fallback that could contradict it."""
  offenders = [f"{p}:{n}" for p in PACKAGE.rglob("*.py") for n, line in enumerate(p.read_text().splitlines(), 1)
               if re.search(r"config\.\w+\.get\(", line)]
  assert not offenders, offenders


def test_added_keys_default_to_what_older_runs_did_and_their_configs_resume(tmp_path):
  """Each key in ADDED_KEYS is in the base config at the value that reproduces runs saved before it existed, so a
  saved config lacking all of them resumes into today's defaults."""
  import json

  from dial_jax.train import loop
  flat = config_lib.flatten(base.get_base_config())
  assert {k: flat[k] for k in config_lib.ADDED_KEYS} == config_lib.ADDED_KEYS
  saved = json.loads(base.get_base_config().to_json_best_effort())
  for key in config_lib.ADDED_KEYS:
    section, name = key.split(".")
    del saved[section][name]
  loop.check_resume(saved, base.get_base_config(), tmp_path)


def test_every_base_key_has_a_rule_and_the_base_config_validates():
  assert set(config_lib.flatten(base.get_base_config())) == set(config_lib.RULES)
  for arg in ("", "paper"):
    config_lib.validate(base.finish(base.get_base_config(), arg))


@pytest.mark.parametrize("key,value,message", [
    ("train.nonsense", 1, r"unknown config key 'train.nonsense'; did you mean"),
    ("dial.mode", "dail",
     r"config key dial.mode='dail' is invalid: must be one of \('dial', 'source_only', 'oracle'\)"),
    ("train.learning_rate", -1.0, r"train.learning_rate=-1.0 is invalid: must be > 0"),
    ("dial.align", "differences", r"dial.align='differences' is invalid: must be one of \('embeddings', "
                                  r"'pair_differences'\)"),
])
def test_config_messages_name_key_value_and_allowed(key, value, message):
  c = base.get_base_config()
  section, name = key.split(".")
  c.unlock() if hasattr(c, "unlock") else None
  c[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(c)


def test_inconsistent_combination_is_named():
  c = base.get_base_config()
  c.train.batch_size, c.train.grad_accum_steps = 3, 2
  with pytest.raises(config_lib.ConfigError, match=r"train.batch_size=3 must be divisible by train.grad_accum_steps=2"):
    config_lib.validate(c)
  c = base.get_base_config()
  c.data.packing, c.dial.aux = "sequences", "source_sft"
  with pytest.raises(config_lib.ConfigError, match=r"data.packing='sequences' needs model.pooling='last'"):
    config_lib.validate(c)


def test_unknown_key_on_the_command_line_is_one_line(tmp_path):
  import subprocess
  import sys
  proc = subprocess.run([sys.executable, "-m", "dial_jax.main", "--config=configs/few_shot.py",
                         f"--workdir={tmp_path}", "--config.train.nonsense=1"], capture_output=True, text=True,
                        cwd=PACKAGE.parent)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown config key 'train.nonsense'"), proc.stderr
  assert "Traceback" not in proc.stderr
