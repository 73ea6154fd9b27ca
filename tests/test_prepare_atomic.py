"""prepare is atomic and checks its raw files; check_manifest (issue 14, item 5).

Real raw files from ../shared/data/raw; the settings prepared here (few_shot, clean_to_noisy) read only the
small summarize-from-feedback files, and the bad raw files are truncated or corrupted copies in tmp_path.
"""
import filecmp
import json
import shutil
from pathlib import Path

import pytest

from dial_jax import prepare
from dial_jax.data import settings as S
from dial_jax.data import sources

RAW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "raw"
SMALL = ["few_shot", "clean_to_noisy"]

if not RAW.is_dir():
  pytest.skip(f"real data folder {RAW} missing", allow_module_level=True)


def _snapshot(root: Path) -> dict:
  return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _raw_copy(tmp_path: Path, rels) -> Path:
  """A raw folder in tmp_path with copies of the given published files."""
  raw = tmp_path / "raw"
  for rel in rels:
    (raw / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RAW / rel, raw / rel)
  return raw


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """few_shot + clean_to_noisy with seed 0 (the folder tests copy before changing it)."""
  out = tmp_path_factory.mktemp("atomic") / "splits"
  S.prepare_settings(RAW, out, seed=0, settings=SMALL)
  return out


def test_failure_midway_leaves_out_dir_untouched(prepared, tmp_path, monkeypatch):
  out = tmp_path / "splits"
  shutil.copytree(prepared, out)
  before = _snapshot(out)
  real = S.build_setting

  def fail_on_second(setting, conv, seed):
    if setting == SMALL[1]:
      raise RuntimeError("disk full")
    return real(setting, conv, seed)

  monkeypatch.setattr(S, "build_setting", fail_on_second)
  with pytest.raises(RuntimeError, match="disk full"):
    S.prepare_settings(RAW, out, seed=1, settings=SMALL)
  assert _snapshot(out) == before  # few_shot was not rewritten with seed 1
  assert sorted(p.name for p in tmp_path.iterdir()) == ["splits"]  # no temporary directory left behind
  for setting in SMALL:
    S.check_manifest(out, setting)


def test_subset_keeps_other_settings_and_manifest_stays_true(prepared, tmp_path):
  out = tmp_path / "splits"
  shutil.copytree(prepared, out)
  (out / "raw").mkdir()
  (out / "raw" / "note.txt").write_text("user file")
  kept = _snapshot(out / "clean_to_noisy")
  manifest = S.prepare_settings(RAW, out, seed=1, settings=["few_shot"])
  on_disk = json.loads((out / "manifest.json").read_text())
  assert on_disk == manifest
  assert set(on_disk["settings"]) == set(SMALL)  # clean_to_noisy not dropped
  assert on_disk["settings"]["few_shot"]["seed"] == 1 and on_disk["settings"]["clean_to_noisy"]["seed"] == 0
  assert on_disk["seed"] is None  # the settings now have different seeds
  assert _snapshot(out / "clean_to_noisy") == kept
  assert (out / "raw" / "note.txt").read_text() == "user file"
  for setting in SMALL:
    entry = S.check_manifest(out, setting)
    for info in entry["splits"].values():
      assert S.sha256(out / info["file"]) == info["sha256"]
  assert not filecmp.cmp(prepared / "few_shot/target_test.jsonl", out / "few_shot/target_test.jsonl", False)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["splits"]


def test_check_manifest_names_the_changed_file(prepared, tmp_path):
  out = tmp_path / "splits"
  shutil.copytree(prepared, out)
  assert S.check_manifest(out, "few_shot")["seed"] == 0
  path = out / "few_shot" / "target_val.jsonl"
  path.write_text(path.read_text().replace("TL;DR", "TLDR", 1))
  with pytest.raises(S.ManifestError, match=r"few_shot/target_val\.jsonl: sha256 differs") as e:
    S.check_manifest(out, "few_shot")
  assert "\n" not in str(e.value)
  path.unlink()
  with pytest.raises(S.ManifestError, match=r"target_val\.jsonl: missing"):
    S.check_manifest(out, "few_shot")
  with pytest.raises(S.ManifestError, match="no entry for setting 'cross_lingual'"):
    S.check_manifest(out, "cross_lingual")
  with pytest.raises(S.ManifestError, match=r"manifest\.json: missing"):
    S.check_manifest(tmp_path / "nowhere", "few_shot")


def test_out_dir_in_the_raw_folder_is_refused(tmp_path):
  raw = _raw_copy(tmp_path, S.TLDR)
  for out in (raw, raw / "splits"):
    with pytest.raises(ValueError, match="inside the raw folder"):
      S.prepare_settings(raw, out, settings=["few_shot"])
  assert sorted(p.name for p in raw.iterdir()) == ["summarize-from-feedback"]


def test_truncated_asap_is_refused_naming_the_file(tmp_path, capsys):
  raw = _raw_copy(tmp_path, [p.relative_to(RAW).as_posix() for p in S.ukp_files(RAW)])
  (raw / S.ASAP).parent.mkdir(parents=True)
  data = (RAW / S.ASAP).read_bytes()
  (raw / S.ASAP).write_bytes(data[:len(data) // 5])  # cut inside an essay
  out = tmp_path / "out"
  assert prepare.main(["prepare", f"--raw_dir={raw}", f"--out_dir={out}", "--settings=simple_to_complex"]) == 1
  err = capsys.readouterr().err.strip()
  assert "asap_set1.tsv" in err and "1,782" in err and "\n" not in err, err
  assert not out.exists()


def test_modified_raw_file_allowed_only_on_request(tmp_path):
  raw = _raw_copy(tmp_path, S.TLDR)
  path = raw / S.TLDR[1]
  lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
  path.write_text("".join(lines[:300]), encoding="utf-8")
  with pytest.raises(ValueError, match=r"batch18\.json: not the published file \(truncated\? 300 rows, "
                                       r"published 674"):
    S.prepare_settings(raw, tmp_path / "out", settings=["few_shot"])
  manifest = S.prepare_settings(raw, tmp_path / "out", settings=["few_shot"], allow_modified_raw=True)
  published = {f["path"]: f["published"] for f in manifest["settings"]["few_shot"]["source_files"]}
  assert published == {S.TLDR[0]: True, S.TLDR[1]: False}


def test_decode_errors_name_file_and_line(tmp_path):
  raw = _raw_copy(tmp_path, S.TLDR)
  path = raw / S.TLDR[0]
  lines = path.read_bytes().split(b"\n")
  lines[4] = lines[4][:50] + b"\xff\xfe" + lines[4][50:]
  path.write_bytes(b"\n".join(lines))
  with pytest.raises(ValueError, match=r"batch13\.json:5: not valid UTF-8"):
    sources.convert_comparisons([raw / p for p in S.TLDR], "tldr")
  gz = tmp_path / "test.jsonl.gz"
  gz.write_bytes((RAW / S.HH).read_bytes()[:5000])  # truncated gzip stream
  with pytest.raises(ValueError, match=r"test\.jsonl\.gz: cannot read"):
    sources.convert_hh(gz)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "move_aside"])
def test_replace_dir_puts_the_new_directory_in_place_and_leaves_no_temporary(tmp_path, monkeypatch, exchange):
  """paths.replace_dir, with which prepare (and export) put their output in place: with the atomic exchange, and
  without it (moved aside, then put back if the new directory cannot take its place)."""
  from dial_jax import paths
  if not exchange:
    monkeypatch.setattr(paths, "_exchange", lambda a, b: False)
  dest = tmp_path / "out"
  dest.mkdir()
  (dest / "old.txt").write_text("old")

  def new_dir(text):
    new = paths.new_sibling_dir(dest, "tmp")
    (new / "new.txt").write_text(text)
    return new

  new = new_dir("a")
  if not exchange:
    real_rename = paths.os.rename

    def failing_rename(a, b):
      if a == new:
        raise OSError("rename failed (simulated)")
      real_rename(a, b)
    monkeypatch.setattr(paths.os, "rename", failing_rename)
    with pytest.raises(OSError, match="simulated"):
      paths.replace_dir(new, dest)
    assert [p.name for p in dest.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [new.name, "out"]
    monkeypatch.setattr(paths.os, "rename", real_rename)
  paths.replace_dir(new, dest)
  assert [p.read_text() for p in dest.iterdir()] == ["a"]
  paths.replace_dir(new_dir("b"), dest)
  assert [p.read_text() for p in dest.iterdir()] == ["b"]
  assert [p.name for p in tmp_path.iterdir()] == ["out"]
  fresh = tmp_path / "fresh"
  paths.replace_dir(paths.new_sibling_dir(fresh, "tmp"), fresh)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "out"]
