"""Converters from each raw public data format to canonical records.

Canonical records:

* pairs:  ``{"id", "prompt", "response_chosen", "response_rejected"}`` plus
  optional metadata (``group``: the unit splits never cut across; ``index``:
  HH dialogue index; ``n_votes``/``n_agree``: comparison votes).
  The model input for a response is ``prompt + " " + response``.
* scored texts: ``{"id", "text", "score"}`` plus an optional ``prompt``
  (model input ``prompt + " " + text``).

Every converter is a pure function of its input file(s) and returns
``(records, report)``; ``report`` (:class:`Report`) says how many raw rows were
read and lists every dropped row with the reason, never dropping silently.

Prompt formats (kept identical across settings):

* HH / Korean HH: the dialogue up to and including the last ``\\n\\nAssistant:``
  (``"\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nAssistant:"``).
* Reddit TL;DR: ``"SUBREDDIT: r/{subreddit}\\nTITLE: {title}\\nPOST: {post}\\nTL;DR:"``.
* CNN/DM:       ``"ARTICLE: {article}\\nTL;DR:"``.
* UKPConvArg / ASAP: ``"TOPIC: {topic}\\nSTANCE: {stance}\\nARGUMENT:"``.

Multi-worker comparisons (summarize-from-feedback): all judgements of the same
unordered pair of summaries of the same post/article (across all given files)
are pooled; the summary chosen by the strict majority of judgements wins; exact
ties are dropped (reason ``tie``).
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Iterable, Sequence

ASSISTANT_TAG = "\n\nAssistant:"
HUMAN_TAG = "\n\nHuman:"

# The published raw files (path relative to the raw folder -> (sha256, rows)), as in ../shared/data/raw.
# Rows as :func:`count_rows` counts them (JSON lines, TSV records without the header, Korean lines).
PUBLISHED: dict[str, tuple[str, int]] = {
    "asap-aes/asap_set1.tsv": ("4f6635a090cc45a029e505eac090a97beb9f0b8cb3fbe5a1094241b655ff2a66", 1782),
    "hh-rlhf-harmless/test.jsonl.gz": ("ebfaaed21162a4de120ae85366075b34425e2a6303fac59b99555002f7016f03", 2312),
    "ko-hh-rlhf-harmless/ko_harmless_base_test.txt":
        ("7f4c128b8bd66fca7d8041b59d0b3de623243dfdff38eb6146e1d5491864617e", 2312),
    "summarize-from-feedback/batch13.json": ("e4f4de3ad8763b801c4b45ff277e1ead75e9c4105f1b0837793c4b51477ec122", 1097),
    "summarize-from-feedback/batch18.json": ("5008e223e287b4c38e434e270cf77301993adba70e1f87362f35fb928f83863a", 674),
    "summarize-from-feedback/cnndm0.json": ("be936926b85b8d42d708529bb4fae2470918cb0bd7d8d3eb3c7a4b4cb986225b", 437),
    **{f"ukpconvarg1-strict/{name}.csv": (digest, rows) for name, digest, rows in (
        ("ban-plastic-water-bottles_no-bad-for-the-economy",
         "d1efc6d3f08a0167d6b71cf8f50ccb9d89da8e353162a712629dbaddee9fc883", 288),
        ("ban-plastic-water-bottles_yes-emergencies-only",
         "f1b594fcd3feb274a819b9bdd59673034f555d89acbabe7c0b40adcfc8df13de", 400),
        ("christianity-or-atheism-_atheism", "c9784346115d1275cab5fb6288a635e5a67b32110d73b2677629263e38a2f16e", 327),
        ("christianity-or-atheism-_christianity",
         "e90ce4eabeb3c6a34ad772e34ba7f5255364fa27cd87eaf2406824af401e1dcb", 261),
        ("evolution-vs-creation_creation", "722c40b9b2e6725036fcaca243fe7421deedf253f939a66a2c332e8a8395406b", 356),
        ("evolution-vs-creation_evolution", "0b8218b8b9bb8c3d7660a8b6008ddefc081c1d301de329dc7af796ab55f3a563", 426),
        ("firefox-vs-internet-explorer_it-has-a-cute-logo-oh-and-extensions-err-add-ons",
         "9a33cbec5bcb9f3651bc3747117ed1faa9b7c3cf93a86a3ba3bab9d3435898b1", 474),
        ("firefox-vs-internet-explorer_there-s-more-browsers-than-the-ie-firefox-is-an-animal",
         "101719aae383d31cc05195524a8a79efacca767268bf91c1f7ad2be5aca8cacd", 274),
        ("gay-marriage-right-or-wrong_allowing-gay-marriage-is-right",
         "c504170720075bb247bf857b4a74e2a0006e227874d41a365d4cf742143af02c", 404),
        ("gay-marriage-right-or-wrong_allowing-gay-marriage-is-wrong",
         "2759c1ad9c0748a1fa8cbbf6166e104b9a731d46c007eec9221746ec78a27fd2", 447),
        ("human-growth-and-development-should-parents-use-spanking-as-an-option-to-discipline-_no",
         "7a3ac8558be74f3f4f085293d545800f866f66b0b8cfdf8702c1d32b70dfe7a8", 368),
        ("human-growth-and-development-should-parents-use-spanking-as-an-option-to-discipline-_yes",
         "103403421f41b18f102954f9a8968aa18a6edf759379cccec19e2dcd10af8d71", 338),
        ("if-your-spouse-committed-murder-and-he-or-she-confided-in-you-would-you-turn-them-in-_no",
         "924bbb29b79990b196ac2f17c25a8a5ada2c1eb44369052ad006731f272459ea", 341),
        ("if-your-spouse-committed-murder-and-he-or-she-confided-in-you-would-you-turn-them-in-_yes",
         "c8c5ed3510f842aa60d4935f3137293637b2a8c775788ccbe00ac925d625d45d", 346),
        ("india-has-the-potential-to-lead-the-world-_no-against",
         "fc5d6699740e343606133afd9cb8eb5e44accaf9ddca5502c41809d40592d4d5", 375),
        ("india-has-the-potential-to-lead-the-world-_yes-for",
         "5183a1587bb9c688f13da61efe8247e1c0833d459ed59cc79c0e9ceac9bbc4b3", 447),
        ("is-it-better-to-have-a-lousy-father-or-to-be-fatherless-_fatherless",
         "90ea69a4800eebc6aec6935dccc72d592bae2ea3acf0b8a199cb43552be2948d", 287),
        ("is-it-better-to-have-a-lousy-father-or-to-be-fatherless-_lousy-father",
         "129e2e19214db77b98a04feb66a4e85c3d78cc494b0dfb1b3d099c3e37ef0b6a", 329),
        ("is-porn-wrong-_no-is-is-not", "b6b30bede4567c84dbc2ec8db0c6acb74f818d2685534e8d09d35f48c3f230fe", 343),
        ("is-porn-wrong-_yes-porn-is-wrong", "1a827506b88b7f5d7ce1a781cb935d4fe3f019b79b83bd2a778526e10c9ff6f1", 228),
        ("is-the-school-uniform-a-good-or-bad-idea-_bad",
         "7ebb532dcaedd836a7a96a65a7cc45bb10e92d49fd7d94a265795ecf68e1927a", 439),
        ("is-the-school-uniform-a-good-or-bad-idea-_good",
         "db2948b209b9d59e8aa256aa020dcc7bd53581ede762f403e2550d7eb60dad1e", 439),
        ("personal-pursuit-or-advancing-the-common-good-_advancing-the-commond-good",
         "4e0dcc10f2e9c360f0786aeb1545440943794c65c290d4f4d144c7ab22420748", 379),
        ("personal-pursuit-or-advancing-the-common-good-_personal-pursuit",
         "3ddb7f9b04425a02eaff86394b02ef3a516317457283bc4ba84cf38bb6048e0a", 354),
        ("pro-choice-vs-pro-life_pro-choice", "7f98ca0c5eec48782c1ce6d43aefad41428c82cb3bb0ed2b8cda48c7a035352f", 426),
        ("pro-choice-vs-pro-life_pro-life", "648586dff1eb6e4c22d7eb528cca79219daecc9b99906c8bae59f810bf532585", 419),
        ("should-physical-education-be-mandatory-in-schools-_no-",
         "9fa60eee8b161ff400b0b88b01c3e6a1b44bedc4795eea4a75c7089b784e7c16", 212),
        ("should-physical-education-be-mandatory-in-schools-_yes-",
         "133e27fb57352eeb1bc71638051536546cabc84b90bff4f7e6d7313da944176c", 356),
        ("tv-is-better-than-books_books", "2d8b8247570aab28837febfdfdd7324f4e1fac2efe58a77d7fc355c89509642f", 269),
        ("tv-is-better-than-books_tv", "76677ba0814e95380b1f5b9a459670fd3e71ad1f5cb02ecc7ac094e3f5dfb58e", 478),
        ("william-farquhar-ought-to-be-honoured-as-the-rightful-founder-of-singapore_no-it-is-raffles-",
         "112defbb0e49db425a7ed3e28de9a5b133c17f739fa9d0b8d08c9ee00facf785", 447),
        ("william-farquhar-ought-to-be-honoured-as-the-rightful-founder-of-singapore_yes-of-course-",
         "67addb83292e7e2d638edac70d2cc670e0b3d7ec19f57b101c8fd9ff975bab4e", 373))},
}


class RawFileError(ValueError):
  """A raw file that cannot be read (bad encoding, corrupt archive, wrong header): one line naming it."""


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
  """The decoded text of a raw file (``.gz`` decompressed); errors name the file and the line."""
  path = Path(path)
  try:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise RawFileError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
  try:
    return data.decode(encoding)
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise RawFileError(f"{path}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def text_lines(text: str) -> list[str]:
  """Lines as reading the file in text mode gives them (universal newlines, ``\\n`` kept)."""
  return list(io.StringIO(text, newline=None))


def count_rows(path: str | Path) -> int:
  """Rows of a raw file, counted as :data:`PUBLISHED` records them (per file format)."""
  path = Path(path)
  text = read_text(path, "utf-8-sig")
  if path.suffix == ".tsv":
    return sum(1 for _ in csv.DictReader(io.StringIO(text), delimiter="\t"))
  if path.suffix == ".csv":
    rows = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    return max(sum(1 for r in rows if r) - 1, 0)
  if path.suffix == ".txt":
    return len(text.split("\n")) - text.endswith("\n") if text else 0
  return sum(1 for line in text_lines(text) if line.strip())


@dataclasses.dataclass
class Report:
  """What a converter read and what it dropped (reason -> list of row refs)."""
  source: str
  n_read: int = 0
  n_kept: int = 0
  dropped: dict[str, list] = dataclasses.field(default_factory=dict)
  notes: dict = dataclasses.field(default_factory=dict)

  def drop(self, reason: str, ref) -> None:
    self.dropped.setdefault(reason, []).append(ref)

  def to_dict(self) -> dict:
    return {"source": self.source, "n_read": self.n_read, "n_kept": self.n_kept,
            "dropped": {k: {"count": len(v), "items": v} for k, v in self.dropped.items()},
            **({"notes": self.notes} if self.notes else {})}


def _pair(id_: str, prompt: str, chosen: str, rejected: str, **meta) -> dict:
  return {"id": id_, "prompt": prompt, "response_chosen": chosen,
          "response_rejected": rejected, **meta}


# --------------------------------------------------------------------------- HH
def split_dialogue_pair(chosen: str, rejected: str) -> tuple[str, str, str] | str:
  """Splits two HH dialogues into (prompt, chosen_response, rejected_response).

  The prompt is the longest common prefix cut back to its last
  ``\\n\\nAssistant:`` tag (tag included); responses are the stripped rest.
  Returns the drop reason ``"no_assistant_turn"`` when none is shared.
  """
  n = 0
  limit = min(len(chosen), len(rejected))
  while n < limit and chosen[n] == rejected[n]:
    n += 1
  k = chosen.rfind(ASSISTANT_TAG, 0, n)
  if k < 0 or k + len(ASSISTANT_TAG) > n:
    return "no_assistant_turn"
  cut = k + len(ASSISTANT_TAG)
  return chosen[:cut], chosen[cut:].strip(), rejected[cut:].strip()


def _pairs_from_dialogues(dialogues: Iterable[tuple[int, str, str]], prefix: str,
                          report: Report, splitter=split_dialogue_pair) -> list[dict]:
  """Turns (index, chosen, rejected) dialogues into canonical pairs."""
  out = []
  for idx, chosen, rejected in dialogues:
    if chosen == rejected:
      report.drop("chosen_equals_rejected", idx)
      continue
    split = splitter(chosen, rejected)
    if isinstance(split, str):
      report.drop(split, idx)
      continue
    prompt, rc, rr = split
    if not rc or not rr:
      report.drop("empty_response", idx)
      continue
    if rc == rr:
      report.drop("identical_responses", idx)
      continue
    out.append(_pair(f"{prefix}-{idx:05d}", prompt, rc, rr, index=idx, group=str(idx)))
  report.n_kept = len(out)
  return out


def convert_hh(path: str | Path) -> tuple[list[dict], Report]:
  """Anthropic HH-RLHF ``*.jsonl(.gz)`` -> pairs (``id`` = ``hh-<index>``)."""
  path = Path(path)
  report = Report(str(path))
  dialogues = []
  for i, line in enumerate(text_lines(read_text(path))):
    if not line.strip():
      continue
    report.n_read += 1
    try:
      row = json.loads(line)
      dialogues.append((i, row["chosen"], row["rejected"]))
    except (ValueError, KeyError, TypeError):
      report.drop("invalid_row", i)
  return _pairs_from_dialogues(dialogues, "hh", report), report


# ------------------------------------------------------------------ Korean HH
_KO_OPEN = re.compile(r'^\s*\{\s*"chosen"\s*:\s*"')
# `", "<rejected key>": "` ; the key is any short quote-free string.
_KO_SEP = re.compile(r'"\s*,\s*"([^"\\\n]{1,40})"\s*:\s*"')
# Fallback: the key was merged into the text by the translator, only `: "`
# (or `", "`) before the rejected dialogue's opening Human turn survives.
_KO_SEP_LOOSE = re.compile(r'(?:"?\s*[:,]\s*")(?=\s*\\n\\nHuman)')
_KO_DIALOGUE_START = re.compile(r'\s*(?:\\n)+\s*\\?\s*Human')
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "/": "/",
            "'": "'", "b": "", "f": ""}

_AST = (r"(?:Assistant|Anssistant|Answister|A시스턴트|어시스턴트|조수|보조자|보조|"
        r"비서|조교|지원자|도우미|조언자|조력자)")
_HUM = r"(?:Human|인간|사람)"
# A speaker tag: at a line start (after decoding), optionally preceded by the
# transliterated remains of "\n" (n, N, 엔, 앤) or a stray backslash.
_TAG = re.compile(r"(?:^|\n)[ \t\\]*(?:[nN]|엔|앤)?\s*(?:(?P<a>" + _AST + r")|(?P<h>" + _HUM +
                  r"))\s*:")


def _unescape(s: str) -> str:
  """Decodes a JSON string body tolerantly.

  Bare ``"`` are kept; ``\\uXXXX`` and standard escapes are decoded; a
  backslash before any other character is a ``\\n`` whose ``n`` the translator
  ate (``\\n\\어시스턴트:``) and becomes a newline.
  """
  out = []
  i, n = 0, len(s)
  while i < n:
    c = s[i]
    if c != "\\" or i + 1 >= n:
      out.append(c)
      i += 1
      continue
    nxt = s[i + 1]
    if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", s[i + 2:i + 6] or ""):
      out.append(chr(int(s[i + 2:i + 6], 16)))
      i += 6
    elif nxt in _ESCAPES:
      out.append(_ESCAPES[nxt])
      i += 2
    else:
      out.append("\n")
      i += 1
  return "".join(out)


def _strip_close(body: str) -> str:
  """Removes the closing ``"}`` and translator junk after it.

  If what follows the last ``"}`` holds a speaker tag (``"}{어시스턴트: ...``),
  the text continues there: the brace junk is replaced by a turn break.
  """
  body = body.rstrip()
  k = body.rfind('"}')
  if k >= 0:
    tail = body[k + 2:]
    rest = re.sub(r"^[\s{}]+", "", tail)
    if _TAG.search("\n" + _unescape(rest)) or rest.startswith("\\n"):
      return body[:k] + "\\n\\n" + re.sub(r"^(?:\\n)+", "", rest).rstrip(" }")
    if len(tail.strip(" }?\u2003")) <= 25:
      return body[:k]
  if body.endswith("}"):
    return body.rstrip("} ").rstrip('"')
  return body[:-1] if body.endswith('"') else body


def parse_korean_line(line: str) -> tuple[str, str, str] | None:
  """Tolerantly parses one line of the Korean HH file.

  Returns ``(chosen, rejected, method)`` with method ``json`` (valid JSON),
  ``repaired`` (a ``", "<key>": "`` separator found) or ``merged_key`` (the
  key was merged into the text; only ``: "`` before the rejected dialogue is
  left, so a few translated key words may trail the chosen text); None when
  no separator can be found.
  """
  try:
    obj = json.loads(line)
    if isinstance(obj, dict) and len(obj) == 2 and "chosen" in obj:
      (key,) = [k for k in obj if k != "chosen"]
      if isinstance(obj["chosen"], str) and isinstance(obj[key], str):
        return obj["chosen"], obj[key], "json"
  except ValueError:
    pass
  m = _KO_OPEN.match(line)
  if not m:
    return None
  body = _strip_close(line[m.end():])
  seps = [s for s in _KO_SEP.finditer(body) if s.group(1).strip() != "chosen"]
  method = "repaired"
  good = [s for s in seps if _KO_DIALOGUE_START.match(body, s.end())]
  sep = (good or seps or [None])[0]
  if sep is None:
    method = "merged_key"
    sep = next(iter(_KO_SEP_LOOSE.finditer(body, 1)), None)
  if sep is None:
    return None
  chosen, rejected = _unescape(body[:sep.start()]), _unescape(body[sep.end():])
  if not chosen.strip() or not rejected.strip():
    return None
  return chosen, rejected, method


def normalize_dialogue(text: str) -> str:
  """Maps translated/garbled speaker tags to ``\\n\\nHuman:``/``\\n\\nAssistant:``.

  Turns are re-joined in the HH layout; a turn ending in an unbalanced ``"``
  (a stray quote from the broken JSON) loses it.
  """
  turns, last, speaker = [], 0, None
  head = ""
  for m in _TAG.finditer(text):
    chunk = text[last:m.start()]
    if speaker is None:
      head = chunk
    else:
      turns.append((speaker, chunk))
    speaker = "Assistant" if m.group("a") else "Human"
    last = m.end()
  if speaker is None:
    return text
  turns.append((speaker, text[last:]))
  out = head.strip()
  for spk, t in turns:
    t = re.sub(r"\s*\n\s*\n\s*", "\n\n", t.strip())
    if t.endswith('"') and t.count('"') % 2:  # stray quote the translator left
      t = t[:-1].rstrip()
    out += f"\n\n{spk}: " + t
  return out


def split_translated_pair(chosen: str, rejected: str) -> tuple[str, str, str] | str:
  """Per-side split for translations, whose two copies of the prefix differ.

  Both normalised dialogues must end with an Assistant turn and hold the same
  number of Assistant turns (else the translator merged or lost a tag and the
  last turn may not be the response): returns ``"turn_structure_mismatch"``.
  The prompt comes from the chosen dialogue.
  """
  kc, kr = chosen.rfind(ASSISTANT_TAG), rejected.rfind(ASSISTANT_TAG)
  if kc < 0 or kr < 0:
    return "no_assistant_turn"
  if (kc < chosen.rfind(HUMAN_TAG) or kr < rejected.rfind(HUMAN_TAG)
      or chosen.count(ASSISTANT_TAG) != rejected.count(ASSISTANT_TAG)):
    return "turn_structure_mismatch"
  cut = kc + len(ASSISTANT_TAG)
  return chosen[:cut], chosen[cut:].strip(), rejected[kr + len(ASSISTANT_TAG):].strip()


def parse_korean_file(path: str | Path) -> tuple[list[tuple[int, str, str, str]], list[int]]:
  """Parses every line: ``([(index, chosen, rejected, method)], unparsed)``.

  ``index`` is the 0-based line index (= English dialogue index); ``unparsed``
  lists 1-based line numbers of lines no rule could parse.
  """
  text = read_text(path)
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  parsed, unparsed = [], []
  for i, line in enumerate(lines):
    res = parse_korean_line(line) if line.strip() else None
    if res is None:
      unparsed.append(i + 1)
    else:
      parsed.append((i, *res))
  return parsed, unparsed


def convert_korean_hh(path: str | Path) -> tuple[list[dict], Report]:
  """Dirty Korean HH translation -> pairs (``id`` = ``ko-<index>``).

  Speaker tags are normalised with :func:`normalize_dialogue`; since the two
  translations of the shared prefix differ, the prompt is taken from the chosen
  dialogue up to its last Assistant tag and each response is the text after
  its own dialogue's last Assistant tag.  Lines are reported as
  ``unparsed_line`` (1-based numbers) when no separator is found, and pairs
  are dropped as ``turn_structure_mismatch`` / ``no_assistant_turn`` when the
  translation lost or merged speaker tags (see :func:`split_translated_pair`).
  ``report.notes["recovered_lines"]`` counts lines parsed into two texts.
  """
  parsed, unparsed = parse_korean_file(path)
  report = Report(str(path), n_read=len(parsed) + len(unparsed))
  for ln in unparsed:
    report.drop("unparsed_line", ln)
  methods = collections.Counter(p[3] for p in parsed)
  report.notes = {"recovered_lines": len(parsed), "unparsed_lines": len(unparsed),
                  "parse_method_counts": dict(methods),
                  "merged_key_lines": [p[0] + 1 for p in parsed if p[3] == "merged_key"],
                  "line_numbers": "1-based; record index = line number - 1"}
  dialogues = [(i, normalize_dialogue(c), normalize_dialogue(r)) for i, c, r, _ in parsed]
  return _pairs_from_dialogues(dialogues, "ko", report, split_translated_pair), report


# ------------------------------------------------------ summarize-from-feedback
def tldr_prompt(info: dict) -> str:
  return (f"SUBREDDIT: r/{info['subreddit'].strip()}\nTITLE: {info['title'].strip()}\n"
          f"POST: {info['post'].strip()}\nTL;DR:")


def cnndm_prompt(info: dict) -> str:
  return f"ARTICLE: {info['article'].strip()}\nTL;DR:"


def convert_comparisons(paths: Sequence[str | Path], prefix: str = "tldr") -> tuple[list[dict], Report]:
  """summarize-from-feedback comparison files -> majority-vote pairs.

  ``prefix`` is ``tldr`` (Reddit: ``info.post``) or ``cnndm`` (``info.article``).
  ``group`` is the post/article id (split unit); ``n_votes``/``n_agree`` record
  the vote.  Rows with empty texts or identical summaries are dropped.
  """
  fmt = {"tldr": tldr_prompt, "cnndm": cnndm_prompt}[prefix]
  report = Report(",".join(str(p) for p in paths))
  votes: dict[tuple, collections.Counter] = {}
  prompts: dict[str, str] = {}
  for path in paths:
    for ln, line in enumerate(text_lines(read_text(path)), 1):
      if not line.strip():
        continue
      report.n_read += 1
      ref = f"{Path(path).name}:{ln}"
      try:
        row = json.loads(line)
        texts = [s["text"].strip() for s in row["summaries"]]
        info, choice = row["info"], int(row["choice"])
        doc = (info.get("post") or info.get("article") or "").strip()
        prompt, pid = fmt(info), str(info["id"])
        if len(texts) != 2 or choice not in (0, 1):
          raise ValueError("need 2 summaries and choice 0/1")
      except (ValueError, KeyError, TypeError, AttributeError):
        report.drop("invalid_row", ref)
        continue
      if not all(texts) or not doc:
        report.drop("empty_text", ref)
        continue
      if texts[0] == texts[1]:
        report.drop("identical_summaries", ref)
        continue
      votes.setdefault((pid, tuple(sorted(texts))), collections.Counter())[texts[choice]] += 1
      prompts.setdefault(pid, prompt)
  out = []
  for (post_id, (a, b)), c in votes.items():
    n = c[a] + c[b]
    digest = hashlib.sha1(f"{post_id}\0{a}\0{b}".encode()).hexdigest()[:12]
    if c[a] == c[b]:
      report.drop("tie", f"{prefix}-{digest}")
      continue
    win, lose = (a, b) if c[a] > c[b] else (b, a)
    out.append(_pair(f"{prefix}-{digest}", prompts[post_id], win, lose, group=post_id,
                     n_votes=n, n_agree=c[win]))
  out.sort(key=lambda r: r["id"])
  report.n_kept = len(out)
  report.notes = {"aggregation": "strict majority over all judgements of the same "
                                 "(post id, unordered summary pair); ties dropped",
                  "unique_pairs": len(votes),
                  "multi_judged_pairs": sum(sum(c.values()) > 1 for c in votes.values())}
  return out, report


# ------------------------------------------------------------------ UKPConvArg
def _clean_argument(text: str) -> str:
  text = re.sub(r"\s*<br\s*/?>\s*", "\n", text, flags=re.I)
  return re.sub(r"[ \t]+", " ", text).strip()


def ukp_topic_stance(filename: str) -> tuple[str, str]:
  """``tv-is-better-than-books_tv.csv`` -> ("tv is better than books", "tv")."""
  stem = Path(filename).name.removesuffix(".csv")
  topic, _, stance = stem.partition("_")
  tidy = lambda s: re.sub(r"\s+", " ", s.replace("-", " ")).strip()
  return tidy(topic), tidy(stance)


def argument_prompt(topic: str, stance: str) -> str:
  return f"TOPIC: {topic}\nSTANCE: {stance}\nARGUMENT:"


def convert_ukp(paths: Sequence[str | Path]) -> tuple[list[dict], Report]:
  """UKPConvArg1-Strict tab-separated files -> pairs (``label`` a1/a2 = chosen).

  ``<br/>`` becomes a newline; the prompt is the file's topic and stance;
  ``group`` is the file stem (topic/stance).
  """
  report = Report(f"{len(paths)} UKPConvArg1-Strict files")
  out = []
  for path in sorted(paths, key=lambda p: Path(p).name):
    path = Path(path)
    prompt = argument_prompt(*ukp_topic_stance(path.name))
    rows = csv.reader(io.StringIO(read_text(path)), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(rows, [])
    if header[:4] != ["#id", "label", "a1", "a2"]:
      raise RawFileError(f"{path}:1: unexpected header {header[:4]!r}, expected ['#id', 'label', 'a1', 'a2']")
    for ln, row in enumerate(rows, 2):
      if not row:
        continue
      report.n_read += 1
      ref = f"{path.name}:{ln}"
      if len(row) != 4 or row[1] not in ("a1", "a2"):
        report.drop("malformed_row", ref)
        continue
      a1, a2 = _clean_argument(row[2]), _clean_argument(row[3])
      if not a1 or not a2:
        report.drop("empty_text", ref)
        continue
      if a1 == a2:
        report.drop("identical_arguments", ref)
        continue
      chosen, rejected = (a1, a2) if row[1] == "a1" else (a2, a1)
      out.append(_pair(f"ukp-{path.stem}-{row[0]}", prompt, chosen, rejected, group=path.stem))
  report.n_kept = len(out)
  return out, report


# ------------------------------------------------------------------------ ASAP
ASAP1_TOPIC = "the effects computers have on people"
ASAP1_STANCE = "the writer's opinion, in a letter to the local newspaper"


def convert_asap(path: str | Path) -> tuple[list[dict], Report]:
  """ASAP AES set-1 TSV (UTF-8 BOM, quoted essays) -> scored texts.

  ``score`` = ``domain1_score``; ``prompt`` describes the set-1 task in the
  same TOPIC/STANCE/ARGUMENT format as UKPConvArg.
  """
  path = Path(path)
  report = Report(str(path))
  text = read_text(path, "utf-8-sig")
  reader = csv.DictReader(io.StringIO(text), delimiter="\t")
  prompt = argument_prompt(ASAP1_TOPIC, ASAP1_STANCE)
  out = []
  for ln, row in enumerate(reader, 2):
    report.n_read += 1
    essay = re.sub(r"[ \t]+", " ", (row.get("essay") or "")).strip()
    score = (row.get("domain1_score") or "").strip()
    if not essay:
      report.drop("empty_text", ln)
      continue
    try:
      value = float(score)
    except ValueError:
      report.drop("missing_score", ln)
      continue
    out.append({"id": f"asap-{row['essay_id'].strip()}", "text": essay, "score": value,
                "prompt": prompt})
  report.n_kept = len(out)
  report.notes = {"fieldnames": reader.fieldnames}
  return out, report
