"""Shared test settings: a session-wide XLA compilation cache, float32 matmuls everywhere, the real data folder,
slow-test marker.

Multi-device tests run in subprocesses with 8 fake CPU devices (tests/test_parallel.py), so the rest of the
suite sees one device."""
import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# One XLA compilation cache for the session and every subprocess it starts (they inherit os.environ): the suite
# compiles the same small steps again and again (resume after a kill, meshes, CLIs). A fresh folder per session, so
# no test reads a compile made by other code; a cache the user set is kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _XLA_CACHE = tempfile.mkdtemp(prefix="dial_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_XLA_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RAW_DATA = SHARED_DATA / "raw"


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: long checks, and further variants of checks that CI runs; CI deselects "
                                     "them (-m 'not slow').")


@pytest.fixture(scope="session")
def raw_data_dir():
  if not RAW_DATA.is_dir():
    pytest.fail(f"real data folder {RAW_DATA} is missing: tests read ../shared/data/raw beside the checkout")
  return RAW_DATA


GCS_BUCKET = "bucket"
# gcp-storage-emulator, plus what tensorstore (orbax's OCDBT manifest updates) and the workdir lock rely on and the
# emulator lacks: an object's generation in download headers, and the generation preconditions (ifGenerationMatch
# on uploads and downloads -> 412, ifGenerationNotMatch on downloads -> 304) that Cloud Storage enforces.
_EMULATOR = """
import sys
from http import HTTPStatus
from gcp_storage_emulator import __main__ as cli, server, storage as storage_lib
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

class PreconditionFailed(Exception):
  pass

def generation(storage, bucket, name):
  try:
    return int(storage.get_file_obj(bucket, name)["generation"])
  except NotFound:
    return 0

def condition(query, key):
  return int(query[key][0]) if key in query else None

plain_download = objects.download
def download(request, response, storage, *args, **kwargs):
  gen = generation(storage, request.params["bucket_name"], request.params["object_id"])
  match, not_match = condition(request.query, "ifGenerationMatch"), condition(request.query, "ifGenerationNotMatch")
  if match is not None and match != gen:
    response.status = HTTPStatus.PRECONDITION_FAILED
  elif gen and not_match == gen:
    response.status = HTTPStatus.NOT_MODIFIED
  else:
    plain_download(request, response, storage, *args, **kwargs)
  if gen:
    response["x-goog-generation"], response["x-goog-metageneration"] = str(gen), "1"
objects.download = download

query = {}
plain_init = server.Request.__init__
def request_init(self, *args, **kwargs):
  plain_init(self, *args, **kwargs)
  query.clear()
  query.update(self.query)
server.Request.__init__ = request_init

plain_create = storage_lib.Storage.create_file
def create_file(self, bucket_name, file_name, *args, **kwargs):
  match = condition(query, "ifGenerationMatch")
  if match is not None and match != generation(self, bucket_name, file_name):
    raise PreconditionFailed(file_name)
  return plain_create(self, bucket_name, file_name, *args, **kwargs)
storage_lib.Storage.create_file = create_file

plain_handle = server.Router.handle
def handle(self, method):
  try:
    plain_handle(self, method)
  except PreconditionFailed:
    self._request_handler.send_response(412)
    self._request_handler.send_header("Content-Length", "0")
    self._request_handler.end_headers()
server.Router.handle = handle

cli.main(sys.argv[1:])
"""


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
  """A Cloud Storage emulator (gcp-storage-emulator, in memory) on a free 127.0.0.1 port with bucket ``bucket``,
  for the test session. Sets (and afterwards restores) the variables that point gcsfs, tensorstore and
  google-cloud-storage at it in ``os.environ``, so subprocesses inherit them; yields them."""
  import importlib.util
  if "gcsfs" in sys.modules:  # gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT when imported
    pytest.fail("gcsfs was imported before the gcs_emulator fixture set its environment")
  for name in ("gcsfs", "gcp_storage_emulator"):
    if importlib.util.find_spec(name) is None:
      pytest.skip(f"{name} is not installed (pip install -e '.[gcs,test]')")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  root = tmp_path_factory.mktemp("gcs")
  log = open(root / "emulator.log", "wb")  # a file, not a pipe: a full pipe would block the server
  proc = subprocess.Popen([sys.executable, "-c", _EMULATOR, "start", "--host=127.0.0.1", f"--port={port}",
                           f"--default-bucket={GCS_BUCKET}", "--in-memory", "--quiet"],
                          cwd=root, stdout=log, stderr=subprocess.STDOUT)
  deadline = time.time() + 60
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      if proc.poll() is not None or time.time() > deadline:
        proc.kill()
        pytest.fail(f"the GCS emulator did not start: {(root / 'emulator.log').read_text()[-2000:]}")
      time.sleep(0.2)
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         # no credential or bucket-layout lookups (each would wait for a metadata server that is not there)
         "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "NO_GCE_CHECK": "true", "GOOGLE_CLOUD_PROJECT": "test"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    yield env
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
    log.close()
