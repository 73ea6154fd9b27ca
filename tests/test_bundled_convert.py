"""The torch-free GGUF conversion (``dial_jax.hf.bundled``) equals transformers' torch path byte for byte.

On the real bundled files: dial_jax's conversion runs in a subprocess in which torch cannot be found (as in an
install without torch); where torch is importable, transformers' own GGUF conversion (``load_gguf_checkpoint``,
``AutoConfig`` / ``AutoTokenizer`` with ``gguf_file``: the converter dial_jax used before) writes a reference
directory, and every file, every tensor's name, dtype, shape and bytes, config and tokenizer must be equal.
SmolLM2 (~30 s + ~35 s on 2 CPU cores) runs in the quick suite, Gemma 3 (~1.5 + ~1.5 min) is marked slow.
"""
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")

from dial_jax.hf import bundled  # noqa: E402
from dial_jax.hf.load import read_state_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAMES = [pytest.param("gemma-3-270m", marks=pytest.mark.slow), "smollm2-135m"]

# Runs the conversion with torch invisible to importlib (find_spec returns None, ``import torch`` fails), so
# transformers' is_torch_available() is False as in an install without torch.
_NO_TORCH = textwrap.dedent("""
  import sys

  class Hide:
    def __init__(self, inner):
      self.inner = inner
    def find_spec(self, name, path=None, target=None):
      if name.partition(".")[0] == "torch" or not hasattr(self.inner, "find_spec"):
        return None
      return self.inner.find_spec(name, path, target)
    def __getattr__(self, attr):
      return getattr(self.inner, attr)

  sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
  from transformers.utils import is_torch_available
  from dial_jax.hf import bundled
  assert not is_torch_available()
  print(bundled.bundled_hf_dir(sys.argv[1], sys.argv[2]))
  assert "torch" not in sys.modules, "the conversion imported torch"
""")


def _installed(name):
  return importlib.util.find_spec(bundled.BUNDLED_MODELS[name].package) is not None


@pytest.fixture(scope="module", params=NAMES)
def converted(request, tmp_path_factory):
  """(name, directory) of dial_jax's conversion, done in a process that cannot import torch."""
  name = request.param
  if not _installed(name):
    pytest.skip(f"`{bundled.BUNDLED_MODELS[name].pip}` not done")
  cache = tmp_path_factory.mktemp(f"{name}-notorch")
  proc = subprocess.run([sys.executable, "-c", _NO_TORCH, name, str(cache)], cwd=ROOT, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return name, Path(proc.stdout.strip().splitlines()[-1])


def _transformers_convert(spec: bundled.BundledModel, gguf: Path, out: Path) -> None:
  """transformers' GGUF conversion through torch (dial_jax's converter up to converter version 1)."""
  import torch
  from safetensors.torch import save_file
  from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
  from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

  config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
  for key, value in spec.config.items():
    setattr(config, key, value)
  config.architectures = [spec.architecture]
  config.dtype = "float32"
  config._name_or_path = ""
  config.__dict__.pop("_model_name_or_path", None)
  with torch.device("meta"):
    model = AutoModelForCausalLM.from_config(config)
  tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model, torch_dtype=torch.float32)
  out.mkdir()
  save_file({k: v.contiguous() for k, v in tensors["tensors"].items()}, out / "model.safetensors",
            metadata={"format": "pt"})
  config.save_pretrained(out)
  tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
  if spec.model_type == "llama":
    bundled._smollm_pretokenizer(tokenizer)
  tokenizer.pad_token = tokenizer.convert_ids_to_tokens(config.pad_token_id)
  tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = "right"
  tokenizer.save_pretrained(out)


@pytest.fixture(scope="module")
def reference(converted, tmp_path_factory):
  """transformers' conversion of the same GGUF, or a skip where torch is absent."""
  pytest.importorskip("torch", reason="the transformers (torch) reference conversion needs torch; "
                                      "the torch-free conversion itself ran")
  name, _ = converted
  spec = bundled.BUNDLED_MODELS[name]
  work = tmp_path_factory.mktemp(f"{name}-transformers")
  _transformers_convert(spec, bundled._locate_gguf(spec, work), work / "out")
  return work / "out"


def test_converted_without_torch(converted):
  name, path = converted
  files = {p.name for p in path.iterdir()}
  assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", bundled._STAMP} <= files
  tensors = read_state_dict(path)
  assert "model.embed_tokens.weight" in tensors and all(t.dtype == np.float32 for t in tensors.values())


def test_equals_transformers_conversion(converted, reference):
  _, path = converted
  ours = {p.name for p in path.iterdir()} - {bundled._STAMP}
  assert ours == {p.name for p in reference.iterdir()}
  mine, theirs = read_state_dict(path), read_state_dict(reference)
  assert sorted(mine) == sorted(theirs)
  for key in theirs:
    assert (mine[key].dtype, mine[key].shape) == (theirs[key].dtype, theirs[key].shape), key
    assert mine[key].tobytes() == theirs[key].tobytes(), f"{key}: values differ"
  for name in sorted(ours):  # safetensors header and metadata, config, tokenizer files, chat template
    assert (path / name).read_bytes() == (reference / name).read_bytes(), f"{name} differs"
