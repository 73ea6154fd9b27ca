"""Paths that are local or in a bucket (``gs://bucket/run``), all as :class:`etils.epath.Path` (orbax's path type).

Local paths behave as with :mod:`pathlib`. A bucket path goes through fsspec (gcsfs for ``gs://``: ``pip install -e
'.[gcs]'``); what Cloud Storage guarantees, and so what the writers here rely on:

* an object upload is atomic: the object (a new generation of it) appears only once its upload is complete, and a
  reader sees the whole old or the whole new object, never a part; reads and listings are strongly consistent
  after a write (read-after-write, list-after-write);
* an upload can be made conditional on the object not existing yet (``ifGenerationMatch=0``): create-if-absent;
* there is no append, and no atomic rename of a "directory" or of several objects at once (orbax therefore marks a
  finished checkpoint on a bucket with a ``commit_success.txt`` object instead of renaming a temporary directory).

:func:`new_sibling_dir` and :func:`replace_dir` put a finished local directory in place in one step (prepared data,
exported models).
"""
from __future__ import annotations

import ctypes
import json
import os
import posixpath
import re
import shutil
import uuid
from pathlib import Path

import fsspec
from etils import epath

# A workdir in a bucket is written by several processes and by tensorstore (orbax's arrays), outside this process's
# gcsfs client: its cached listings would go stale, so list afresh every time.
for _protocol in ("gs", "gcs"):
  fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)

COMMIT_FILE = "commit_success.txt"  # orbax's marker of a finished checkpoint on a bucket
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(path) -> bool:
  """True for ``gs://...`` (any ``scheme://``), False for a local path."""
  return bool(_URI.match(os.fspath(path)))


def path(p) -> epath.Path:
  return epath.Path(p)


def absolute(p) -> epath.Path:
  """A local path made absolute (not resolved, as ``pathlib.Path.absolute``); a bucket path as it is (``epath``'s
  ``absolute()`` would turn ``gs://b/run`` into ``$PWD/gs:/b/run``)."""
  return epath.Path(p) if is_uri(p) else epath.Path(p).absolute()


def write_text_atomic(p, text: str) -> None:
  """Readers see the old or the new content, never a part. Locally: a temporary file ``<p>.tmp`` (UTF-8) renamed
  over ``p``. On a bucket: a temporary object ``<p>.tmp``, copied over ``p`` server-side (one atomic replacement of
  the object), then deleted. A direct upload would be atomic too; the temporary object keeps one pattern for both,
  and a write that fails half-way can only leave a partial ``<p>.tmp`` (gcsfs completes an upload when its file is
  closed, even by an exception), never a partial ``p``."""
  p = epath.Path(p)
  tmp = p.parent / (p.name + ".tmp")
  tmp.write_text(text)
  if is_uri(p):
    tmp.copy(p, overwrite=True)
    tmp.unlink(missing_ok=True)
  else:
    os.replace(tmp, p)


def create_exclusive(p, text: str) -> None:
  """Write ``p`` only if it does not exist (FileExistsError otherwise), atomically: locally ``O_CREAT | O_EXCL``, on
  a bucket a create-if-absent upload (``ifGenerationMatch=0``; the server answers 412 if the object exists)."""
  p = epath.Path(p)
  if not is_uri(p):
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    with os.fdopen(fd, "w") as f:
      f.write(text)
    return
  fs, key = fsspec.core.url_to_fs(os.fspath(p))
  fs.pipe_file(key, text.encode(), mode="create")


def fs_and_key(p):
  """(fsspec filesystem, object key ``bucket/name`` without a trailing slash) of a bucket path."""
  fs, key = fsspec.core.url_to_fs(os.fspath(p))
  return fs, key.rstrip("/")


def bucket_key(p) -> str:
  """A bucket path as ``scheme://bucket/name``, normalized (``.``, ``..``, repeated and trailing slashes removed) to
  compare two bucket paths. Cloud Storage takes object names literally, so two paths equal here may name different
  objects (``a/../b`` and ``b``), never the other way round: a check that refuses equal paths errs on the safe
  side."""
  scheme, rest = os.fspath(p).split("://", 1)
  return f"{scheme}://{posixpath.normpath('/' + rest).lstrip('/')}"


def bucket_exists(p) -> bool:
  """Whether the bucket of ``p`` (``gs://bucket/...``) exists and can be read."""
  fs, key = fsspec.core.url_to_fs(os.fspath(p))
  return fs.exists(key.split("/")[0])


def read_json(p, default=None):
  """The JSON in ``p``, or ``default`` when it is missing or unreadable."""
  try:
    return json.loads(epath.Path(p).read_text())
  except (OSError, ValueError):
    return default


BEST_CHECKPOINTS = "checkpoints_best"  # train.keep_best's state, beside a workdir's checkpoints/


def finished_steps(checkpoints_dir) -> list[int]:
  """Steps of the finished orbax checkpoints in ``checkpoints_dir``: integer-named directories (locally orbax
  renames a finished checkpoint into place; on a bucket it writes ``commit_success.txt`` into it last)."""
  root = epath.Path(checkpoints_dir)
  if not root.is_dir():
    return []
  remote = is_uri(root)
  return sorted(int(p.name) for p in root.iterdir()
                if p.name.isdigit() and p.is_dir() and (not remote or (p / COMMIT_FILE).exists()))


def new_sibling_dir(path: Path, what: str) -> Path:
  """A new hidden directory beside local ``path`` (same filesystem, so the final rename is atomic; default mode)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  for _ in range(100):
    sib = path.parent / f".{path.name}.{what}-{uuid.uuid4().hex[:8]}"
    try:
      sib.mkdir()
      return sib
    except FileExistsError:
      continue
  raise FileExistsError(f"could not create a temporary directory beside {path}")


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
  """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.renameat2
  except (OSError, AttributeError, TypeError):
    return False
  fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
  at_fdcwd = -100
  return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def replace_dir(new: Path, dest: Path) -> None:
  """Puts local directory ``new`` (made with :func:`new_sibling_dir`) at ``dest``; an existing ``dest`` is replaced
  in one step and then deleted. Where the exchange is unsupported, ``dest`` is moved aside first and put back if
  ``new`` cannot take its place."""
  if not dest.exists():
    os.rename(new, dest)
    return
  if _exchange(new, dest):
    shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old directory
    return
  old = new_sibling_dir(dest, "old")
  try:
    os.rename(dest, old / "dir")
    try:
      os.rename(new, dest)
    except BaseException:
      os.rename(old / "dir", dest)
      raise
  finally:
    if dest.exists():  # else the previous directory is still in ``old``: never delete it
      shutil.rmtree(old, ignore_errors=True)
