"""How many records a TFRecord file pattern holds, without decoding them.

For the evaluation progress bar's total (and so its ETA). Two cheap sources:

1. the converter's ``summary.json`` beside the shards (``convert.py``): when the
   pattern matches exactly the shards of one split it lists, its image count;
2. local files: a walk over the record headers. A TFRecord is a sequence of
   ``uint64 length | uint32 crc | data[length] | uint32 crc``, so each record
   costs one 8-byte read and a seek.

Remote files without a summary give None (a walk would be one request per record).
"""

import json
import os
import re
import struct
from typing import Optional, Sequence

import tensorflow as tf

SUMMARY_FILE = "summary.json"   # written by data/convert.py
_SHARD = re.compile(r"^(?P<split>.+)-(?P<shard>\d{5})-of-(?P<shards>\d{5})\.tfrecord$")
_LENGTH = struct.Struct("<Q")
_CRC_BYTES = 4


def count_records(pattern: Optional[str]) -> Optional[int]:
  """The number of records in the files matching ``pattern``, or None when unknown."""
  if not pattern:
    return None
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    return None
  from_summary = _count_from_summary(files)
  if from_summary is not None:
    return from_summary
  if any("://" in f for f in files):
    return None
  return sum(_count_local(f) for f in files)


def _count_from_summary(files: Sequence[str]) -> Optional[int]:
  """The converter's image count of the one split whose every shard is in ``files``."""
  folders = {os.path.dirname(f) for f in files}
  matches = [_SHARD.match(os.path.basename(f)) for f in files]
  if len(folders) != 1 or not all(matches):
    return None
  splits = {(m.group("split"), int(m.group("shards"))) for m in matches}
  if len(splits) != 1:
    return None
  (split, shards), = splits
  path = os.path.join(folders.pop(), SUMMARY_FILE)
  if len(files) != shards or not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path) as f:
      stats = json.load(f).get("splits", {}).get(split, {})
  except (ValueError, tf.errors.OpError):
    return None
  images = stats.get("images")
  return int(images) if isinstance(images, int) and stats.get("shards") == shards else None


def _count_local(path: str) -> int:
  """Walks one local TFRecord file's headers."""
  count = 0
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    while f.tell() < size:
      header = f.read(_LENGTH.size)
      if len(header) < _LENGTH.size:
        break
      (length,) = _LENGTH.unpack(header)
      f.seek(_CRC_BYTES + length + _CRC_BYTES, os.SEEK_CUR)
      count += 1
  return count
