"""Paths that are local or in a bucket (``gs://bucket/run``), all as :class:`etils.epath.Path` (orbax's path type).

Local paths behave as with :mod:`pathlib`. A bucket path goes through fsspec (gcsfs for ``gs://``: ``pip install -e
'.[gcs]'``); what Cloud Storage guarantees, and so what the writers here rely on:

* an object upload is atomic: the object (a new generation of it) appears only once its upload is complete, and a
  reader sees the whole old or the whole new object, never a part; reads and listings are strongly consistent
  after a write (read-after-write, list-after-write);
* an upload can be made conditional on the object not existing yet (``ifGenerationMatch=0``): create-if-absent;
* there is no append, and no atomic rename of a "directory" or of several objects at once (orbax therefore marks a
  finished checkpoint on a bucket with a ``commit_success.txt`` object instead of renaming a temporary directory).
"""
from __future__ import annotations

import json
import os
import posixpath
import re

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


def finished_steps(checkpoints_dir) -> list[int]:
  """Steps of the finished orbax checkpoints in ``checkpoints_dir``: integer-named directories (locally orbax
  renames a finished checkpoint into place; on a bucket it writes ``commit_success.txt`` into it last)."""
  root = epath.Path(checkpoints_dir)
  if not root.is_dir():
    return []
  remote = is_uri(root)
  return sorted(int(p.name) for p in root.iterdir()
                if p.name.isdigit() and p.is_dir() and (not remote or (p / COMMIT_FILE).exists()))
