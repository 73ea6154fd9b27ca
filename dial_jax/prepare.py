r"""Builds the four DIAL settings' splits from the raw public data.

  python -m dial_jax.prepare --raw_dir=../shared/data/raw --out_dir=data/splits \
      [--seed=0] [--settings=cross_lingual,clean_to_noisy] [--allow_modified_raw]

Without ``--raw_dir`` the raw files are downloaded from where their projects
publish them into ``<out_dir>/raw`` (same layout as ``../shared/data/raw``).
The Korean HH translation and ASAP (Kaggle, login required) have no public
direct URL: settings needing them require ``--raw_dir``.

Each raw file must be the published one (sha256 and row count recorded in
``dial_jax.data.sources.PUBLISHED``; a truncated or edited file is refused,
naming it, unless ``--allow_modified_raw``). The splits are written into a new
directory beside ``out_dir`` that replaces it in one rename, so a failure
leaves ``out_dir`` as it was; settings not named in ``--settings`` (and their
manifest entries) are kept.
"""
from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from absl import flags

from dial_jax import cli_logging  # noqa: F401  (first: quiets library INFO logs)
from dial_jax.data import settings as S

_SFF = "https://openaipublic.blob.core.windows.net/summarize-from-feedback/dataset/comparisons/"
_UKP = ("https://raw.githubusercontent.com/UKPLab/acl2016-convincing-arguments/master/data/"
        "UKPConvArg1Strict-CSV/")
UKP_FILES = (
    "ban-plastic-water-bottles_no-bad-for-the-economy",
    "ban-plastic-water-bottles_yes-emergencies-only",
    "christianity-or-atheism-_atheism", "christianity-or-atheism-_christianity",
    "evolution-vs-creation_creation", "evolution-vs-creation_evolution",
    "firefox-vs-internet-explorer_it-has-a-cute-logo-oh-and-extensions-err-add-ons",
    "firefox-vs-internet-explorer_there-s-more-browsers-than-the-ie-firefox-is-an-animal",
    "gay-marriage-right-or-wrong_allowing-gay-marriage-is-right",
    "gay-marriage-right-or-wrong_allowing-gay-marriage-is-wrong",
    "human-growth-and-development-should-parents-use-spanking-as-an-option-to-discipline-_no",
    "human-growth-and-development-should-parents-use-spanking-as-an-option-to-discipline-_yes",
    "if-your-spouse-committed-murder-and-he-or-she-confided-in-you-would-you-turn-them-in-_no",
    "if-your-spouse-committed-murder-and-he-or-she-confided-in-you-would-you-turn-them-in-_yes",
    "india-has-the-potential-to-lead-the-world-_no-against",
    "india-has-the-potential-to-lead-the-world-_yes-for",
    "is-it-better-to-have-a-lousy-father-or-to-be-fatherless-_fatherless",
    "is-it-better-to-have-a-lousy-father-or-to-be-fatherless-_lousy-father",
    "is-porn-wrong-_no-is-is-not", "is-porn-wrong-_yes-porn-is-wrong",
    "is-the-school-uniform-a-good-or-bad-idea-_bad", "is-the-school-uniform-a-good-or-bad-idea-_good",
    "personal-pursuit-or-advancing-the-common-good-_advancing-the-commond-good",
    "personal-pursuit-or-advancing-the-common-good-_personal-pursuit",
    "pro-choice-vs-pro-life_pro-choice", "pro-choice-vs-pro-life_pro-life",
    "should-physical-education-be-mandatory-in-schools-_no-",
    "should-physical-education-be-mandatory-in-schools-_yes-",
    "tv-is-better-than-books_books", "tv-is-better-than-books_tv",
    "william-farquhar-ought-to-be-honoured-as-the-rightful-founder-of-singapore_no-it-is-raffles-",
    "william-farquhar-ought-to-be-honoured-as-the-rightful-founder-of-singapore_yes-of-course-",
)
# relative raw path -> public URL (None: no public direct download exists).
RAW_URLS: dict[str, str | None] = {
    S.HH: "https://raw.githubusercontent.com/anthropics/hh-rlhf/master/harmless-base/test.jsonl.gz",
    **{p: _SFF + Path(p).name for p in S.TLDR + S.CNNDM},
    **{f"{S.UKP_DIR}/{n}.csv": f"{_UKP}{n}.csv" for n in UKP_FILES},
    S.KO: None,
    S.ASAP: None,
}
_NEEDS = {"cross_lingual": [S.HH, S.KO], "clean_to_noisy": list(S.CNNDM + S.TLDR),
          "few_shot": list(S.TLDR),
          "simple_to_complex": [f"{S.UKP_DIR}/{n}.csv" for n in UKP_FILES] + [S.ASAP]}


class DownloadError(RuntimeError):
  """A raw file could not be fetched; the message says to pass --raw_dir."""


def fetch(url: str, dest: Path, timeout: float = 60.0) -> None:
  """Downloads ``url`` to ``dest`` atomically (via a ``.part`` file)."""
  dest.parent.mkdir(parents=True, exist_ok=True)
  tmp = dest.with_name(dest.name + ".part")
  with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as f:
    while block := resp.read(1 << 20):
      f.write(block)
  tmp.replace(dest)


def download_raw(settings: Sequence[str], raw_dir: Path, urls: dict | None = None) -> None:
  """Fetches the raw files ``settings`` need into ``raw_dir`` (skips present ones)."""
  urls = RAW_URLS if urls is None else urls
  hint = (" Pass --raw_dir=DIR pointing at a folder with the raw files "
          "(layout of ../shared/data/raw, see dial_jax/data/settings.py).")
  rels = list(dict.fromkeys(r for s in settings for r in _NEEDS[s]))
  no_url = [r for r in rels if urls.get(r) is None and not (raw_dir / r).is_file()]
  if no_url:
    raise DownloadError(f"no public download URL for {', '.join(no_url)} (needed by "
                        f"{', '.join(s for s in settings if set(_NEEDS[s]) & set(no_url))})." + hint)
  for rel in rels:
    dest = raw_dir / rel
    if dest.is_file():
      continue
    try:
      fetch(urls[rel], dest)
    except (urllib.error.URLError, OSError, ValueError) as e:
      raise DownloadError(f"could not download {urls[rel]}: {e}. Offline?" + hint) from e


def summary_table(manifest: dict) -> str:
  """Plain-text table of split counts per setting."""
  head = f"{'setting':<18}" + "".join(f"{s:>14}" for s in S.SPLITS)
  lines = [head, "-" * len(head)]
  for name, entry in manifest["settings"].items():
    lines.append(f"{name:<18}" + "".join(f"{entry['splits'][s]['count']:>14}" for s in S.SPLITS))
  return "\n".join(lines)


def run(raw_dir: str | Path | None, out_dir: str | Path, seed: int = 0,
        settings: Sequence[str] = S.SETTINGS, allow_modified_raw: bool = False) -> dict:
  """Downloads (if ``raw_dir`` is None), converts, splits; returns the manifest."""
  out_dir = Path(out_dir)
  bad = [s for s in settings if s not in S.SETTINGS]
  if bad:
    raise ValueError(f"unknown settings {bad}; choose from {', '.join(S.SETTINGS)}")
  if raw_dir is None:
    raw_dir = out_dir / "raw"
    download_raw(settings, raw_dir)
  return S.prepare_settings(raw_dir, out_dir, seed=seed, settings=settings,
                            allow_modified_raw=allow_modified_raw)


def make_flags() -> flags.FlagValues:
  """This CLI's flags, in a private registry (no clash with other absl CLIs)."""
  fv = flags.FlagValues()
  flags.DEFINE_string("raw_dir", None, "Folder with the raw files; omitted: download into "
                      "out_dir/raw.", flag_values=fv)
  flags.DEFINE_string("out_dir", None, "Where <setting>/*.jsonl and manifest.json go.",
                      flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Split seed.", flag_values=fv)
  flags.DEFINE_list("settings", list(S.SETTINGS), "Comma-separated subset of settings.",
                    flag_values=fv)
  flags.DEFINE_boolean("allow_modified_raw", False, "Use raw files that differ from the published ones "
                       "(recorded as such in the manifest) instead of refusing them.", flag_values=fv)
  flags.DEFINE_boolean("help", False, "Show this help.", flag_values=fv)
  flags.mark_flag_as_required("out_dir", flag_values=fv)
  return fv


def main(argv: Sequence[str] | None = None) -> int:
  """CLI entry point; returns the exit status (0 ok, 1 data/download error, 2 usage)."""
  fv = make_flags()
  argv = list(sys.argv if argv is None else argv)
  usage = f"{__doc__}\nflags:\n{fv.get_help()}"
  if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
    print(usage)
    return 0
  try:
    extra = fv(argv)
    if len(extra) > 1:
      raise flags.Error(f"unexpected arguments: {extra[1:]}")
  except flags.Error as e:
    print(f"error: {e}\n{usage}", file=sys.stderr)
    return 2
  try:
    manifest = run(fv.raw_dir, fv.out_dir, fv.seed, fv.settings, fv.allow_modified_raw)
  except (DownloadError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(summary_table(manifest))
  print(f"wrote {Path(fv.out_dir) / 'manifest.json'} (seed {fv.seed})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
