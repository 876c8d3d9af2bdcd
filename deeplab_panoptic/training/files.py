"""File helpers: atomic writes so an interrupted run leaves no half-written file."""

import json
import os
import tempfile
from typing import Any

import tensorflow as tf


def write_text_atomic(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` through a temporary file and a rename."""
  directory = os.path.dirname(path) or "."
  tf.io.gfile.makedirs(directory)
  if "://" in path:  # Cloud storage: gfile's rename is the atomic step there.
    tmp = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(tmp, "w") as f:
      f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json_atomic(path: str, data: Any) -> None:
  """Writes ``data`` as indented JSON, atomically."""
  write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
