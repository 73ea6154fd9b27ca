"""The paper's four settings as deterministic, seeded JSONL splits.

Layout written by :func:`prepare_settings` under ``out_dir``::

  manifest.json
  <setting>/source_train.jsonl  source_val.jsonl           (labeled pairs)
  <setting>/target_train.jsonl  target_val.jsonl  target_test.jsonl

``target_train`` keeps its labels in the file; only the oracle baseline may
read them.  Split sizes (items; ``rest`` = everything left):

=================  ===============  ==========  ============  ==========  ===========
setting            source_train     source_val  target_train  target_val  target_test
=================  ===============  ==========  ============  ==========  ===========
cross_lingual      rest (EN HH)     150         600 (KO)      200         400
clean_to_noisy     rest (CNN/DM)    <= 30       rest (TL;DR)  200         400
few_shot           10 (TL;DR)       0 (none)    rest          200         400
simple_to_complex  rest (UKP)       <= 700      rest (ASAP)   200         400
=================  ===============  ==========  ============  ==========  ===========

Split units: HH/Korean by dialogue index (an index is English *or* Korean,
never both); TL;DR and CNN/DM by post/article id; UKP by topic/stance file (so
no argument is in two splits); ASAP by essay.  Units are shuffled with
``random.Random(f"{domain}:{seed}")`` and dealt greedily: a unit goes to the
first of (test, val) it fits into without exceeding the quota, else to train.
TL;DR uses the same key in clean_to_noisy and few_shot, so both settings share
target_val/target_test.  few_shot's 10 source pairs are drawn from
single-comparison posts of the TL;DR train part and removed from target_train.
cross_lingual leaves out the English pairs whose index went to the Korean
target and the valid Korean pairs beyond the quotas (counts in the manifest).

Seed 0 gives: cross_lingual 958/150/600/200/400, clean_to_noisy
198/29/942/200/400, few_shot 10/0/932/200/400, simple_to_complex
10991/659/1182/200/400 (source_train/source_val/target_train/target_val/test).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Callable, Sequence

from dial_jax import paths
from dial_jax.data import io as dio
from dial_jax.data import sources

SETTINGS = ("cross_lingual", "clean_to_noisy", "few_shot", "simple_to_complex")
SPLITS = ("source_train", "source_val", "target_train", "target_val", "target_test")

# Raw files, relative to the raw folder (same layout as ../shared/data/raw).
HH = "hh-rlhf-harmless/test.jsonl.gz"
KO = "ko-hh-rlhf-harmless/ko_harmless_base_test.txt"
TLDR = ("summarize-from-feedback/batch13.json", "summarize-from-feedback/batch18.json")
CNNDM = ("summarize-from-feedback/cnndm0.json",)
UKP_DIR = "ukpconvarg1-strict"
ASAP = "asap-aes/asap_set1.tsv"

TARGET_TEST, TARGET_VAL = 400, 200
HH_SOURCE_VAL, KO_TARGET_TRAIN = 150, 600
CNNDM_SOURCE_VAL, UKP_SOURCE_VAL, FEW_SHOT_N = 30, 700, 10


log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
ALLOW_MODIFIED_HINT = "pass --allow_modified_raw (allow_modified_raw=True) to use it anyway"


class MissingRawFiles(FileNotFoundError):
  """Raw files a setting needs are absent from the raw folder."""


class ManifestError(ValueError):
  """Prepared split files do not match their manifest.json (one line naming the file)."""


def ukp_files(raw_dir: Path) -> list[Path]:
  return sorted((Path(raw_dir) / UKP_DIR).glob("*.csv"))


def raw_files(setting: str, raw_dir: Path) -> list[Path]:
  """Raw files ``setting`` reads (UKP: every ``*.csv`` in its folder)."""
  raw_dir = Path(raw_dir)
  rel = {"cross_lingual": (HH, KO), "clean_to_noisy": CNNDM + TLDR, "few_shot": TLDR,
         "simple_to_complex": (ASAP,)}[setting]
  files = [raw_dir / r for r in rel]
  if setting == "simple_to_complex":
    files = ukp_files(raw_dir) + files
  return files


def check_raw(settings: Sequence[str], raw_dir: Path) -> None:
  """Raises :class:`MissingRawFiles` naming every missing file."""
  missing = [f"{s}: {p}" for s in settings for p in raw_files(s, raw_dir) if not p.is_file()]
  if "simple_to_complex" in settings and not ukp_files(raw_dir):
    missing.append(f"simple_to_complex: {Path(raw_dir) / UKP_DIR}/*.csv")
  if missing:
    raise MissingRawFiles(f"raw files missing under {raw_dir}: " + "; ".join(missing))


def check_published(settings: Sequence[str], raw_dir: Path) -> None:
  """Raises :class:`sources.RawFileError` naming the first raw file that is not the published one.

  Each file ``settings`` read must have the sha256 recorded in :data:`sources.PUBLISHED`; the message of a
  file that differs gives its row count against the published one (a truncated file shows here), and a
  published UKPConvArg file missing from the folder is named too.
  """
  raw_dir = Path(raw_dir)
  seen = set()
  for setting in settings:
    files = raw_files(setting, raw_dir)
    if setting == "simple_to_complex":
      for rel in sorted(r for r in sources.PUBLISHED if r.startswith(UKP_DIR + "/")):
        if not (raw_dir / rel).is_file():
          raise sources.RawFileError(f"{raw_dir / rel}: published UKPConvArg file missing ({setting} reads all "
                                     f"{sum(r.startswith(UKP_DIR + '/') for r in sources.PUBLISHED)}); "
                                     + ALLOW_MODIFIED_HINT)
    for path in files:
      rel = path.relative_to(raw_dir).as_posix()
      if rel in seen:
        continue
      seen.add(rel)
      if rel not in sources.PUBLISHED:
        raise sources.RawFileError(f"{path}: not one of the published raw files ({setting}); " + ALLOW_MODIFIED_HINT)
      want_sha, want_rows = sources.PUBLISHED[rel]
      got_sha = sha256(path)
      if got_sha != want_sha:
        rows = sources.count_rows(path)
        what = "truncated" if rows < want_rows else "modified"
        raise sources.RawFileError(
            f"{path}: not the published file ({what}? {rows:,} rows, published {want_rows:,}; sha256 "
            f"{got_sha[:12]}..., published {want_sha[:12]}...); " + ALLOW_MODIFIED_HINT)


def sha256(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def deal_groups(records: Sequence[dict], key: Callable[[dict], str], quotas: Sequence[int],
                rng: random.Random) -> list[list[dict]]:
  """Deals whole groups into ``len(quotas)`` capped splits plus a rest split.

  Groups are shuffled by ``rng``; each goes to the first split it fits into
  without exceeding that split's quota, otherwise to the rest (last list).
  """
  groups: dict[str, list[dict]] = {}
  for r in records:
    groups.setdefault(key(r), []).append(r)
  names = sorted(groups)
  rng.shuffle(names)
  out: list[list[dict]] = [[] for _ in range(len(quotas) + 1)]
  for g in names:
    items = groups[g]
    for i, q in enumerate(quotas):
      if len(out[i]) + len(items) <= q:
        out[i].extend(items)
        break
    else:
      out[-1].extend(items)
  return out


def _sorted(records: list[dict]) -> list[dict]:
  return sorted(records, key=lambda r: r["id"])


class _Converted:
  """Per-run cache of converter outputs (each raw file is converted once)."""

  def __init__(self, raw_dir: Path):
    self.raw_dir, self._cache = Path(raw_dir), {}

  def get(self, name: str):
    if name not in self._cache:
      r = self.raw_dir
      fn = {"hh": lambda: sources.convert_hh(r / HH),
            "ko": lambda: sources.convert_korean_hh(r / KO),
            "tldr": lambda: sources.convert_comparisons([r / p for p in TLDR], "tldr"),
            "cnndm": lambda: sources.convert_comparisons([r / p for p in CNNDM], "cnndm"),
            "ukp": lambda: sources.convert_ukp(ukp_files(r)),
            "asap": lambda: sources.convert_asap(r / ASAP)}[name]
      self._cache[name] = fn()
    return self._cache[name]


def _tldr_target(conv: _Converted, seed: int) -> tuple[list, list, list]:
  tldr, _ = conv.get("tldr")
  test, val, train = deal_groups(tldr, lambda r: r["group"], (TARGET_TEST, TARGET_VAL),
                                 random.Random(f"tldr:{seed}"))
  return train, val, test


def build_setting(setting: str, conv: _Converted, seed: int) -> tuple[dict[str, list[dict]], list[str], dict]:
  """Returns ``({split: records}, [converter names used], notes)`` for ``setting``.

  ``notes`` counts converted records deliberately left out of every split.
  """
  notes: dict = {}
  if setting == "cross_lingual":
    en, _ = conv.get("hh")
    ko, _ = conv.get("ko")
    ko_by_idx = {r["index"]: r for r in ko}
    order = list(range(max([r["index"] for r in en + ko]) + 1))
    random.Random(f"hh:{seed}").shuffle(order)
    quotas = {"target_test": TARGET_TEST, "target_val": TARGET_VAL, "target_train": KO_TARGET_TRAIN}
    splits = {s: [] for s in SPLITS}
    english_idx = set()
    for idx in order:
      split = next((s for s, q in quotas.items() if len(splits[s]) < q), None)
      if split is not None and idx in ko_by_idx:
        splits[split].append(ko_by_idx[idx])
      else:
        english_idx.add(idx)
    en_pool = [r for r in en if r["index"] in english_idx]
    val, train = deal_groups(en_pool, lambda r: r["group"], (HH_SOURCE_VAL,),
                                random.Random(f"hh-source:{seed}"))
    splits.update(source_train=train, source_val=val)
    used = ["hh", "ko"]
    ko_used = {r["index"] for s in ("target_train", "target_val", "target_test") for r in splits[s]}
    notes = {"en_pairs_left_out_index_used_by_korean_target": len(en) - len(en_pool),
             "ko_pairs_left_out_beyond_quota_or_english_index": len(ko) - len(ko_used)}
  elif setting in ("clean_to_noisy", "few_shot"):
    t_train, t_val, t_test = _tldr_target(conv, seed)
    if setting == "clean_to_noisy":
      cnndm, _ = conv.get("cnndm")
      s_val, s_train = deal_groups(cnndm, lambda r: r["group"], (CNNDM_SOURCE_VAL,),
                                   random.Random(f"cnndm:{seed}"))
      used = ["cnndm", "tldr"]
    else:
      counts: dict[str, int] = {}
      for r in t_train:
        counts[r["group"]] = counts.get(r["group"], 0) + 1
      single = sorted(r["id"] for r in t_train if counts[r["group"]] == 1)
      chosen = set(random.Random(f"few_shot:{seed}").sample(single, FEW_SHOT_N))
      s_train = [r for r in t_train if r["id"] in chosen]
      t_train = [r for r in t_train if r["id"] not in chosen]
      s_val = []
      used = ["tldr"]
    splits = dict(source_train=s_train, source_val=s_val, target_train=t_train,
                  target_val=t_val, target_test=t_test)
  elif setting == "simple_to_complex":
    ukp, _ = conv.get("ukp")
    asap, _ = conv.get("asap")
    s_val, s_train = deal_groups(ukp, lambda r: r["group"], (UKP_SOURCE_VAL,),
                                 random.Random(f"ukp:{seed}"))
    t_test, t_val, t_train = deal_groups(asap, lambda r: r["id"], (TARGET_TEST, TARGET_VAL),
                                         random.Random(f"asap:{seed}"))
    splits = dict(source_train=s_train, source_val=s_val, target_train=t_train,
                  target_val=t_val, target_test=t_test)
    used = ["ukp", "asap"]
  else:
    raise ValueError(f"unknown setting {setting!r}; choose from {SETTINGS}")
  return {s: _sorted(splits[s]) for s in SPLITS}, used, notes


_CONVERTER_FILES = {"hh": lambda r: [r / HH], "ko": lambda r: [r / KO],
                    "tldr": lambda r: [r / p for p in TLDR],
                    "cnndm": lambda r: [r / p for p in CNNDM],
                    "ukp": ukp_files, "asap": lambda r: [r / ASAP]}


def prepare_settings(raw_dir: str | Path, out_dir: str | Path, seed: int = 0,
                     settings: Sequence[str] = SETTINGS, *, allow_modified_raw: bool = False) -> dict:
  """Converts, splits and writes the requested settings atomically; returns the manifest.

  Every raw file is first checked against the published one (:func:`check_published`) unless
  ``allow_modified_raw``. Everything is written into a new directory beside ``out_dir`` that then replaces
  it in one rename: a failure leaves ``out_dir`` as it was. Settings not requested, and any other content
  of an existing ``out_dir`` (e.g. ``raw/``), are carried over (hard links), with their manifest entries
  when their files still match them. ``manifest.json`` holds, per setting: the seed, the raw folder, each
  split's file, kind, count and sha256, the raw files read (path relative to ``raw_dir``, sha256, whether
  it is the published file) and every converter's report (all drops with reasons).
  """
  raw_dir, out_dir = Path(raw_dir), Path(out_dir)
  unknown = [s for s in settings if s not in SETTINGS]
  if unknown:
    raise ValueError(f"unknown settings {unknown}; choose from {SETTINGS}")
  settings = list(dict.fromkeys(settings))
  check_raw(settings, raw_dir)
  if not allow_modified_raw:
    check_published(settings, raw_dir)
  if out_dir.exists() and not out_dir.is_dir():
    raise NotADirectoryError(f"--out_dir {out_dir} exists and is not a directory")
  real_out = out_dir.resolve()
  if real_out == raw_dir.resolve() or raw_dir.resolve() in real_out.parents:
    raise ValueError(f"--out_dir {out_dir} is or is inside the raw folder {raw_dir}; write the splits elsewhere")
  old = _read_manifest(real_out)
  tmp = paths.new_sibling_dir(real_out, "tmp")
  try:
    entries = _write_settings(raw_dir, tmp, seed, settings)
    if real_out.is_dir():
      for child in sorted(real_out.iterdir()):
        if child.name not in settings and child.name != MANIFEST:
          _link_tree(child, tmp / child.name)
      for setting, entry in old.get("settings", {}).items():
        if setting in settings or setting not in SETTINGS:
          continue
        entry = {"raw_dir": old.get("raw_dir"), **entry}
        try:
          _check_entry(tmp, setting, entry, real_out / MANIFEST)
        except ManifestError as e:
          log.warning("dropping %s from the manifest, its files no longer match it: %s", setting, e)
          continue
        entries[setting] = entry
    common = lambda key: (lambda vals: vals[0] if len(set(map(json.dumps, vals))) == 1 else None)(
        [e.get(key) for e in entries.values()])
    manifest = {"format": "dial_jax splits v1", "seed": common("seed"), "raw_dir": common("raw_dir"),
                "record_formats": {"pairs": list(dio.PAIR_FIELDS), "scored": list(dio.SCORED_FIELDS)},
                "settings": entries}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    paths.replace_dir(tmp, real_out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return manifest


def _write_settings(raw_dir: Path, dest: Path, seed: int, settings: Sequence[str]) -> dict:
  """Builds and writes ``settings`` under ``dest``; returns their manifest entries."""
  conv = _Converted(raw_dir)
  digests: dict[Path, str] = {}
  entries = {}
  for setting in settings:
    splits, used, notes = build_setting(setting, conv, seed)
    sdir = dest / setting
    entry = {"seed": seed, "raw_dir": str(raw_dir), "splits": {}, "source_files": [], "dropped": {},
             "left_out": notes}
    for split, recs in splits.items():
      path = sdir / f"{split}.jsonl"
      dio.write_jsonl(path, recs)
      kind = "scored" if setting == "simple_to_complex" and split.startswith("target") else "pairs"
      entry["splits"][split] = {"file": f"{setting}/{split}.jsonl", "kind": kind,
                                "count": len(recs), "sha256": sha256(path)}
    for name in used:
      for p in _CONVERTER_FILES[name](raw_dir):
        if p not in digests:
          digests[p] = sha256(p)
        rel = p.relative_to(raw_dir).as_posix()
        entry["source_files"].append({"path": rel, "sha256": digests[p],
                                      "published": sources.PUBLISHED.get(rel, (None,))[0] == digests[p]})
      entry["dropped"][name] = conv.get(name)[1].to_dict()
    entries[setting] = entry
  return entries


def _read_manifest(data_dir: Path) -> dict:
  path = Path(data_dir) / MANIFEST
  if not path.is_file():
    return {}
  try:
    manifest = json.loads(path.read_text(encoding="utf-8"))
  except ValueError as e:
    log.warning("ignoring unreadable %s: %s", path, e)
    return {}
  return manifest if isinstance(manifest, dict) else {}


def _check_entry(data_dir: Path, setting: str, entry: dict, manifest_path) -> None:
  for split in SPLITS:
    info = entry.get("splits", {}).get(split)
    if not isinstance(info, dict) or "file" not in info or "sha256" not in info:
      raise ManifestError(f"{manifest_path}: setting {setting!r} has no entry for split {split!r}; "
                          f"rerun python -m dial_jax.prepare --settings={setting}")
    path = Path(data_dir) / info["file"]
    if not path.is_file():
      raise ManifestError(f"{path}: missing (listed in {manifest_path}); "
                          f"rerun python -m dial_jax.prepare --settings={setting}")
    if sha256(path) != info["sha256"]:
      raise ManifestError(f"{path}: sha256 differs from {manifest_path} (changed after prepare); "
                          f"rerun python -m dial_jax.prepare --settings={setting}")


def check_manifest(data_dir: str | Path, setting: str) -> dict:
  """Checks ``setting``'s split files under ``data_dir`` against ``manifest.json``; returns its entry.

  Raises :class:`ManifestError` (one line naming the manifest or the split file) when the manifest is
  missing or unreadable, has no entry for ``setting``, or a split file is missing or has another sha256.
  """
  data_dir = Path(data_dir)
  path = data_dir / MANIFEST
  if not path.is_file():
    raise ManifestError(f"{path}: missing; prepare the data with python -m dial_jax.prepare --out_dir={data_dir}")
  try:
    manifest = json.loads(path.read_text(encoding="utf-8"))
    entry = manifest["settings"][setting]
  except ValueError as e:
    raise ManifestError(f"{path}: not valid JSON ({e})") from None
  except (KeyError, TypeError):
    raise ManifestError(f"{path}: no entry for setting {setting!r}; "
                        f"rerun python -m dial_jax.prepare --settings={setting}") from None
  _check_entry(data_dir, setting, entry, path)
  return entry


def _link_tree(src: Path, dst: Path) -> None:
  """Hard-links ``src`` (file or tree; symlinks copied as links) to ``dst``; copies across filesystems."""
  def link(a, b):
    try:
      os.link(a, b)
    except OSError:
      shutil.copy2(a, b)
  if src.is_symlink():
    os.symlink(os.readlink(src), dst)
  elif src.is_dir():
    shutil.copytree(src, dst, symlinks=True, copy_function=link)
  else:
    link(src, dst)
