"""Tests of the TFRecord schema (make_example / decode_record)."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab_panoptic import common
from deeplab_panoptic.data import dataset_info
from deeplab_panoptic.data import shapes
from deeplab_panoptic.data import tfrecord
from tests.conftest import COCO_SAMPLE_DIR as COCO_SAMPLE

INFO = dataset_info.SHAPES


def _record(image, panoptic, name="img.png", label_divisor=256, ignore_label=255,
            image_format="png", image_bytes=None):
  if image_bytes is None:
    image_bytes = tfrecord.encode_png(image)
  return tfrecord.make_example(image_bytes, image_format, name, image.shape[0],
                               image.shape[1], panoptic, label_divisor,
                               ignore_label).SerializeToString()


def test_round_trip_shapes_example():
  image, panoptic = shapes.generate_example(0, 1)
  decoded = tfrecord.decode_record(tf.constant(_record(image, panoptic, "dir/a.png")),
                                   "test", 256, 255)
  np.testing.assert_array_equal(decoded[common.IMAGE].numpy(), image)
  np.testing.assert_array_equal(decoded[common.GT_PANOPTIC].numpy(), panoptic)
  assert decoded[common.GT_PANOPTIC].dtype == tf.int32
  assert decoded[common.IMAGE_NAME].numpy() == b"a.png"  # Base name only.
  assert decoded[common.ORIGINAL_HEIGHT].numpy() == 128
  assert decoded[common.ORIGINAL_WIDTH].numpy() == 128
  assert decoded[tfrecord.LABEL_DIVISOR].numpy() == 256
  assert decoded[tfrecord.IGNORE_LABEL].numpy() == 255
  assert decoded[tfrecord.HAS_LABEL].numpy()


def test_round_trip_uses_all_three_channels():
  rng = np.random.default_rng(0)
  panoptic = rng.integers(0, tfrecord.MAX_PANOPTIC_VALUE + 1, size=(7, 11)).astype(np.int32)
  panoptic[0, 0] = tfrecord.MAX_PANOPTIC_VALUE
  panoptic[0, 1] = 0
  image = rng.integers(0, 256, size=(7, 11, 3)).astype(np.uint8)
  record = _record(image, panoptic, label_divisor=1000, ignore_label=16000)
  # The stored PNG follows the COCO packing R + 256 G + 256^2 B.
  example = tf.train.Example.FromString(record)
  png = example.features.feature[tfrecord.PANOPTIC_ENCODED].bytes_list.value[0]
  rgb = np.asarray(Image.open(io.BytesIO(png)), np.int64)
  np.testing.assert_array_equal(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2],
                                panoptic)
  np.testing.assert_array_equal(tfrecord.decode_panoptic_png(png), panoptic)
  decoded = tfrecord.decode_record(tf.constant(record))
  np.testing.assert_array_equal(decoded[common.GT_PANOPTIC].numpy(), panoptic)
  np.testing.assert_array_equal(decoded[common.IMAGE].numpy(), image)


def test_jpeg_image_and_unlabelled_record():
  image, _ = shapes.generate_example(0, 2)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=95)
  record = _record(image, None, image_format="jpg", image_bytes=buf.getvalue())
  decoded = tfrecord.decode_record(tf.constant(record))
  assert decoded[common.IMAGE].shape == (128, 128, 3)
  assert np.abs(decoded[common.IMAGE].numpy().astype(int) - image).mean() < 5
  assert not decoded[tfrecord.HAS_LABEL].numpy()
  np.testing.assert_array_equal(decoded[common.GT_PANOPTIC].numpy(),
                                np.full((128, 128), 255 * 256))


def test_make_example_rejects_bad_input():
  image = np.zeros((4, 5, 3), np.uint8)
  with pytest.raises(ValueError, match="bad.png.*shape"):
    _record(image, np.zeros((5, 4), np.int32), name="bad.png")
  with pytest.raises(ValueError, match="bad.png.*values"):
    _record(image, np.full((4, 5), -1, np.int32), name="bad.png")
  with pytest.raises(ValueError, match="format"):
    _record(image, np.zeros((4, 5), np.int32), image_format="gif")


def _decode_error(record, **kwargs):
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    tfrecord.decode_record(tf.constant(record), "shard-7.tfrecord", **kwargs)
  return e.value.message


def test_corrupt_records_name_the_image_and_source():
  image, panoptic = shapes.generate_example(0, 3)
  example = tf.train.Example.FromString(_record(image, panoptic, "broken.png"))
  example.features.feature[tfrecord.PANOPTIC_ENCODED].bytes_list.value[0] = b"garbage"
  message = _decode_error(example.SerializeToString())
  assert "broken.png" in message and "shard-7.tfrecord" in message
  assert "image/panoptic/encoded is not a PNG" in message

  example = tf.train.Example.FromString(_record(image, panoptic, "broken.png"))
  example.features.feature[tfrecord.IMAGE_ENCODED].bytes_list.value[0] = b"\0" * 100
  message = _decode_error(example.SerializeToString())
  assert "broken.png" in message and "neither a PNG nor a JPEG" in message

  example = tf.train.Example.FromString(_record(image, panoptic, "broken.png"))
  example.features.feature[tfrecord.IMAGE_HEIGHT].int64_list.value[0] = 100
  message = _decode_error(example.SerializeToString())
  assert "broken.png" in message and "stores size" in message

  # Instance ids that do not fit a smaller label divisor.
  message = _decode_error(_record(image, panoptic, "broken.png"), label_divisor=2)
  assert "broken.png" in message and "do not fit the dataset's label divisor" in message


def test_records_are_re_encoded_to_the_requested_label_divisor():
  # Stored at 256, read at 1000 (Panoptic SegFormer's 400 queries on COCO): the
  # same semantic / instance pairs, void included.
  image, panoptic = shapes.generate_example(0, 3)
  panoptic = panoptic.copy()
  panoptic[:4] = 255 * 256  # a void strip
  stored = _record(image, panoptic, label_divisor=256)
  as_stored = tfrecord.decode_record(tf.constant(stored))
  read = tfrecord.decode_record(tf.constant(stored), label_divisor=1000)
  want = (panoptic // 256) * 1000 + panoptic % 256
  assert (panoptic % 256 > 0).any() and (panoptic // 256 == 255).any()
  np.testing.assert_array_equal(as_stored[common.GT_PANOPTIC].numpy(), panoptic)
  np.testing.assert_array_equal(read[common.GT_PANOPTIC].numpy(), want)
  assert int(read[tfrecord.LABEL_DIVISOR]) == 1000
  assert int(as_stored[tfrecord.LABEL_DIVISOR]) == 256


def test_round_trip_real_coco_sample():
  with open(os.path.join(COCO_SAMPLE, "panoptic_examples.json"), encoding="utf-8") as f:
    annotations = json.load(f)
  info = dataset_info.from_coco_categories(
      "coco", os.path.join(COCO_SAMPLE, "panoptic_coco_categories.json"),
      label_divisor=1000, ignore_label=200)
  train_id = info.train_id_from_dataset_id()
  for ann in annotations["annotations"]:
    rgb = np.asarray(Image.open(os.path.join(COCO_SAMPLE, "panoptic_examples",
                                             ann["file_name"])).convert("RGB"), np.int64)
    segment = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    panoptic = np.full(segment.shape, info.ignore_label * info.label_divisor, np.int32)
    next_instance = {}
    for seg in ann["segments_info"]:
      cls = train_id[seg["category_id"]]
      if info.classes[cls].is_thing and not seg["iscrowd"]:
        next_instance[cls] = inst = next_instance.get(cls, 0) + 1
      else:
        inst = 0
      panoptic[segment == seg["id"]] = cls * info.label_divisor + inst
    image_name = ann["file_name"].replace(".png", ".jpg")
    with open(os.path.join(COCO_SAMPLE, "input_images", image_name), "rb") as f:
      jpeg = f.read()
    height, width = panoptic.shape
    record = tfrecord.make_example(jpeg, "jpeg", image_name, height, width, panoptic,
                                   info.label_divisor, info.ignore_label)
    decoded = tfrecord.decode_record(tf.constant(record.SerializeToString()), "coco",
                                     info.label_divisor, info.ignore_label)
    np.testing.assert_array_equal(decoded[common.GT_PANOPTIC].numpy(), panoptic)
    assert decoded[common.IMAGE].shape == (height, width, 3)
    assert decoded[common.IMAGE_NAME].numpy().decode() == image_name
    # Void (200 * 1000) needs the third (blue) channel.
    assert panoptic.max() > 65535
