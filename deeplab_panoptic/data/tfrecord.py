"""The TFRecord schema: one ``tf.train.Example`` per image, see docs/data_format.md.

Features:

================================  =======  =====================================
key                               type     value
================================  =======  =====================================
``image/encoded``                 bytes    the image file (PNG or JPEG), RGB.
``image/format``                  bytes    ``png`` or ``jpeg``.
``image/filename``                bytes    source file name, no directory.
``image/height``                  int64    image height in pixels.
``image/width``                   int64    image width in pixels.
``image/panoptic/encoded``        bytes    the label as an RGB PNG (see below);
                                           empty for an unlabelled image.
``image/panoptic/format``         bytes    ``png``.
``image/panoptic/label_divisor``  int64    label divisor of the stored values.
``image/panoptic/ignore_label``   int64    semantic id of void pixels.
================================  =======  =====================================

The label PNG holds ``value = R + 256 * G + 256**2 * B`` (the COCO panoptic
packing) with ``value = semantic * label_divisor + instance``, where ``semantic``
is the train id. Void pixels hold ``ignore_label * label_divisor``; a thing pixel
with instance 0 is crowd.
"""

from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.data import coco_panoptic

IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_FILENAME = "image/filename"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
PANOPTIC_ENCODED = "image/panoptic/encoded"
PANOPTIC_FORMAT = "image/panoptic/format"
PANOPTIC_LABEL_DIVISOR = "image/panoptic/label_divisor"
PANOPTIC_IGNORE_LABEL = "image/panoptic/ignore_label"

# Extra keys of the dict returned by decode_record (not part of the common
# contract: only the data pipeline reads them).
LABEL_DIVISOR = "label_divisor"
IGNORE_LABEL = "ignore_label"
HAS_LABEL = "has_label"

# Largest value the 3-channel label PNG can hold.
MAX_PANOPTIC_VALUE = coco_panoptic.MAX_SEGMENT_ID

_IMAGE_FORMATS = ("png", "jpeg")
# File signatures, checked before decoding so that garbage bytes give an error
# that names the record instead of a bare decoder message.
_PNG_MAGIC = coco_panoptic.PNG_MAGIC
_JPEG_MAGIC = coco_panoptic.JPEG_MAGIC
# The record's image encoder (uint8 [H, W, 3] -> PNG bytes).
encode_png = coco_panoptic.encode_png


def _bytes_feature(value: bytes) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(value: int) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def encode_panoptic_png(panoptic: np.ndarray) -> bytes:
  """Packs an int [H, W] panoptic label into RGB PNG bytes (R + 256G + 256^2B).

  Raises:
    ValueError: if the label is not 2-D or holds values outside [0, 256**3).
  """
  panoptic = np.asarray(panoptic)
  if panoptic.ndim != 2 or not np.issubdtype(panoptic.dtype, np.integer):
    raise ValueError(f"Panoptic label must be an integer [H, W] array, got "
                     f"{panoptic.dtype} {panoptic.shape}.")
  if panoptic.size and (panoptic.min() < 0 or panoptic.max() > MAX_PANOPTIC_VALUE):
    raise ValueError(f"Panoptic label values must lie in [0, {MAX_PANOPTIC_VALUE}], "
                     f"got [{panoptic.min()}, {panoptic.max()}].")
  return coco_panoptic.encode_id_png(panoptic)


def decode_panoptic_png(png: bytes) -> np.ndarray:
  """Inverse of :func:`encode_panoptic_png` (numpy, for tools and tests).

  Returns:
    int32 [H, W].
  """
  return coco_panoptic.decode_id_png(png).astype(np.int32)


def make_example(image_bytes: bytes, image_format: str, file_name: str, height: int,
                 width: int, panoptic: Optional[np.ndarray], label_divisor: int,
                 ignore_label: int) -> tf.train.Example:
  """Builds the record of one image.

  Args:
    image_bytes: the encoded image file (PNG or JPEG).
    image_format: ``png`` or ``jpeg`` (``jpg`` is accepted and stored as ``jpeg``).
    file_name: source file name; only its base name is stored.
    height: image height.
    width: image width.
    panoptic: int [height, width] label, ``semantic * label_divisor + instance``,
      or None for an unlabelled image.
    label_divisor: label divisor of ``panoptic``.
    ignore_label: semantic id of void pixels.

  Returns:
    The ``tf.train.Example``.

  Raises:
    ValueError: on an unknown format, or a label whose size differs from the image.
  """
  image_format = image_format.lower()
  if image_format == "jpg":
    image_format = "jpeg"
  if image_format not in _IMAGE_FORMATS:
    raise ValueError(f"{file_name}: image format {image_format!r} is not one of "
                     f"{_IMAGE_FORMATS}.")
  if panoptic is not None:
    if tuple(np.shape(panoptic)) != (height, width):
      raise ValueError(f"{file_name}: panoptic label has shape {np.shape(panoptic)}, "
                       f"the image is {height}x{width}.")
    try:
      panoptic_bytes = encode_panoptic_png(panoptic)
    except ValueError as e:
      raise ValueError(f"{file_name}: {e}") from e
  else:
    panoptic_bytes = b""
  base_name = file_name.replace("\\", "/").rsplit("/", 1)[-1]
  feature = {
      IMAGE_ENCODED: _bytes_feature(image_bytes),
      IMAGE_FORMAT: _bytes_feature(image_format.encode()),
      IMAGE_FILENAME: _bytes_feature(base_name.encode()),
      IMAGE_HEIGHT: _int64_feature(height),
      IMAGE_WIDTH: _int64_feature(width),
      PANOPTIC_ENCODED: _bytes_feature(panoptic_bytes),
      PANOPTIC_FORMAT: _bytes_feature(b"png"),
      PANOPTIC_LABEL_DIVISOR: _int64_feature(label_divisor),
      PANOPTIC_IGNORE_LABEL: _int64_feature(ignore_label),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature))


def read_examples(files: Sequence[str]) -> Iterator[Tuple[str, tf.train.Example]]:
  """Yields ``(file, example)`` for every record of ``files``, in file order (eager).

  TensorFlow reports a damaged TFRecord file as "corrupted record at <offset>"
  without the file; this names it.

  Raises:
    ValueError: naming the file and the record index of the first bad record.
  """
  for path in files:
    index = 0
    try:
      for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        yield path, tf.train.Example.FromString(record)
        index += 1
    except tf.errors.OpError as e:
      raise ValueError(f"Corrupt TFRecord file {path}: record #{index}: "
                       f"{e.message}") from e


_FEATURES = {
    IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
    IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string, default_value="png"),
    IMAGE_FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
    IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
    PANOPTIC_ENCODED: tf.io.FixedLenFeature([], tf.string, default_value=""),
    PANOPTIC_FORMAT: tf.io.FixedLenFeature([], tf.string, default_value="png"),
    PANOPTIC_LABEL_DIVISOR: tf.io.FixedLenFeature([], tf.int64),
    PANOPTIC_IGNORE_LABEL: tf.io.FixedLenFeature([], tf.int64),
}


def _starts_with(data: tf.Tensor, magic: bytes) -> tf.Tensor:
  return tf.equal(tf.strings.substr(data, 0, len(magic)), magic)


def _byte_checks(parsed: Dict[str, tf.Tensor], where: list,
                 ignore_label: Optional[int]) -> list:
  """Asserts on the stored bytes and sizes, before anything is decoded."""
  height, width = parsed[IMAGE_HEIGHT], parsed[IMAGE_WIDTH]
  image_bytes, label_bytes = parsed[IMAGE_ENCODED], parsed[PANOPTIC_ENCODED]
  checks = [
      tf.debugging.Assert(
          tf.logical_or(_starts_with(image_bytes, _PNG_MAGIC),
                        _starts_with(image_bytes, _JPEG_MAGIC)),
          where + ["is corrupt: image/encoded is neither a PNG nor a JPEG file."]),
      tf.debugging.Assert(
          tf.logical_or(tf.logical_not(parsed[HAS_LABEL]),
                        _starts_with(label_bytes, _PNG_MAGIC)),
          where + ["is corrupt: image/panoptic/encoded is not a PNG file."]),
      tf.debugging.Assert(
          tf.logical_and(height > 0, width > 0),
          where + ["has a non-positive image/height or image/width:", height, width]),
  ]
  if ignore_label is not None:
    stored_ignore = parsed[PANOPTIC_IGNORE_LABEL]
    checks.append(tf.debugging.Assert(
        tf.equal(stored_ignore, ignore_label),
        where + ["has ignore label", stored_ignore, "but the dataset uses",
                 ignore_label]))
  return checks


def _size_check(decoded: tf.Tensor, parsed: Dict[str, tf.Tensor], where: list,
                what: str) -> tf.Operation:
  """Asserts that ``decoded`` [h, w, C] has the stored height and width."""
  height, width = parsed[IMAGE_HEIGHT], parsed[IMAGE_WIDTH]
  shape = tf.shape(decoded)
  return tf.debugging.Assert(
      tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width)),
      where + ["stores size", height, width, f"but its {what} decodes to",
               shape[0], shape[1]])


def _decode_pixels(parsed: Dict[str, tf.Tensor], where: list,
                   ignore_label: Optional[int]) -> Tuple[tf.Tensor, tf.Tensor]:
  """uint8 [H, W, 3] image and int32 [H, W] stored panoptic label (void if none)."""
  height, width = parsed[IMAGE_HEIGHT], parsed[IMAGE_WIDTH]
  has_label, label_bytes = parsed[HAS_LABEL], parsed[PANOPTIC_ENCODED]
  with tf.control_dependencies(_byte_checks(parsed, where, ignore_label)):
    image = tf.io.decode_image(parsed[IMAGE_ENCODED], channels=3, dtype=tf.uint8,
                               expand_animations=False)
    label = tf.cond(
        has_label,
        lambda: tf.cast(tf.io.decode_png(label_bytes, channels=3, dtype=tf.uint8),
                        tf.int32),
        lambda: tf.zeros([height, width, 3], tf.int32))
  size_checks = [_size_check(image, parsed, where, "image"),
                 _size_check(label, parsed, where, "panoptic label")]
  with tf.control_dependencies(size_checks):
    panoptic = label[..., 0] + 256 * label[..., 1] + 65536 * label[..., 2]
    void = parsed[PANOPTIC_IGNORE_LABEL] * parsed[PANOPTIC_LABEL_DIVISOR]
    panoptic = tf.where(has_label, panoptic, void)
    image = tf.identity(image)
  return image, panoptic


def _with_divisor(panoptic: tf.Tensor, stored_divisor: tf.Tensor, divisor: tf.Tensor,
                  where: list) -> tf.Tensor:
  """``panoptic`` re-encoded from ``stored_divisor`` to ``divisor`` (if they differ)."""

  def re_encode():
    instance = panoptic % stored_divisor
    fits = tf.debugging.Assert(
        tf.reduce_all(instance < divisor),
        where + ["has label divisor", stored_divisor, "and instance ids up to",
                 tf.reduce_max(instance), "which do not fit the dataset's label "
                 "divisor", divisor])
    with tf.control_dependencies([fits]):
      return (panoptic // stored_divisor) * divisor + instance

  # Per-pixel work only for shards stored with another divisor (the input
  # pipeline's common case is the dataset's own).
  return tf.cond(tf.equal(stored_divisor, divisor), lambda: panoptic, re_encode)


def decode_record(serialized: tf.Tensor,
                  source: Union[tf.Tensor, str] = "",
                  label_divisor: Optional[int] = None,
                  ignore_label: Optional[int] = None) -> Dict[str, tf.Tensor]:
  """Parses and decodes one serialized record (in-graph).

  Cheap checks run in the graph and fail with a message naming the image file
  and ``source``: the image and label bytes must be PNG/JPEG and PNG, the
  decoded sizes must equal the stored height and width, and, when given, the
  stored ignore label must equal ``ignore_label``. A record stored with another
  label divisor than ``label_divisor`` is re-encoded to it (``semantic *
  label_divisor + instance``; its instance ids must stay below
  ``label_divisor``), so one set of shards serves models whose instance ids need a
  larger divisor (e.g. Panoptic SegFormer's 400 queries on COCO, stored at 256).

  Args:
    serialized: string scalar, a serialized ``tf.train.Example``.
    source: where the record comes from (e.g. the TFRecord path), for messages.
    label_divisor: label divisor of the returned GT_PANOPTIC, or None for the
      stored one.
    ignore_label: expected ignore label, or None to skip the check.

  Returns:
    A dict with
      common.IMAGE: uint8 [H, W, 3].
      common.IMAGE_NAME: string scalar.
      common.ORIGINAL_HEIGHT, common.ORIGINAL_WIDTH: int32 scalars.
      common.GT_PANOPTIC: int32 [H, W]; all void
        (``ignore_label * label_divisor``) for an unlabelled image.
      LABEL_DIVISOR: int32 scalar, the divisor of GT_PANOPTIC (``label_divisor``
        when given, else the stored one).
      IGNORE_LABEL: int32 scalar, as stored.
      HAS_LABEL: bool scalar, whether the record holds a label.
  """
  parsed = dict(tf.io.parse_single_example(serialized, _FEATURES))
  for key in (IMAGE_HEIGHT, IMAGE_WIDTH, PANOPTIC_LABEL_DIVISOR, PANOPTIC_IGNORE_LABEL):
    parsed[key] = tf.cast(parsed[key], tf.int32)
  parsed[HAS_LABEL] = tf.strings.length(parsed[PANOPTIC_ENCODED]) > 0
  name = parsed[IMAGE_FILENAME]
  where = ["Record of image", name, "in", source]
  image, panoptic = _decode_pixels(parsed, where, ignore_label)
  divisor = stored_divisor = parsed[PANOPTIC_LABEL_DIVISOR]
  if label_divisor is not None:
    divisor = tf.constant(label_divisor, tf.int32)
    panoptic = _with_divisor(panoptic, stored_divisor, divisor, where)
  image.set_shape([None, None, 3])
  panoptic.set_shape([None, None])
  return {
      common.IMAGE: image,
      common.IMAGE_NAME: name,
      common.ORIGINAL_HEIGHT: parsed[IMAGE_HEIGHT],
      common.ORIGINAL_WIDTH: parsed[IMAGE_WIDTH],
      common.GT_PANOPTIC: panoptic,
      LABEL_DIVISOR: divisor,
      IGNORE_LABEL: parsed[PANOPTIC_IGNORE_LABEL],
      HAS_LABEL: parsed[HAS_LABEL],
  }
