r"""Converts a panoptic dataset to sharded TFRecords (schema: tfrecord.py).

One tool for every dataset: ``--dataset`` picks a converter from a registry, and
each converter reads its own flags. Today: ``shapes`` (the synthetic dataset).

  python -m deeplab_panoptic.data.convert --dataset=shapes --output_dir=/tmp/shapes \
      --num_train=1000 --num_val=100 --seed=0 --num_shards=4

Output, in ``--output_dir``:

* ``<split>-<shard:05d>-of-<num_shards:05d>.tfrecord`` per split;
* ``summary.json``: the conversion settings, and per split the number of images
  and the segments and pixels of each class (also printed);
* ``conversion_config.json``: the settings, written first, so that a rerun into
  the same folder with other settings stops instead of mixing two datasets.

Every shard is written to a hidden temporary name and renamed when complete, so
an existing shard name is always a whole shard: a rerun skips it (reading it
back only to count its segments for the summary). Shards are written in
parallel by a small ``spawn`` process pool (TensorFlow is not fork-safe); each
worker imports TensorFlow first, so small conversions use fewer workers (at
least ``MIN_IMAGES_PER_WORKER`` images each).

Adding a dataset: subclass :class:`Converter` (its splits, its number of images
per split, and record ``i`` of a split), write a function that builds it from
flags, and :func:`register_converter` it under the dataset's name.
"""

import abc
import dataclasses
import json
import multiprocessing
import os
import sys
from typing import Callable, Dict, List, Optional, Tuple

from absl import app
from absl import flags
import gin
import numpy as np
import tensorflow as tf

from deeplab_panoptic.data import dataset_info as dataset_info_lib
from deeplab_panoptic.data import shapes
from deeplab_panoptic.data import tfrecord

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "conversion_config.json"
# Validation images of the shapes dataset are generate_example(seed, offset + i),
# so they never repeat a training image (train uses indices 0..num_train-1).
SHAPES_VAL_INDEX_OFFSET = 2 ** 31
# A worker process imports TensorFlow (seconds) before writing anything, and a
# shapes image takes ~10 ms: below this many images per worker, fewer workers
# finish sooner.
MIN_IMAGES_PER_WORKER = 200


class Converter(abc.ABC):
  """One dataset: its splits and how to build record ``index`` of a split.

  Instances are pickled to the worker processes, so keep them small (paths and
  numbers, not loaded data).
  """

  @property
  @abc.abstractmethod
  def info(self) -> dataset_info_lib.DatasetInfo:
    """The dataset description (label divisor, ignore label, classes)."""

  @abc.abstractmethod
  def num_examples(self) -> Dict[str, int]:
    """Number of images per split, e.g. ``{"train": 1000, "val": 100}``."""

  @abc.abstractmethod
  def make_record(self, split: str, index: int) -> Tuple[tf.train.Example, np.ndarray]:
    """Returns record ``index`` of ``split`` and its int32 [H, W] panoptic label."""

  @abc.abstractmethod
  def config(self) -> dict:
    """JSON-able settings that determine the records (compared on reruns)."""


@dataclasses.dataclass
class ShapesConverter(Converter):
  """The synthetic shapes dataset (see shapes.py); images stored as PNG."""
  num_train: int = 1000
  num_val: int = 100
  seed: int = 0

  @property
  def info(self) -> dataset_info_lib.DatasetInfo:
    return dataset_info_lib.SHAPES

  def num_examples(self) -> Dict[str, int]:
    return {"train": self.num_train, "val": self.num_val}

  def make_record(self, split: str, index: int) -> Tuple[tf.train.Example, np.ndarray]:
    offset = 0 if split == "train" else SHAPES_VAL_INDEX_OFFSET
    image, panoptic = shapes.generate_example(self.seed, offset + index)
    info = self.info
    example = tfrecord.make_example(
        image_bytes=tfrecord.encode_png(image), image_format="png",
        file_name=f"shapes_{split}_{index:06d}.png", height=image.shape[0],
        width=image.shape[1], panoptic=panoptic, label_divisor=info.label_divisor,
        ignore_label=info.ignore_label)
    return example, panoptic

  def config(self) -> dict:
    return {"dataset": "shapes", "num_train": self.num_train,
            "num_val": self.num_val, "seed": self.seed}


_CONVERTERS: Dict[str, Callable[[], Converter]] = {}


def register_converter(name: str, from_flags: Callable[[], Converter]) -> None:
  """Registers ``from_flags`` (reads absl FLAGS, returns a Converter) as ``name``."""
  _CONVERTERS[name] = from_flags


def _shapes_from_flags() -> Converter:
  return ShapesConverter(num_train=FLAGS.num_train, num_val=FLAGS.num_val,
                         seed=FLAGS.seed)


register_converter("shapes", _shapes_from_flags)


def shard_name(split: str, shard: int, num_shards: int) -> str:
  """``<split>-<shard:05d>-of-<num_shards:05d>.tfrecord``."""
  return f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"


def _shard_range(num_examples: int, shard: int, num_shards: int) -> range:
  """The contiguous block of image indices that shard ``shard`` holds."""
  return range(num_examples * shard // num_shards,
               num_examples * (shard + 1) // num_shards)


def _new_stats(num_classes: int) -> dict:
  return {"images": 0, "segments": [0] * num_classes, "pixels": [0] * num_classes,
          "crowd_segments": [0] * num_classes, "void_pixels": 0}


def _add_label_stats(stats: dict, panoptic: np.ndarray,
                     info: dataset_info_lib.DatasetInfo) -> None:
  """Counts one image's segments and pixels per class into ``stats``."""
  stats["images"] += 1
  ids, counts = np.unique(panoptic, return_counts=True)
  semantic = ids // info.label_divisor
  instance = ids % info.label_divisor
  for sem, inst, count in zip(semantic.tolist(), instance.tolist(), counts.tolist()):
    if sem == info.ignore_label:
      stats["void_pixels"] += count
      continue
    if not 0 <= sem < info.num_classes:
      raise ValueError(f"label holds class {sem}, outside [0, {info.num_classes}) "
                       f"and not the ignore label {info.ignore_label}.")
    stats["pixels"][sem] += count
    if info.classes[sem].is_thing and inst == 0:
      stats["crowd_segments"][sem] += 1
    else:
      stats["segments"][sem] += 1


def _merge_stats(total: dict, part: dict) -> None:
  for key, value in part.items():
    if isinstance(value, list):
      total[key] = [a + b for a, b in zip(total[key], value)]
    else:
      total[key] += value


def _stats_of_shard(path: str, info: dataset_info_lib.DatasetInfo) -> dict:
  """Reads a finished shard back and counts its segments (for skipped shards)."""
  stats = _new_stats(info.num_classes)
  try:
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
      example = tf.train.Example.FromString(record)
      label = example.features.feature[tfrecord.PANOPTIC_ENCODED].bytes_list.value[0]
      if label:
        _add_label_stats(stats, tfrecord.decode_panoptic_png(label), info)
      else:
        stats["images"] += 1
  except (tf.errors.OpError, ValueError, OSError) as e:
    raise ValueError(f"Existing shard {path} is unreadable ({e}); delete it and "
                     "rerun.") from e
  return stats


def _write_shard(task: Tuple[Converter, str, int, int, str]) -> Tuple[str, int, dict, bool]:
  """Writes one shard (in a worker). Returns (split, shard, stats, skipped)."""
  converter, split, shard, num_shards, output_dir = task
  info = converter.info
  path = os.path.join(output_dir, shard_name(split, shard, num_shards))
  if os.path.exists(path):
    return split, shard, _stats_of_shard(path, info), True
  stats = _new_stats(info.num_classes)
  tmp_path = os.path.join(output_dir, f".{shard_name(split, shard, num_shards)}"
                          f".tmp-{os.getpid()}")
  try:
    with tf.io.TFRecordWriter(tmp_path) as writer:
      for index in _shard_range(converter.num_examples()[split], shard, num_shards):
        try:
          example, panoptic = converter.make_record(split, index)
          _add_label_stats(stats, panoptic, info)
        except Exception as e:
          raise RuntimeError(f"Converting image {index} of split {split!r}: {e}") from e
        # Deterministic: map keys sorted, so a shard is byte-identical across runs.
        writer.write(example.SerializeToString(deterministic=True))
    os.replace(tmp_path, path)
  finally:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
  return split, shard, stats, False


def _write_json(path: str, data: dict) -> None:
  tmp_path = f"{path}.tmp-{os.getpid()}"
  with open(tmp_path, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=2)
    f.write("\n")
  os.replace(tmp_path, path)


def _check_config(output_dir: str, config: dict) -> None:
  """Stops if ``output_dir`` holds a conversion made with other settings."""
  path = os.path.join(output_dir, CONFIG_FILE)
  if os.path.exists(path):
    try:
      with open(path, encoding="utf-8") as f:
        previous = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"Cannot read {path}: {e}; delete it and rerun.") from e
    if previous != config:
      raise ValueError(
          f"{output_dir} holds a conversion made with {previous}, not {config}. "
          "Use another --output_dir, or delete the old one.")
  else:
    _write_json(path, config)


def _format_summary(summary: dict, info: dataset_info_lib.DatasetInfo) -> str:
  lines = []
  for split, stats in summary["splits"].items():
    lines.append(f"{split}: {stats['images']} images, {stats['shards']} shards, "
                 f"{stats['void_pixels']} void pixels")
    lines.append(f"  {'id':>4s}  {'class':<24s} {'kind':<5s} {'segments':>9s} "
                 f"{'crowd':>6s} {'pixels':>12s}")
    for i, cls in enumerate(info.classes):
      lines.append(f"  {i:4d}  {cls.name:<24s} {'thing' if cls.is_thing else 'stuff':<5s} "
                   f"{stats['segments'][i]:9d} {stats['crowd_segments'][i]:6d} "
                   f"{stats['pixels'][i]:12d}")
  return "\n".join(lines)


def convert(converter: Converter, output_dir: str, num_shards: int,
            num_workers: int = 2, verbose: bool = True,
            min_images_per_worker: int = MIN_IMAGES_PER_WORKER) -> dict:
  """Writes the TFRecord shards of every split and ``summary.json``.

  Args:
    converter: the dataset.
    output_dir: folder for the shards (created if missing).
    num_shards: shards per split.
    num_workers: most worker processes; 1 writes in this process.
    verbose: print the summary.
    min_images_per_worker: fewer workers are started when there are fewer
      images than this per worker.

  Returns:
    The summary dict (also written as ``summary.json``): ``config``,
    ``num_shards``, ``classes`` and per split ``images``, ``shards``,
    ``segments`` / ``crowd_segments`` / ``pixels`` per train id, ``void_pixels``.

  Raises:
    ValueError: on bad arguments, or an output folder converted with other
      settings.
  """
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}.")
  counts = converter.num_examples()
  for split, count in counts.items():
    if count < 0:
      raise ValueError(f"Split {split!r}: number of images must be >= 0, got {count}.")
  info = converter.info
  os.makedirs(output_dir, exist_ok=True)
  config = dict(converter.config(), num_shards=num_shards)
  _check_config(output_dir, config)
  tasks = [(converter, split, shard, num_shards, output_dir)
           for split in counts for shard in range(num_shards)]
  total_images = sum(counts.values())
  num_workers = max(1, min(num_workers, len(tasks),
                           total_images // max(1, min_images_per_worker)))
  if num_workers == 1:
    results = [_write_shard(task) for task in tasks]
  else:
    with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
      results = pool.map(_write_shard, tasks, chunksize=1)
  splits = {split: dict(_new_stats(info.num_classes), shards=num_shards)
            for split in counts}
  skipped = 0
  for split, _, stats, was_skipped in results:
    _merge_stats(splits[split], stats)
    skipped += was_skipped
  summary = {"config": config, "num_shards": num_shards,
             "classes": info.class_names, "splits": splits,
             "skipped_shards": skipped}
  _write_json(os.path.join(output_dir, SUMMARY_FILE), summary)
  if verbose:
    print(f"Wrote {len(tasks) - skipped} shards ({skipped} already there) to "
          f"{output_dir}")
    print(_format_summary(summary, info))
  return summary


def file_pattern(output_dir: str, split: str) -> str:
  """Glob of the shards of ``split`` in ``output_dir``."""
  return os.path.join(output_dir, f"{split}-*-of-*.tfrecord")


@gin.configurable
def ensure_shapes_dataset(output_dir: str, num_train: int = 1000, num_val: int = 100,
                          seed: int = 0, num_shards: int = 4,
                          num_workers: int = 2) -> Dict[str, str]:
  """Generates the shapes dataset in ``output_dir`` unless it is already there.

  "Already there" means ``summary.json`` exists with the same settings and every
  shard exists; otherwise the missing shards are written (finished ones are
  kept), and a folder converted with other settings is an error.

  Args:
    output_dir: folder of the shards.
    num_train: training images.
    num_val: validation images.
    seed: dataset seed.
    num_shards: shards per split.
    num_workers: worker processes for generation.

  Returns:
    ``{"train": pattern, "val": pattern}``, globs of the shards.
  """
  converter = ShapesConverter(num_train=num_train, num_val=num_val, seed=seed)
  patterns = {split: file_pattern(output_dir, split) for split in converter.num_examples()}
  config = dict(converter.config(), num_shards=num_shards)
  summary_path = os.path.join(output_dir, SUMMARY_FILE)
  complete = os.path.exists(summary_path) and all(
      os.path.exists(os.path.join(output_dir, shard_name(split, shard, num_shards)))
      for split in patterns for shard in range(num_shards))
  if complete:
    try:
      with open(summary_path, encoding="utf-8") as f:
        complete = json.load(f).get("config") == config
    except (OSError, json.JSONDecodeError):
      complete = False
  if not complete:
    convert(converter, output_dir, num_shards, num_workers=num_workers)
  return patterns


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program, so importing
  this module for :func:`ensure_shapes_dataset` adds no global flags)."""
  flags.DEFINE_string("dataset", None, f"Dataset to convert: one of {sorted(_CONVERTERS)}.")
  flags.DEFINE_string("output_dir", None, "Folder for the TFRecord shards.")
  flags.DEFINE_integer("num_shards", 4, "Shards per split.")
  flags.DEFINE_integer("num_workers", min(4, os.cpu_count() or 1),
                       "Worker processes writing shards in parallel.")
  # shapes
  flags.DEFINE_integer("num_train", 1000, "shapes: training images.")
  flags.DEFINE_integer("num_val", 100, "shapes: validation images.")
  flags.DEFINE_integer("seed", 0, "shapes: dataset seed.")


def main(argv: List[str]) -> Optional[int]:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.dataset not in _CONVERTERS:
    raise app.UsageError(f"--dataset={FLAGS.dataset!r} is not one of "
                         f"{sorted(_CONVERTERS)}.")
  if not FLAGS.output_dir:
    raise app.UsageError("--output_dir is required.")
  try:
    convert(_CONVERTERS[FLAGS.dataset](), FLAGS.output_dir, FLAGS.num_shards,
            num_workers=FLAGS.num_workers)
  except ValueError as e:
    print(f"convert: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["dataset", "output_dir"])
  app.run(main)
