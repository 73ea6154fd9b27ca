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
  opener = gzip.open if path.suffix == ".gz" else open
  report = Report(str(path))
  dialogues = []
  with opener(path, "rt", encoding="utf-8") as f:
    for i, line in enumerate(f):
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
  text = Path(path).read_bytes().decode("utf-8")
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
    with open(path, encoding="utf-8") as f:
      for ln, line in enumerate(f, 1):
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
    rows = csv.reader(io.StringIO(path.read_text(encoding="utf-8")), delimiter="\t",
                      quoting=csv.QUOTE_NONE)
    header = next(rows)
    if header[:4] != ["#id", "label", "a1", "a2"]:
      raise ValueError(f"{path}: unexpected header {header!r}")
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
  text = path.read_bytes().decode("utf-8-sig")
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
