"""count_records: the converter's summary when it describes the files, else a header walk."""

import json

import numpy as np
import tensorflow as tf

from deeplab_panoptic.data import record_count


def _write(path, sizes):
  rng = np.random.default_rng(len(sizes))
  with tf.io.TFRecordWriter(str(path)) as writer:
    for size in sizes:
      writer.write(rng.integers(0, 256, size, dtype=np.uint8).tobytes())


def test_header_walk_counts_every_record(tmp_path):
  _write(tmp_path / "val-00000-of-00002.tfrecord", [0, 1, 70000, 5])
  _write(tmp_path / "val-00001-of-00002.tfrecord", [300] * 7)
  _write(tmp_path / "other.tfrecord", [])
  pattern = str(tmp_path / "val-*")
  expected = sum(1 for _ in tf.data.TFRecordDataset(tf.io.gfile.glob(pattern)))
  assert record_count.count_records(pattern) == expected == 11
  assert record_count.count_records(str(tmp_path / "other.tfrecord")) == 0
  assert record_count.count_records(str(tmp_path / "missing-*")) is None
  assert record_count.count_records(None) is None


def test_summary_of_the_converter_is_used_when_it_names_these_shards(tmp_path):
  _write(tmp_path / "val-00000-of-00002.tfrecord", [4] * 3)
  _write(tmp_path / "val-00001-of-00002.tfrecord", [4] * 2)
  # A summary that disagrees with the files shows which source was read.
  (tmp_path / "summary.json").write_text(json.dumps(
      {"splits": {"val": {"images": 1234, "shards": 2}, "train": {"images": 9, "shards": 1}}}))
  assert record_count.count_records(str(tmp_path / "val-*")) == 1234
  # One shard of two is not the whole split: walked.
  assert record_count.count_records(str(tmp_path / "val-00000-of-00002.tfrecord")) == 3
