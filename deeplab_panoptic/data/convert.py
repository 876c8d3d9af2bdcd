r"""Converts a panoptic dataset to sharded TFRecords (schema: tfrecord.py).

One tool for every dataset: ``--dataset`` picks a converter from a registry, and
each converter reads its own flags:

* ``shapes``: the synthetic dataset (``--num_train --num_val --seed``);
* ``coco``, ``ade20k``, ``coco_format``: a dataset in COCO panoptic format
  (``--panoptic_json --panoptic_dir --image_dir [--split]``); they differ only
  in their description: ``coco`` uses the built-in 133-class table, ``ade20k``
  the categories of its own JSON checked against 150 classes / 100 things, and
  ``coco_format`` (any custom dataset) the categories of its JSON or of
  ``--categories_json``, named ``--dataset_name``;
* ``cityscapes``: gtFine (``--cityscapes_root --split``), with
  cityscapesscripts' label definitions.

  python -m deeplab_panoptic.data.convert --dataset=shapes --output_dir=/tmp/shapes \
      --num_train=1000 --num_val=100 --seed=0 --num_shards=4
  python -m deeplab_panoptic.data.convert --dataset=coco --output_dir=/data/coco \
      --panoptic_json=annotations/panoptic_val2017.json \
      --panoptic_dir=annotations/panoptic_val2017 --image_dir=val2017 --num_shards=8

Output, in ``--output_dir``:

* ``<split>-<shard:05d>-of-<num_shards:05d>.tfrecord`` per split;
* ``summary.json``: the conversion settings, and per split the number of images
  and the segments and pixels of each class (also printed);
* ``conversion_config.json``: the settings of each split, written first, so that
  a rerun into the same folder with other settings stops instead of mixing two
  datasets (splits converted by separate runs, e.g. COCO train and val, add
  their entry);
* ``dataset_info.json``: the dataset description (COCO ``categories`` with
  ``label_divisor`` and ``ignore_label``), readable by
  ``dataset_info.categories_json`` and used by the inspector.

Bad input (a missing, unreadable or truncated image or PNG, segments that do
not match the PNG, an unknown category, sizes that differ, an empty annotation
list) stops the conversion with one error naming the file (and segment), exit
status 1; workers stop at the first error, and no partial shard, summary or
temporary file is left (finished shards are whole and a rerun keeps them).

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
import contextlib
import dataclasses
import json
import multiprocessing
import os
import sys
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from absl import app
from absl import flags
import gin
import numpy as np
import tensorflow as tf

from deeplab_panoptic.data import cityscapes
from deeplab_panoptic.data import coco_format
from deeplab_panoptic.data import dataset_info as dataset_info_lib
from deeplab_panoptic.data import shapes
from deeplab_panoptic.data import tfrecord
from deeplab_panoptic.utils import files

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "conversion_config.json"
DATASET_INFO_FILE = "dataset_info.json"
# Validation images of the shapes dataset are generate_example(seed, offset + i),
# so they never repeat a training image (train uses indices 0..num_train-1).
SHAPES_VAL_INDEX_OFFSET = 2 ** 31
# A worker process imports TensorFlow (seconds) before writing anything, and a
# shapes image takes ~10 ms: below this many images per worker, fewer workers
# finish sooner.
MIN_IMAGES_PER_WORKER = 200


class ConversionError(ValueError):
  """Bad input: the message names the file (and segment)."""


@contextlib.contextmanager
def _as_conversion_error() -> Iterator[None]:
  """A dataset reader's FormatError (which names the file) becomes a ConversionError."""
  try:
    yield
  except coco_format.FormatError as e:
    raise ConversionError(str(e)) from e


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

  def validate(self) -> None:
    """Checks what can be checked before writing (default: nothing).

    Raises:
      ConversionError (a ValueError) naming the bad file.
    """


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


# Annotations already read in this process, by JSON path: a worker writes many
# shards and reads the (large) COCO JSON once.
_ENTRIES_CACHE: Dict[Tuple[str, str, str, str], List[coco_format.ImageEntry]] = {}
_PAIRS_CACHE: Dict[Tuple[str, str], List[Tuple[str, str]]] = {}


def _cached(cache: dict, key: tuple, read: Callable[[], list]) -> list:
  """``read()`` once per process and key."""
  if key not in cache:
    with _as_conversion_error():
      cache[key] = read()
  return cache[key]


@dataclasses.dataclass
class CocoPanopticConverter(Converter):
  """A dataset in COCO panoptic format (one JSON + one PNG per image): one split.

  The description ``dataset`` (classes with the category ids the JSON uses)
  is given by the caller (see the ``coco``, ``ade20k`` and ``coco_format``
  flag functions). Images are stored as they are (JPEG / PNG bytes); labels as
  the library's panoptic PNG.
  """
  panoptic_json: str
  panoptic_dir: str
  image_dir: str
  split: str
  dataset: dataset_info_lib.DatasetInfo
  format_name: str = "coco_format"

  @property
  def info(self) -> dataset_info_lib.DatasetInfo:
    return self.dataset

  def _entries(self) -> List[coco_format.ImageEntry]:
    key = (self.panoptic_json, self.panoptic_dir, self.image_dir, self.dataset.name)
    return _cached(_ENTRIES_CACHE, key, lambda: coco_format.load_annotations(
        self.panoptic_json, self.panoptic_dir, self.image_dir, self.dataset))

  def validate(self) -> None:
    self._entries()

  def num_examples(self) -> Dict[str, int]:
    return {self.split: len(self._entries())}

  def make_record(self, split: str, index: int) -> Tuple[tf.train.Example, np.ndarray]:
    entry = self._entries()[index]
    with _as_conversion_error():
      image_bytes, image_format, panoptic = coco_format.read_example(entry, self.dataset)
    example = tfrecord.make_example(
        image_bytes=image_bytes, image_format=image_format, file_name=entry.file_name,
        height=panoptic.shape[0], width=panoptic.shape[1], panoptic=panoptic,
        label_divisor=self.dataset.label_divisor, ignore_label=self.dataset.ignore_label)
    return example, panoptic

  def config(self) -> dict:
    return {"dataset": self.format_name, "name": self.dataset.name,
            "split": self.split,
            "panoptic_json": os.path.abspath(self.panoptic_json),
            "panoptic_dir": os.path.abspath(self.panoptic_dir),
            "image_dir": os.path.abspath(self.image_dir)}


@dataclasses.dataclass
class CityscapesConverter(Converter):
  """Cityscapes gtFine (``*_gtFine_instanceIds.png``): one split; images as PNG."""
  cityscapes_root: str
  split: str

  @property
  def info(self) -> dataset_info_lib.DatasetInfo:
    return dataset_info_lib.dataset_info(name="cityscapes")

  def _pairs(self) -> List[Tuple[str, str]]:
    return _cached(_PAIRS_CACHE, (self.cityscapes_root, self.split),
                   lambda: cityscapes.list_pairs(self.cityscapes_root, self.split))

  def validate(self) -> None:
    self._pairs()

  def num_examples(self) -> Dict[str, int]:
    return {self.split: len(self._pairs())}

  def make_record(self, split: str, index: int) -> Tuple[tf.train.Example, np.ndarray]:
    image_path, label_path = self._pairs()[index]
    info = self.info
    with _as_conversion_error():
      image_bytes, image_format, height, width = coco_format.read_image_file(image_path)
      panoptic = cityscapes.read_label(label_path, info)
    if panoptic.shape != (height, width):
      raise ConversionError(f"{label_path}: the label is {panoptic.shape[0]}x"
                            f"{panoptic.shape[1]} but its image {image_path} is "
                            f"{height}x{width}.")
    example = tfrecord.make_example(
        image_bytes=image_bytes, image_format=image_format, file_name=image_path,
        height=height, width=width, panoptic=panoptic, label_divisor=info.label_divisor,
        ignore_label=info.ignore_label)
    return example, panoptic

  def config(self) -> dict:
    return {"dataset": "cityscapes", "split": self.split,
            "cityscapes_root": os.path.abspath(self.cityscapes_root)}


_CONVERTERS: Dict[str, Callable[[flags.FlagValues], Converter]] = {}


def register_converter(name: str,
                       from_flags: Callable[[flags.FlagValues], Converter]) -> None:
  """Registers ``from_flags`` (parsed flag values -> a Converter) as ``--dataset=name``."""
  _CONVERTERS[name] = from_flags


def _require(flag_values: flags.FlagValues, *names: str) -> None:
  missing = [f"--{n}" for n in names if not flag_values[n].value]
  if missing:
    raise ConversionError(f"--dataset={flag_values.dataset} needs {', '.join(missing)}.")


def _coco_split(flag_values: flags.FlagValues) -> str:
  """--split, or 'train' / 'val' when the JSON's file name says so."""
  if flag_values.split:
    return flag_values.split
  base = os.path.basename(flag_values.panoptic_json).lower()
  found = [s for s in ("train", "val") if s in base]
  if len(found) != 1:
    raise ConversionError(f"Cannot tell the split from {flag_values.panoptic_json}: "
                          "set --split.")
  return found[0]


def _coco_format_args(flag_values: flags.FlagValues) -> dict:
  _require(flag_values, "panoptic_json", "panoptic_dir", "image_dir")
  return dict(panoptic_json=flag_values.panoptic_json,
              panoptic_dir=flag_values.panoptic_dir, image_dir=flag_values.image_dir,
              split=_coco_split(flag_values))


def _json_categories(path: str) -> list:
  data = coco_format.read_json(path)
  categories = data.get("categories") if isinstance(data, dict) else data
  if not categories:
    raise ConversionError(f"{path}: no 'categories' list.")
  return categories


def _coco_from_flags(flag_values: flags.FlagValues) -> Converter:
  return CocoPanopticConverter(dataset=dataset_info_lib.dataset_info(name="coco"),
                               format_name="coco", **_coco_format_args(flag_values))


def _ade20k_from_flags(flag_values: flags.FlagValues) -> Converter:
  args = _coco_format_args(flag_values)
  # No installed package ships the ADE20K panoptic class table: the description
  # comes from the dataset's own COCO-format categories, checked against the
  # registered spec (150 classes, 100 things).
  source = flag_values.categories_json or args["panoptic_json"]
  info = dataset_info_lib.from_spec("ade20k", _json_categories(source), source)
  return CocoPanopticConverter(dataset=info, format_name="ade20k", **args)


def _custom_from_flags(flag_values: flags.FlagValues) -> Converter:
  args = _coco_format_args(flag_values)
  source = flag_values.categories_json or args["panoptic_json"]
  info = dataset_info_lib.from_categories_list(
      flag_values.dataset_name, _json_categories(source),
      label_divisor=flag_values.label_divisor, ignore_label=flag_values.ignore_label,
      source=source)
  return CocoPanopticConverter(dataset=info, format_name="coco_format", **args)


def _cityscapes_from_flags(flag_values: flags.FlagValues) -> Converter:
  _require(flag_values, "cityscapes_root", "split")
  return CityscapesConverter(cityscapes_root=flag_values.cityscapes_root,
                             split=flag_values.split)


def _shapes_from_flags(flag_values: flags.FlagValues) -> Converter:
  return ShapesConverter(num_train=flag_values.num_train, num_val=flag_values.num_val,
                         seed=flag_values.seed)


register_converter("shapes", _shapes_from_flags)
register_converter("coco", _coco_from_flags)
register_converter("ade20k", _ade20k_from_flags)
register_converter("coco_format", _custom_from_flags)
register_converter("cityscapes", _cityscapes_from_flags)


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


def _tmp_prefix(split: str, shard: int, num_shards: int) -> str:
  return files.temporary_prefix(shard_name(split, shard, num_shards))


def _write_shard(task: Tuple[Converter, str, int, int, str]) -> Tuple[str, int, dict, bool]:
  """Writes one shard (in a worker). Returns (split, shard, stats, skipped).

  Raises:
    ConversionError: naming the split, the image index and the bad file.
  """
  converter, split, shard, num_shards, output_dir = task
  info = converter.info
  path = os.path.join(output_dir, shard_name(split, shard, num_shards))
  if os.path.exists(path):
    return split, shard, _stats_of_shard(path, info), True
  stats = _new_stats(info.num_classes)
  with files.atomic_output(path) as tmp_path:
    with tf.io.TFRecordWriter(tmp_path) as writer:
      for index in _shard_range(converter.num_examples()[split], shard, num_shards):
        try:
          example, panoptic = converter.make_record(split, index)
          _add_label_stats(stats, panoptic, info)
        except ConversionError as e:
          raise ConversionError(f"split {split!r}, image #{index}: {e}") from None
        except Exception as e:  # Anything else: still name the image.
          raise ConversionError(f"split {split!r}, image #{index}: "
                                f"{type(e).__name__}: {e}") from None
        # Deterministic: map keys sorted, so a shard is byte-identical across runs.
        writer.write(example.SerializeToString(deterministic=True))
  return split, shard, stats, False


def _read_json_or_none(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"Cannot read {path}: {e}; delete it and rerun.") from e


def _check_config(output_dir: str, splits: List[str], config: dict,
                  info: dataset_info_lib.DatasetInfo) -> Callable[[], None]:
  """Stops if ``output_dir`` holds a conversion made with other settings.

  ``conversion_config.json`` maps each split to the settings it was converted
  with; a split converted before must have the same settings, a new split is
  added. ``dataset_info.json`` must hold the same description.

  Returns:
    A function that puts both files back as they were (for a conversion that
    fails before writing any shard).
  """
  info_path = os.path.join(output_dir, DATASET_INFO_FILE)
  previous_info = _read_json_or_none(info_path)
  if previous_info is not None and previous_info != dataset_info_lib.to_json(info):
    raise ConversionError(f"{output_dir} holds a conversion made with another dataset "
                     f"description ({info_path}). Use another --output_dir, or "
                     "delete the old one.")
  path = os.path.join(output_dir, CONFIG_FILE)
  previous = _read_json_or_none(path) or {}
  if previous and not all(isinstance(v, dict) for v in previous.values()):
    previous = {split: previous for split in splits}  # Flat file of older versions.
  for split in splits:
    if split in previous and previous[split] != config:
      raise ConversionError(
          f"{output_dir} holds a conversion made with {previous[split]}, not {config}. "
          "Use another --output_dir, or delete the old one.")
  existed = os.path.exists(path)
  previous_file = _read_json_or_none(path)
  if any(split not in previous for split in splits) or not existed:
    files.write_json_atomic(path, dict(previous, **{split: config for split in splits}))
  if previous_info is None:
    files.write_json_atomic(info_path, dataset_info_lib.to_json(info))

  def restore():
    if previous_info is None and os.path.exists(info_path):
      os.remove(info_path)
    if previous_file is None:
      if os.path.exists(path):
        os.remove(path)
    else:
      files.write_json_atomic(path, previous_file)

  return restore


def _remove_temporary_files(output_dir: str, tasks) -> None:
  """Removes the temporary shards of ``tasks`` (left by killed workers)."""
  prefixes = tuple(_tmp_prefix(split, shard, num_shards)
                   for _, split, shard, num_shards, _ in tasks)
  for name in os.listdir(output_dir):
    if name.startswith(prefixes):
      try:
        os.remove(os.path.join(output_dir, name))
      except FileNotFoundError:
        pass


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
  converter.validate()
  counts = converter.num_examples()
  for split, count in counts.items():
    if count < 0:
      raise ValueError(f"Split {split!r}: number of images must be >= 0, got {count}.")
  info = converter.info
  os.makedirs(output_dir, exist_ok=True)
  config = dict(converter.config(), num_shards=num_shards)
  restore_config = _check_config(output_dir, list(counts), config, info)
  tasks = [(converter, split, shard, num_shards, output_dir)
           for split in counts for shard in range(num_shards)]
  # Left by an interrupted run (a killed process cannot clean up).
  _remove_temporary_files(output_dir, tasks)
  total_images = sum(counts.values())
  num_workers = max(1, min(num_workers, len(tasks),
                           total_images // max(1, min_images_per_worker)))
  try:
    if num_workers == 1:
      results = [_write_shard(task) for task in tasks]
    else:
      results = []
      with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
        # Unordered: the first error stops the pool (leaving the pool
        # terminates the workers) instead of waiting for every shard.
        for result in pool.imap_unordered(_write_shard, tasks, chunksize=1):
          results.append(result)
  except BaseException:
    _remove_temporary_files(output_dir, tasks)
    if not any(os.path.exists(os.path.join(output_dir, shard_name(t[1], t[2], t[3])))
               for t in tasks):
      # Nothing of this conversion is on disk: forget its settings, so that a
      # corrected rerun is not refused as "another conversion".
      restore_config()
    raise
  summary_path = os.path.join(output_dir, SUMMARY_FILE)
  previous = _read_json_or_none(summary_path) or {}
  splits = {split: stats for split, stats in previous.get("splits", {}).items()
            if split not in counts}
  splits.update({split: dict(_new_stats(info.num_classes), shards=num_shards)
                 for split in counts})
  skipped = 0
  for split, _, stats, was_skipped in sorted(results, key=lambda r: (r[0], r[1])):
    _merge_stats(splits[split], stats)
    skipped += was_skipped
  configs = {split: c for split, c in previous.get("configs", {}).items()
             if split in splits}
  configs.update({split: config for split in counts})
  summary = {"config": config, "configs": configs, "num_shards": num_shards,
             "classes": info.class_names, "splits": splits, "skipped_shards": skipped}
  files.write_json_atomic(summary_path, summary)
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


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the command-line flags (only when run as a program, so importing
  this module for :func:`ensure_shapes_dataset` adds no global flags)."""
  def string(name, default, text):
    flags.DEFINE_string(name, default, text, flag_values=flag_values)

  def integer(name, default, text):
    flags.DEFINE_integer(name, default, text, flag_values=flag_values)

  string("dataset", None, f"Dataset to convert: one of {sorted(_CONVERTERS)}.")
  string("output_dir", None, "Folder for the TFRecord shards.")
  integer("num_shards", 4, "Shards per split.")
  integer("num_workers", min(4, os.cpu_count() or 1),
          "Worker processes writing shards in parallel.")
  # shapes
  integer("num_train", 1000, "shapes: training images.")
  integer("num_val", 100, "shapes: validation images.")
  integer("seed", 0, "shapes: dataset seed.")
  # COCO panoptic format (coco, ade20k, coco_format)
  string("panoptic_json", None, "coco/ade20k/coco_format: the COCO panoptic JSON.")
  string("panoptic_dir", None, "coco/ade20k/coco_format: folder of the panoptic PNGs.")
  string("image_dir", None, "coco/ade20k/coco_format: folder of the images.")
  string("split", None, "Split name of the shards (cityscapes: the gtFine folder, "
         "train|val; COCO format: default train/val from the JSON's file name).")
  string("categories_json", None, "ade20k/coco_format: categories file (default: the "
         "categories of --panoptic_json).")
  string("dataset_name", "custom", "coco_format: the dataset's name.")
  integer("label_divisor", 256, "coco_format: label divisor (> largest instance count "
          "of one class in one image).")
  integer("ignore_label", 255, "coco_format: void class (>= number of classes).")
  # cityscapes
  string("cityscapes_root", None, "cityscapes: folder holding leftImg8bit/ and gtFine/.")


def run(flag_values: flags.FlagValues) -> int:
  """Runs the conversion that parsed ``flag_values`` describe.

  Returns:
    0 on success; 1 after printing one error line (naming the bad file) to
    stderr.
  """
  if flag_values.dataset not in _CONVERTERS:
    print(f"convert: error: --dataset={flag_values.dataset!r} is not one of "
          f"{sorted(_CONVERTERS)}.", file=sys.stderr)
    return 1
  if not flag_values.output_dir:
    print("convert: error: --output_dir is required.", file=sys.stderr)
    return 1
  try:
    convert(_CONVERTERS[flag_values.dataset](flag_values), flag_values.output_dir,
            flag_values.num_shards, num_workers=flag_values.num_workers)
  except ValueError as e:
    print(f"convert: error: {e}", file=sys.stderr)
    return 1
  return 0


def run_args(argv: List[str]) -> int:
  """Parses ``argv`` (``argv[0]`` is the program name) into fresh flags and runs.

  For tests and scripts: the same as the command line, in this process.
  """
  flag_values = flags.FlagValues()
  define_flags(flag_values)
  flag_values(argv)
  return run(flag_values)


def main(argv: List[str]) -> Optional[int]:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  return run(FLAGS)


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["dataset", "output_dir"])
  app.run(main)
