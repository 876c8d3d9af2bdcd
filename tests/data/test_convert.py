"""Tests of the conversion tool (convert.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from deeplab_panoptic.data import convert
from deeplab_panoptic.data import dataset_info
from deeplab_panoptic.data import shapes

INFO = dataset_info.SHAPES
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_cli(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run(
      [sys.executable, "-m", "deeplab_panoptic.data.convert", "--dataset=shapes", *args],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def _expected_segments(seed, indices):
  """Segments per class of the given images, counted with numpy."""
  counts = np.zeros(INFO.num_classes, int)
  for index in indices:
    _, panoptic = shapes.generate_example(seed, index)
    for pan_id in np.unique(panoptic):
      counts[pan_id // INFO.label_divisor] += 1
  return counts.tolist()


def test_cli_writes_shards_and_summary_and_rerun_skips(tmp_path):
  out = str(tmp_path / "shapes")
  args = [f"--output_dir={out}", "--num_train=5", "--num_val=3", "--seed=4",
          "--num_shards=2", "--num_workers=2"]
  result = _run_cli(*args)
  assert result.returncode == 0, result.stderr
  shards = sorted(f for f in os.listdir(out) if f.endswith(".tfrecord"))
  assert shards == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
                    "val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]
  assert not [f for f in os.listdir(out) if "tmp" in f]
  with open(os.path.join(out, convert.SUMMARY_FILE), encoding="utf-8") as f:
    summary = json.load(f)
  assert summary["splits"]["train"]["images"] == 5
  assert summary["splits"]["val"]["images"] == 3
  assert summary["splits"]["train"]["segments"] == _expected_segments(4, range(5))
  assert summary["splits"]["val"]["segments"] == _expected_segments(
      4, range(convert.SHAPES_VAL_INDEX_OFFSET, convert.SHAPES_VAL_INDEX_OFFSET + 3))
  assert "circle" in result.stdout and "segments" in result.stdout

  # The rerun (in-process: the same code path, without another interpreter).
  mtimes = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in shards}
  rerun_summary = convert.convert(
      convert.ShapesConverter(num_train=5, num_val=3, seed=4), out, num_shards=2,
      num_workers=1, verbose=False)
  assert rerun_summary["skipped_shards"] == 4
  assert mtimes == {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in shards}
  assert rerun_summary["splits"] == summary["splits"]

  # Other settings into the same folder: a clear error, nothing overwritten.
  result = _run_cli(f"--output_dir={out}", "--num_train=5", "--num_val=3", "--seed=5",
                    "--num_shards=2", "--num_workers=1")
  assert result.returncode != 0
  assert "holds a conversion made with" in result.stderr


def test_missing_shard_is_rewritten_and_ensure_skips(tmp_path):
  out = str(tmp_path / "shapes")
  patterns = convert.ensure_shapes_dataset(out, num_train=4, num_val=2, seed=1,
                                           num_shards=2, num_workers=1)
  assert patterns["train"] == convert.file_pattern(out, "train")
  first = os.path.join(out, "train-00000-of-00002.tfrecord")
  second = os.path.join(out, "train-00001-of-00002.tfrecord")
  content = open(first, "rb").read()
  mtime = os.stat(second).st_mtime_ns
  # Complete: nothing is touched.
  convert.ensure_shapes_dataset(out, num_train=4, num_val=2, seed=1, num_shards=2,
                                num_workers=1)
  assert os.stat(second).st_mtime_ns == mtime
  # A missing shard (interrupted run) is written again, identical; others kept.
  os.remove(first)
  convert.ensure_shapes_dataset(out, num_train=4, num_val=2, seed=1, num_shards=2,
                                num_workers=1)
  assert open(first, "rb").read() == content
  assert os.stat(second).st_mtime_ns == mtime
  with pytest.raises(ValueError, match="holds a conversion made with"):
    convert.ensure_shapes_dataset(out, num_train=8, num_val=2, seed=1, num_shards=2,
                                  num_workers=1)


def test_parallel_workers_write_the_same_shards(tmp_path):
  converter = convert.ShapesConverter(num_train=4, num_val=2, seed=3)
  serial = convert.convert(converter, str(tmp_path / "serial"), num_shards=2,
                           num_workers=1, verbose=False)
  parallel = convert.convert(converter, str(tmp_path / "parallel"), num_shards=2,
                             num_workers=2, verbose=False, min_images_per_worker=1)
  assert serial["splits"] == parallel["splits"]
  for name in sorted(os.listdir(tmp_path / "serial")):
    if name.endswith(".tfrecord"):
      assert (open(tmp_path / "serial" / name, "rb").read()
              == open(tmp_path / "parallel" / name, "rb").read()), name
