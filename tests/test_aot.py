"""dial_jax.aot: the real train and eval steps compiled for TPU slices on this CPU (libtpu's compile-only devices;
needs the ``tpu`` extra), tiny models, a few seconds per compilation."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from configs import base
from dial_jax import aot, tpu_slices

REPO = Path(__file__).resolve().parents[1]

if importlib.util.find_spec("libtpu") is None:
  if os.environ.get("CI"):
    raise RuntimeError("CI installs libtpu (pip install -e '.[test,tpu]'); tests/test_aot.py cannot run without it")
  pytest.skip("libtpu is not installed (pip install -e '.[tpu]')", allow_module_level=True)

TINY = {"architectures": ["GemmaForCausalLM"], "model_type": "gemma", "vocab_size": 512, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
        "head_dim": 16, "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 1}


def tiny_dir(tmp_path, **overrides) -> Path:
  path = tmp_path / "tiny"
  path.mkdir(exist_ok=True)
  (path / "config.json").write_text(json.dumps({**TINY, **overrides}))
  return path


def tiny_config(model_dir, *, batch_size=2, accum=1, data=2, fsdp=2):
  c = base.get_base_config()
  c.model.name = str(model_dir)
  c.data.max_length, c.data.min_bucket, c.data.eval_batch_size = 64, 64, 8
  c.train.batch_size, c.train.grad_accum_steps = batch_size, accum
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = data, fsdp, 1
  return c


def test_cli_compiles_train_and_eval_steps_for_a_tpu_slice(tmp_path):
  out = tmp_path / "report.json"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
      [sys.executable, "-m", "dial_jax.aot", "--config=configs/few_shot.py", "--topology=v5e:2x2",
       f"--config.model.name={tiny_dir(tmp_path)}", "--config.data.max_length=64", "--config.data.min_bucket=64",
       "--config.data.eval_batch_size=8", "--config.mesh.data=2", "--config.mesh.fsdp=2", f"--output={out}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(out.read_text())
  assert "fits" in proc.stdout and "FLOPs per step" in proc.stdout
  assert (r["chip"], r["chips"], r["hosts"], r["mesh"]) == ("v5e", 4, 1, {"data": 2, "fsdp": 2, "tensor": 1})
  assert r["fits"] and not r["problems"]
  # Packed rows are split over data x fsdp = 4 devices: the pipeline rounds the row count up to a multiple of 4.
  assert r["batch"]["packed_ids"][1] % 4 == 0 and r["batch"]["packed_ids"][2] == 64
  for prog in (r["train"], r["eval"]):
    mem = prog["memory_per_chip"]
    assert mem["total"] == mem["argument"] + mem["output"] - mem["alias"] + mem["temp"] + mem["resident_state"]
  assert r["train"]["memory_per_chip"]["alias"] > 0  # the state is donated
  assert r["eval"]["rows"] == [8, 64]


def test_compiled_flops_count_every_micro_batch(tmp_path):
  """XLA's cost analysis counts a loop body once; the report multiplies the scanned micro-batch by its trip count,
  so 2 micro-batches of 2 pairs cost twice one micro-batch of 2 pairs (the optimizer update aside)."""
  model_dir = tiny_dir(tmp_path)
  one = aot.analyse(tiny_config(model_dir, batch_size=2, accum=1), "v5e:2x2", include_eval=False)
  two = aot.analyse(tiny_config(model_dir, batch_size=4, accum=2), "v5e:2x2", include_eval=False)
  ratio = two["train"]["flops_per_step"] / one["train"]["flops_per_step"]
  assert abs(ratio - 2) < 0.1, ratio
  assert two["train"]["model_flops_per_step"] == 2 * one["train"]["model_flops_per_step"]


def test_reports_what_does_not_fit_and_cannot_run(tmp_path):
  # A 4M x 1024 float32 embedding (16 GiB) replicated on every chip of a v5e (16 GiB HBM).
  model_dir = tiny_dir(tmp_path, vocab_size=2**22, hidden_size=1024, head_dim=256)
  r = aot.analyse(tiny_config(model_dir, data=4, fsdp=1), "v5e:2x2", include_eval=False)
  assert not r["fits"] and not r["train"]["fits"]
  assert r["state_bytes_per_chip"]["frozen"] >= 2**22 * 1024 * 4  # the embedding alone, float32, replicated
  assert any(p.startswith("train step does not fit on v5e:2x2") for p in r["problems"]), r["problems"]
  # 4 hosts cannot split 2 pairs per micro-batch.
  r = aot.analyse(tiny_config(tiny_dir(tmp_path), data=16, fsdp=1), "v5e:4x4", include_eval=False)
  assert r["hosts"] == 4 and r["fits"]
  assert any("cannot run on 4 hosts" in p and "divisible by the process count (4)" in p for p in r["problems"])


def test_shipped_model_configs():
  """The shipped config.json of the paper's backbone gives gemma-2b's 2,506,172,416 parameters."""
  c = base.paper_scale(base.get_base_config())
  model, hf = aot.abstract_model(c)
  ids = jax.numpy.zeros((1, 8), "int32")
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, ids))
  backbone = jax.tree.leaves(shapes["params"]["backbone"])
  assert sum(x.size for x in jax.tree.leaves(backbone)) == 2_506_172_416
  assert hf["num_hidden_layers"] == 18
  for name in ("gemma-3-270m", "smollm2-135m"):
    assert (aot.model_config_dir(name) / "config.json").is_file()
  with pytest.raises(FileNotFoundError, match="no config.json"):
    aot.model_config_dir("someone/unknown-model")


def test_slices():
  assert [(n, tpu_slices.get_slice(n).chips, tpu_slices.get_slice(n).hosts) for n in ("v4-8", "v5e-8", "v5e-16")] == [
      ("v4-8", 4, 1), ("v5e-8", 8, 1), ("v5e-16", 16, 4)]
  devices = tpu_slices.devices(tpu_slices.get_slice("v5e-16"))
  assert len(devices) == 16 and len({d.process_index for d in devices}) == 4
  with pytest.raises(ValueError, match="unknown TPU slice"):
    tpu_slices.get_slice("v9-8")
