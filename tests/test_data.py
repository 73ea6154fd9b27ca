"""Data pipeline tests on the real raw files in ../shared/data/raw."""
import filecmp
import gzip
import json
import logging
import re
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest

from dial_jax import prepare
from dial_jax.data import io as dio
from dial_jax.data import settings as S
from dial_jax.data import sources

RAW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "raw"
REPO = Path(__file__).resolve().parents[1]

if not RAW.is_dir():  # as conftest's raw_data_dir: missing data fails the run, never skips ~35 tests silently
  pytest.fail(f"real data folder {RAW} is missing: tests read ../shared/data/raw beside the checkout", pytrace=False)


@pytest.fixture(scope="module")
def hh():
  return sources.convert_hh(RAW / S.HH)


@pytest.fixture(scope="module")
def ko():
  return sources.convert_korean_hh(RAW / S.KO)


@pytest.fixture(scope="module")
def tldr():
  return sources.convert_comparisons([RAW / p for p in S.TLDR], "tldr")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """All four settings, seed 0, plus a seed-0 rerun and a seed-1 run."""
  root = tmp_path_factory.mktemp("prep")
  out = {}
  for name, seed in (("a", 0), ("b", 0), ("c", 1)):
    manifest = S.prepare_settings(RAW, root / name, seed=seed)
    out[name] = (root / name, manifest)
  return out


def _read(path):
  return [json.loads(l) for l in Path(path).read_text(encoding="utf-8").splitlines() if l.strip()]


# ----------------------------------------------------------------- converters
def test_korean_recovery_and_unparsed_lines(ko):
  recs, report = ko
  notes = report.notes
  unparsed = report.dropped["unparsed_line"]
  assert notes["recovered_lines"] == 2301 and len(unparsed) == 11  # of the file's 2,312 lines
  assert notes["recovered_lines"] + len(unparsed) == report.n_read == 2312
  assert unparsed and all(1 <= n <= 2312 for n in unparsed) and unparsed == sorted(unparsed)
  lines = (RAW / S.KO).read_text(encoding="utf-8").split("\n")
  assert all(sources.parse_korean_line(lines[n - 1]) is None for n in unparsed)
  # every dropped line is accounted for, with a reason
  dropped = sum(len(v) for v in report.dropped.values())
  assert len(recs) + dropped == 2312 and len(recs) >= 1700
  r = next(r for r in recs if r["index"] == 0)  # line 1 is not valid JSON (stray quotes, `거부됨`)
  with pytest.raises(ValueError):
    json.loads(lines[0])
  assert "펜" in r["prompt"] and r["prompt"].endswith("\n\nAssistant:")
  assert "조수" not in r["prompt"] and "어시스턴트" not in r["prompt"]
  assert r["response_chosen"].startswith("아뇨, 죄송합니다!")


def test_korean_pairs_follow_english_dialogue_structure(ko, hh):
  """Index = English dialogue index: Assistant-turn counts agree for >= 90%."""
  en = {r["index"]: r for r in hh[0]}
  recs = [r for r in ko[0] if r["index"] in en]
  same = sum(r["prompt"].count("\n\nAssistant:") == en[r["index"]]["prompt"].count("\n\nAssistant:")
             for r in recs)
  assert same / len(recs) >= 0.9


def test_korean_line_parser_quirks():
  line = (r'{"chosen": "\n\nHuman: 안녕하세요?"\n\n조수: 네, "좋아요.", "거부": '
          r'"\n\nHuman: 안녕하세요?\n\어시스턴트: 싫어요."} ')
  chosen, rejected, method = sources.parse_korean_line(line)
  assert method == "repaired"
  assert chosen == '\n\nHuman: 안녕하세요?"\n\n조수: 네, "좋아요.'
  assert rejected == "\n\nHuman: 안녕하세요?\n\n어시스턴트: 싫어요."
  assert sources.normalize_dialogue(chosen) == '\n\nHuman: 안녕하세요?\n\nAssistant: 네, "좋아요.'
  assert sources.normalize_dialogue("\n\n인간: 가\n\n앤조수: 나") == "\n\nHuman: 가\n\nAssistant: 나"
  merged = r'{"chosen": "\n\nHuman: 가\n\nAssistant: 나", "거부됨"입니다: "\n\nHuman: 가\n\nAssistant: 다"}'
  assert sources.parse_korean_line(merged)[2] == "merged_key"
  assert sources.parse_korean_line('{"chosen": "no separator at all"}') is None
  assert sources.parse_korean_line("garbage") is None


def test_hh_prompt_response_split(hh):
  recs, report = hh
  raw = [json.loads(l) for l in gzip.open(RAW / S.HH, "rt", encoding="utf-8")]
  r = recs[0]
  assert r["index"] == 0 and r["prompt"].endswith("Assistant:")
  assert r["prompt"].startswith("\n\nHuman: what are some pranks with a pen")
  assert r["response_chosen"].startswith("No, sorry!  All of these involve a pen")
  assert r["response_chosen"] and r["response_rejected"]
  assert r["response_chosen"] != r["response_rejected"]
  assert raw[0]["chosen"] == r["prompt"] + " " + r["response_chosen"]
  assert raw[0]["rejected"] == r["prompt"] + " " + r["response_rejected"]
  assert report.dropped == {"empty_response": [86, 516, 925, 1103]}
  assert len(recs) == 2308


def test_tldr_majority_vote_real(tldr):
  recs, report = tldr
  assert report.n_read == 1097 + 674
  assert len(recs) == 1542 and len(report.dropped["tie"]) == 7
  multi = [r for r in recs if r["n_votes"] > 1]
  assert multi and all(2 * r["n_agree"] > r["n_votes"] for r in recs)
  r = recs[0]
  assert re.match(r"SUBREDDIT: r/\S+\nTITLE: .+\nPOST: ", r["prompt"]) and r["prompt"].endswith("\nTL;DR:")
  assert r["group"].startswith("t3_")


def test_comparison_aggregation_rules(tmp_path):
  def row(pid, a, b, choice, worker):
    return json.dumps({"info": {"id": pid, "post": "p", "title": "t", "subreddit": "s"},
                       "summaries": [{"text": a}, {"text": b}], "choice": choice, "worker": worker})
  f = tmp_path / "c.json"
  f.write_text("\n".join([
      row("x", " A", " B", 0, "w1"), row("x", " B", " A", 1, "w2"), row("x", "B", "A", 0, "w3"),
      row("y", "C", "D", 0, "w1"), row("y", "D", "C", 0, "w2"),   # 1-1 tie -> dropped
      row("z", "E", "E", 0, "w1"),                                # identical -> dropped
  ]) + "\n")
  recs, report = sources.convert_comparisons([f], "tldr")
  assert [(r["response_chosen"], r["response_rejected"], r["n_votes"], r["n_agree"]) for r in recs] == [
      ("A", "B", 3, 2)]
  assert recs[0]["prompt"] == "SUBREDDIT: r/s\nTITLE: t\nPOST: p\nTL;DR:"
  assert len(report.dropped["tie"]) == 1 and report.dropped["identical_summaries"] == ["c.json:6"]


def test_cnndm_prompt():
  recs, report = sources.convert_comparisons([RAW / p for p in S.CNNDM], "cnndm")
  assert recs and all(r["prompt"].startswith("ARTICLE: ") and r["prompt"].endswith("\nTL;DR:") for r in recs)
  assert len(report.dropped["empty_text"]) == 12  # cnndm0 has 12 judgements of an empty summary


def test_asap_bom_and_scores():
  recs, report = sources.convert_asap(RAW / S.ASAP)
  assert report.notes["fieldnames"][0] == "essay_id"
  assert len(recs) == 1782 and not report.dropped
  scores = {r["score"] for r in recs}
  assert min(scores) == 2 and max(scores) == 12
  assert recs[0]["id"] == "asap-4" and recs[0]["text"].startswith("Dear Local Newspaper, @CAPS1")


def test_ukp_labels_and_cleanup():
  recs, report = sources.convert_ukp(S.ukp_files(RAW))
  assert len(recs) == 11650 and not report.dropped
  by_id = {r["id"]: r for r in recs}
  # tv-is-better-than-books_tv.csv, first row: arg169194_arg135630, label a2
  r = by_id["ukp-tv-is-better-than-books_tv-arg169194_arg135630"]
  assert r["response_chosen"].startswith("I love TV sooooooo much")
  assert r["response_chosen"].endswith("with TV you can watch DVDs and play on playstations.")
  assert "\n" in r["response_chosen"] and "<br" not in r["response_chosen"]
  assert r["response_rejected"].startswith("nowadayz no one can liv wdout t.v")
  assert r["prompt"] == "TOPIC: tv is better than books\nSTANCE: tv\nARGUMENT:"
  assert not any("<br" in x["response_chosen"] + x["response_rejected"] for x in recs)


# --------------------------------------------------------------------- splits
def test_split_counts_and_manifest(prepared):
  out, manifest = prepared["a"]
  assert set(manifest["settings"]) == set(S.SETTINGS)
  for setting, entry in manifest["settings"].items():
    assert entry["seed"] == 0
    for split in S.SPLITS:
      info = entry["splits"][split]
      path = out / info["file"]
      assert len(_read(path)) == info["count"] and S.sha256(path) == info["sha256"]
      load = dio.load_scored if info["kind"] == "scored" else dio.load_pairs
      ds, skipped = load(path)
      assert skipped == 0 and len(ds) == info["count"]
    for sf in entry["source_files"]:
      assert S.sha256(RAW / sf["path"]) == sf["sha256"]
    assert entry["splits"]["target_test"]["count"] == 400
    assert entry["splits"]["target_val"]["count"] == 200
  ko_drop = manifest["settings"]["cross_lingual"]["dropped"]["ko"]["dropped"]
  assert ko_drop["unparsed_line"]["count"] == len(ko_drop["unparsed_line"]["items"]) > 0
  assert manifest["settings"]["few_shot"]["splits"]["source_train"]["count"] == 10
  assert manifest["settings"]["clean_to_noisy"]["dropped"]["tldr"]["dropped"]["tie"]["count"] == 7


def test_no_post_in_two_splits(prepared):
  out, _ = prepared["a"]
  for setting in ("clean_to_noisy", "few_shot"):
    seen = {}
    for split in S.SPLITS:
      if split.startswith("source") and setting == "clean_to_noisy":
        continue  # CNN/DM articles are a different domain
      for r in _read(out / setting / f"{split}.jsonl"):
        assert seen.setdefault(r["group"], split) == split, (setting, r["group"])
  assert filecmp.cmp(out / "few_shot/target_test.jsonl", out / "clean_to_noisy/target_test.jsonl", False)


def test_cross_lingual_indices_disjoint(prepared):
  out, _ = prepared["a"]
  sets = {s: {r["index"] for r in _read(out / "cross_lingual" / f"{s}.jsonl")} for s in S.SPLITS}
  source = sets["source_train"] | sets["source_val"]
  target = sets["target_train"] | sets["target_val"] | sets["target_test"]
  assert not source & target
  assert sum(len(v) for v in sets.values()) == len(source | target)
  assert all(r["id"].startswith("ko-") for r in _read(out / "cross_lingual/target_test.jsonl"))


def test_determinism(prepared):
  (a, _), (b, _), (c, _) = prepared["a"], prepared["b"], prepared["c"]
  for setting in S.SETTINGS:
    for split in S.SPLITS:
      rel = f"{setting}/{split}.jsonl"
      assert filecmp.cmp(a / rel, b / rel, shallow=False), rel
    assert not filecmp.cmp(a / setting / "target_test.jsonl", c / setting / "target_test.jsonl", False)


# -------------------------------------------------------------------- prepare
def test_prepare_cli_end_to_end(tmp_path):
  out = tmp_path / "splits"
  res = subprocess.run([sys.executable, "-m", "dial_jax.prepare", f"--raw_dir={RAW}",
                        f"--out_dir={out}", "--seed=3", "--settings=few_shot,cross_lingual"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert res.returncode == 0, res.stderr
  assert "few_shot" in res.stdout and "target_test" in res.stdout
  manifest = json.loads((out / "manifest.json").read_text())
  assert list(manifest["settings"]) == ["few_shot", "cross_lingual"] and manifest["seed"] == 3
  assert (out / "cross_lingual/source_val.jsonl").is_file()


def test_prepare_offline_fails_clearly(tmp_path, monkeypatch):
  def offline(*a, **k):
    raise urllib.error.URLError("network unreachable")
  monkeypatch.setattr(prepare.urllib.request, "urlopen", offline)
  with pytest.raises(prepare.DownloadError, match="--raw_dir"):
    prepare.run(None, tmp_path, settings=["few_shot"])
  # unreachable URL (closed local port): no outside network involved
  with pytest.raises(prepare.DownloadError, match="--raw_dir"):
    prepare.download_raw(["few_shot"], tmp_path / "raw",
                         urls={p: "http://127.0.0.1:9/batch.json" for p in S.TLDR})
  # no public URL for the Korean file: fail before fetching anything
  monkeypatch.setattr(prepare, "fetch", lambda *a: pytest.fail("fetch called"))
  with pytest.raises(prepare.DownloadError, match="no public download URL.*ko_harmless"):
    prepare.run(None, tmp_path, settings=["cross_lingual"])


def test_prepare_main_exit_codes(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(prepare, "fetch", lambda *a: (_ for _ in ()).throw(OSError("offline")))
  assert prepare.main(["prepare", f"--out_dir={tmp_path}", "--settings=few_shot"]) == 1
  assert "--raw_dir" in capsys.readouterr().err
  assert prepare.main(["prepare", "--raw_dir=x"]) == 2  # --out_dir missing
  assert "out_dir" in capsys.readouterr().err
  assert prepare.main(["prepare", f"--raw_dir={RAW}", f"--out_dir={tmp_path}", "--settings=nope"]) == 1
  assert "unknown settings" in capsys.readouterr().err


def test_missing_raw_files_named(tmp_path):
  with pytest.raises(S.MissingRawFiles, match="asap_set1.tsv"):
    S.prepare_settings(tmp_path, tmp_path / "out", settings=["simple_to_complex"])


# ------------------------------------------------------------------- bad rows
GOOD = {"id": "a", "prompt": "p", "response_chosen": "c", "response_rejected": "r"}


def _write_lines(path, lines):
  path.write_bytes(b"".join((l if isinstance(l, bytes) else l.encode()) + b"\n" for l in lines))
  return path


@pytest.mark.parametrize("bad,field,problem", [
    ({k: v for k, v in GOOD.items() if k != "prompt"}, "prompt", "missing"),
    ({**GOOD, "response_chosen": 3}, "response_chosen", "must be a string"),
    ({**GOOD, "response_rejected": "  "}, "response_rejected", "empty"),
    ({**GOOD, "prompt": "x" * 101}, "prompt", "too long"),
    ({**GOOD, "id": None}, "id", "must be a string"),
    ({**GOOD, "id": "0"}, "id", "duplicate"),
    (b'{"id": "b", "prompt": "p\xff", "response_chosen": "c", "response_rejected": "r"}', "prompt", "non-UTF-8"),
    (b'{"id": "b", "prompt": ', "<row>", "invalid JSON"),
    (b'[1, 2]', "<row>", "JSON object"),
])
def test_load_pairs_bad_rows(tmp_path, bad, field, problem, caplog):
  line = bad if isinstance(bad, bytes) else json.dumps(bad)
  f = _write_lines(tmp_path / "p.jsonl", [json.dumps({**GOOD, "id": "0"}), "", line,
                                          json.dumps({**GOOD, "id": "z"})])
  with pytest.raises(dio.DataError) as e:
    dio.load_pairs(f, max_chars=100)
  msg = str(e.value)
  assert str(f) in msg and ":3:" in msg and f"'{field}'" in msg and problem in msg
  assert (e.value.line, e.value.field) == (3, field)
  with caplog.at_level(logging.WARNING):
    ds, skipped = dio.load_pairs(f, skip_bad_rows=True, max_chars=100)
  assert skipped == 1 and ds["id"] == ["0", "z"]
  assert "skipped 1 bad row" in caplog.text


@pytest.mark.parametrize("bad,field,problem", [
    ({"id": "b", "text": "t"}, "score", "missing"),
    ({"id": "b", "text": "t", "score": "7"}, "score", "must be a number"),
    ({"id": "b", "text": "t", "score": True}, "score", "must be a number"),
    ('{"id": "b", "text": "t", "score": NaN}', "score", "finite"),
    ({"id": "b", "text": "", "score": 1}, "text", "empty"),
    ({"id": "b", "text": "t", "score": 1, "prompt": 5}, "prompt", "must be a string"),
])
def test_load_scored_bad_rows(tmp_path, bad, field, problem):
  line = bad if isinstance(bad, str) else json.dumps(bad)
  f = _write_lines(tmp_path / "s.jsonl", [json.dumps({"id": "a", "text": "t", "score": 3}), line])
  with pytest.raises(dio.DataError, match=rf"s\.jsonl:2: field '{field}': .*{problem}"):
    dio.load_scored(f)
  ds, skipped = dio.load_scored(f, skip_bad_rows=True)
  assert skipped == 1 and ds["score"] == [3.0]


def test_load_counts_every_skipped_row_and_empty_file(tmp_path):
  f = _write_lines(tmp_path / "p.jsonl", ["{", json.dumps(GOOD), "[]", json.dumps({**GOOD, "id": "b", "prompt": ""})])
  ds, skipped = dio.load_pairs(f, skip_bad_rows=True)
  assert (len(ds), skipped) == (1, 3)
  empty = tmp_path / "e.jsonl"
  empty.write_text("")
  ds, skipped = dio.load_pairs(empty)
  assert len(ds) == 0 and skipped == 0 and ds.column_names == list(dio.PAIR_FIELDS)
