"""Atomic file writes: an interrupted run leaves the old file or the new one, never half.

Every writer of the library (results JSON, operative config, COCO panoptic PNGs
and JSON, converter shards and summaries, overlays, TFLite files) goes through
:func:`atomic_output`: the data goes to a temporary file beside the target (same
folder, so the final rename is atomic on a local file system) and is renamed
over the target only when it is complete; on any error the temporary file is
removed and the target is left as it was.

Paths with a scheme (``gs://...``) go through ``tf.io.gfile``, whose rename is
the atomic step on cloud storage; TensorFlow is imported only for them, so
tools that write local files (``coco_pq``) start without it.
"""

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator, Optional

# Temporary files are ``.<target name>.tmp-<random>`` in the target's folder:
# hidden, and recognisable by a cleaner that knows the target's name.
TMP_INFIX = ".tmp-"


def _is_remote(path: str) -> bool:
  return "://" in path


def temporary_prefix(path: str) -> str:
  """The name prefix of the temporary files :func:`atomic_output` makes for ``path``."""
  return f".{os.path.basename(path)}{TMP_INFIX}"


def _file_mode() -> int:
  """The permissions of an ordinary new file (``mkstemp`` itself creates 0600)."""
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
  """A temporary path to write ``path`` through; renamed over ``path`` on success.

  Example::

      with atomic_output("out/shard.tfrecord") as tmp:
        with tf.io.TFRecordWriter(tmp) as writer:
          ...

  Args:
    path: the file to write; its folder is created when missing.

  Yields:
    The temporary path (in the same folder) to write to.
  """
  directory = os.path.dirname(path) or "."
  if _is_remote(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.io.gfile.makedirs(directory)
    tmp = os.path.join(directory, f"{temporary_prefix(path)}{os.getpid()}")
    try:
      yield tmp
      tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
      if tf.io.gfile.exists(tmp):
        tf.io.gfile.remove(tmp)
      raise
    return
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=temporary_prefix(path))
  os.close(fd)
  try:
    yield tmp
    os.chmod(tmp, _file_mode())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_bytes_atomic(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically (see :func:`atomic_output`)."""
  with atomic_output(path) as tmp:
    if _is_remote(path):
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      with tf.io.gfile.GFile(tmp, "wb") as f:
        f.write(data)
    else:
      with open(tmp, "wb") as f:
        f.write(data)


def write_text_atomic(path: str, text: str) -> None:
  """Writes ``text`` (UTF-8) to ``path`` atomically."""
  write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str, data: Any, indent: Optional[int] = 2) -> None:
  """Writes ``data`` as JSON (``indent`` spaces, None: one line) and a newline, atomically."""
  write_text_atomic(path, json.dumps(data, indent=indent) + "\n")
