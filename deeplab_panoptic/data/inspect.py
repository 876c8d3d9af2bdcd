r"""Writes what TFRecords hold back out in COCO panoptic format, with overlays.

  python -m deeplab_panoptic.data.inspect --tfrecord='/data/coco/val-*.tfrecord' \
      --output_dir=/tmp/inspect [--dataset_info_json=F | --dataset=NAME] [--max_images=N]

Output, in ``--output_dir``:

* ``panoptic.json``: COCO panoptic ``images`` (id, file_name, height, width),
  ``annotations`` (``segments_info`` with ``id``, ``category_id`` -- the
  dataset's own ids --, ``iscrowd``, ``area``, ``bbox``) and ``categories``;
* ``panoptic/<image stem>.png``: the COCO panoptic PNG of each image (segment
  id ``R + 256 G + 256^2 B``, 0 for void), named after the source image;
* ``overlays/<image stem>.png``: the image with each segment tinted in its
  colour, segment boundaries in white, crowd regions hatched and void left
  dark.

One segment per stuff class, per thing instance and per crowd region (a thing
class with instance 0). The image id is the file stem as an integer when it is
one (COCO's ``000000139.jpg`` -> 139), else the stem.

The description (classes and their dataset ids) is read from
``dataset_info.json`` beside the shards (the converter writes it), or from
``--dataset_info_json``, or the registered ``--dataset``. Files are written to
temporary names and renamed; ``panoptic.json`` last.
"""

import io
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from absl import app
from absl import flags
import numpy as np
from PIL import Image
import tensorflow as tf

from deeplab_panoptic.data import coco_panoptic
from deeplab_panoptic.data import dataset_info as dataset_info_lib
from deeplab_panoptic.data import reader
from deeplab_panoptic.data import tfrecord

PANOPTIC_JSON = "panoptic.json"
PANOPTIC_DIR = "panoptic"
OVERLAY_DIR = "overlays"
# Weight of the segment colour in the overlay.
_OVERLAY_ALPHA = 0.5
# Largest random step away from the class colour for a further instance.
_COLOR_SPREAD = 24


def find_dataset_info(files: List[str], dataset_info_json: Optional[str] = None,
                      dataset: Optional[str] = None) -> dataset_info_lib.DatasetInfo:
  """The description for ``files``: an explicit file or name, else the one beside them.

  Raises:
    ValueError: when none is found.
  """
  if dataset_info_json:
    return dataset_info_lib.from_coco_categories(dataset or "dataset", dataset_info_json)
  if dataset:
    return dataset_info_lib.dataset_info(name=dataset)
  folders = sorted({os.path.dirname(f) for f in files})
  for folder in folders:
    path = os.path.join(folder, "dataset_info.json")
    if os.path.exists(path):
      name = coco_panoptic.read_json(path).get("name", "dataset")
      return dataset_info_lib.from_coco_categories(name, path)
  raise ValueError(f"No dataset_info.json beside {folders}: set --dataset_info_json "
                   "or --dataset.")


def _feature_bytes(example: tf.train.Example, key: str) -> bytes:
  values = example.features.feature[key].bytes_list.value
  return values[0] if values else b""


def _feature_int(example: tf.train.Example, key: str) -> int:
  return int(example.features.feature[key].int64_list.value[0])


def decode_example(example: tf.train.Example, where: str
                   ) -> Tuple[str, np.ndarray, Optional[np.ndarray], int, int]:
  """Decodes a record in numpy.

  Returns:
    (file name, uint8 [H, W, 3] image, int32 [H, W] label or None when the
    record has none, label divisor, ignore label).

  Raises:
    ValueError: naming the record when its image or label does not decode.
  """
  name = _feature_bytes(example, tfrecord.IMAGE_FILENAME).decode()
  try:
    image = np.asarray(Image.open(io.BytesIO(
        _feature_bytes(example, tfrecord.IMAGE_ENCODED))).convert("RGB"))
    label_bytes = _feature_bytes(example, tfrecord.PANOPTIC_ENCODED)
    label = tfrecord.decode_panoptic_png(label_bytes) if label_bytes else None
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
    raise ValueError(f"{where}: record of {name!r} does not decode: {e}") from e
  if label is not None and label.shape != image.shape[:2]:
    raise ValueError(f"{where}: record of {name!r}: label {label.shape} and image "
                     f"{image.shape[:2]} differ in size.")
  return (name, image, label, _feature_int(example, tfrecord.PANOPTIC_LABEL_DIVISOR),
          _feature_int(example, tfrecord.PANOPTIC_IGNORE_LABEL))


def segment_color_ids(info: dataset_info_lib.DatasetInfo, labels: np.ndarray,
                      category_ids: np.ndarray) -> np.ndarray:
  """A distinct colour per segment, near its class colour, as its segment id.

  Stuff and the first instance of a class use the class colour; further
  instances are shifted by a deterministic offset (seeded by the label) until
  the colour is unused and not black (the VOID id). So the COCO panoptic PNG is
  also a picture.

  Args:
    info: the dataset description (colours by dataset category id).
    labels: int [S] canonical panoptic labels of the segments.
    category_ids: int [S] their dataset category ids.

  Returns:
    int64 [S] segment ids ``R + 256 G + 256**2 B``.
  """
  color_of = {c.dataset_id: c.color for c in info.classes}
  used = {(0, 0, 0)}
  ids = []
  for value, category_id in zip(np.asarray(labels).tolist(),
                                np.asarray(category_ids).tolist()):
    base = np.array(color_of[category_id], np.int64)
    color = tuple(int(c) for c in base)
    rng = np.random.default_rng(value)
    spread = _COLOR_SPREAD
    while color in used:
      color = tuple(int(c) for c in np.clip(base + rng.integers(-spread, spread + 1, 3),
                                            0, 255))
      spread = min(spread + 4, 255)
    used.add(color)
    ids.append(color[0] + 256 * color[1] + 65536 * color[2])
  return np.array(ids, np.int64)


def coco_segments(panoptic: np.ndarray, info: dataset_info_lib.DatasetInfo
                  ) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
  """A ground-truth or predicted label map as coloured COCO segments.

  One segment per stuff class, per thing instance and per crowd region (a
  thing class with instance 0); void is none (``coco_panoptic.panoptic_to_coco``
  with ``is_thing``, ids from :func:`segment_color_ids`).

  Returns:
    uint32 [H, W] segment ids (0: void) and the segments_info list.

  Raises:
    ValueError: if the map holds a class outside the description.
  """
  return coco_panoptic.panoptic_to_coco(
      panoptic, info.label_divisor, info.ignore_label, info.dataset_id_from_train_id(),
      is_thing=info.is_thing,
      segment_ids=lambda labels, categories: segment_color_ids(info, labels, categories))


def overlay(image: np.ndarray, ids: np.ndarray, segments_info: List[Dict[str, Any]]
            ) -> np.ndarray:
  """Tints each segment in its colour, draws boundaries white and hatches crowd.

  Args:
    image: uint8 [H, W, 3].
    ids: int [H, W] segment ids whose colour (``id_to_rgb``) is the tint; 0 is
      void, left dark.
    segments_info: the segments (``id``, ``iscrowd``).

  Returns:
    uint8 [H, W, 3].
  """
  out = image.astype(np.float32) * (1 - _OVERLAY_ALPHA)
  height, width = image.shape[:2]
  hatch = ((np.arange(height)[:, None] + np.arange(width)[None, :]) // 4) % 2 == 0
  for segment in segments_info:
    mask = ids == segment["id"]
    tint = coco_panoptic.id_to_rgb(segment["id"]).astype(np.float32) * _OVERLAY_ALPHA
    region = mask & hatch if segment["iscrowd"] else mask
    out[region] += tint
    out[mask & ~region] += image[mask & ~region].astype(np.float32) * _OVERLAY_ALPHA
  # Boundaries: the segment id differs from a neighbour's.
  edge = np.zeros(ids.shape, bool)
  edge[:-1] |= ids[:-1] != ids[1:]
  edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
  out[edge] = 255.0
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def label_segments(image: np.ndarray, ids: np.ndarray,
                   segments_info: List[Dict[str, Any]],
                   info: dataset_info_lib.DatasetInfo, min_area: int = 64) -> np.ndarray:
  """Writes each segment's class name on it (white on a dark box).

  The name sits at the segment's pixel nearest to its centroid, so it lies on
  the segment even when the segment is not convex. Segments smaller than
  ``min_area`` pixels get no name, to keep the picture readable.

  Args:
    image: uint8 [H, W, 3], typically from :func:`overlay`.
    ids: int [H, W] segment ids.
    segments_info: the segments (``id``, ``category_id``, ``iscrowd``).
    info: the dataset description (names by dataset category id).
    min_area: smallest named segment, in pixels.

  Returns:
    uint8 [H, W, 3].
  """
  from PIL import ImageDraw, ImageFont  # pylint: disable=g-import-not-at-top
  name_of = {c.dataset_id: c.name for c in info.classes}
  picture = Image.fromarray(image)
  draw = ImageDraw.Draw(picture)
  font = ImageFont.load_default()
  height, width = image.shape[:2]
  for segment in segments_info:
    ys, xs = np.nonzero(ids == segment["id"])
    if ys.size < min_area:
      continue
    nearest = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
    text = name_of[segment["category_id"]] + (" (crowd)" if segment["iscrowd"] else "")
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    text_w, text_h = right - left, bottom - top
    x = int(np.clip(xs[nearest] - text_w // 2, 0, max(width - text_w - 2, 0)))
    y = int(np.clip(ys[nearest] - text_h // 2, 0, max(height - text_h - 2, 0)))
    draw.rectangle((x, y, x + text_w + 2, y + text_h + 2), fill=(0, 0, 0))
    draw.text((x + 1 - left, y + 1 - top), text, fill=(255, 255, 255), font=font)
  return np.asarray(picture)


def panoptic_overlay(image: np.ndarray, panoptic: np.ndarray,
                     info: dataset_info_lib.DatasetInfo, class_names: bool = True
                     ) -> np.ndarray:
  """The overlay picture of a panoptic label map (shared by inspect and predict).

  Segments tinted in their colours, segment (hence instance) outlines in white,
  crowd regions hatched, void left dark, and optionally the class names.

  Args:
    image: uint8 [H, W, 3].
    panoptic: int [H, W], ``train_id * label_divisor + instance``.
    info: the dataset description.
    class_names: write each segment's class name on it.

  Returns:
    uint8 [H, W, 3].

  Raises:
    ValueError: if the map holds a class outside the description.
  """
  ids, segments_info = coco_segments(panoptic, info)
  picture = overlay(image, ids, segments_info)
  return label_segments(picture, ids, segments_info, info) if class_names else picture


def _record_label(example: tf.train.Example, path: str,
                  info: dataset_info_lib.DatasetInfo) -> Tuple[str, np.ndarray, np.ndarray]:
  """(file name, image, label: void when the record has none) of a checked record.

  Raises:
    ValueError: naming the file and image when the record does not decode or
      uses another label divisor / ignore label than ``info``.
  """
  name, image, label, divisor, ignore = decode_example(example, path)
  if (divisor, ignore) != (info.label_divisor, info.ignore_label):
    raise ValueError(f"{path}: record of {name!r} has label divisor {divisor} and "
                     f"ignore label {ignore}; the description {info.name!r} has "
                     f"{info.label_divisor} and {info.ignore_label}.")
  if label is None:
    label = np.full(image.shape[:2], info.ignore_label * info.label_divisor, np.int32)
  return name, image, label


def inspect(file_pattern: str, output_dir: str,
            info: Optional[dataset_info_lib.DatasetInfo] = None,
            max_images: Optional[int] = None, overlays: bool = True) -> dict:
  """Writes the records of ``file_pattern`` in COCO panoptic format.

  Args:
    file_pattern: glob(s) of TFRecord files (comma-separated allowed).
    output_dir: the output folder (created).
    info: the description; default: ``find_dataset_info``.
    max_images: stop after this many images.
    overlays: also write the overlay images.

  Returns:
    The COCO panoptic dict written to ``panoptic.json``.

  Raises:
    ValueError: naming the file / record on a bad input.
  """
  files = reader.list_files(file_pattern, "inspect")
  if info is None:
    info = find_dataset_info(files)
  writer = coco_panoptic.CocoPanopticWriter(
      output_dir, info.dataset_id_from_train_id(), info.label_divisor, info.ignore_label,
      categories=info.coco_categories(), png_folder=PANOPTIC_DIR, json_name=PANOPTIC_JSON)
  for index, (path, example) in enumerate(tfrecord.read_examples(files)):
    if max_images is not None and index >= max_images:
      break
    name, image, label = _record_label(example, path, info)
    try:
      ids, segments_info = coco_segments(label, info)
      annotation = writer.add_segments(name, ids, segments_info)
    except ValueError as e:
      raise ValueError(f"{path}: record of {name!r}: {e}") from e
    if overlays:
      coco_panoptic.write_png(os.path.join(output_dir, OVERLAY_DIR, annotation["file_name"]),
                              overlay(image, ids, segments_info))
  writer.close()
  return writer.as_json()


FLAGS = flags.FLAGS


# (definer, name, default, help) of each command-line flag.
_FLAG_TABLE = (
    (flags.DEFINE_string, "tfrecord", None, "Glob(s) of TFRecord files, comma-separated."),
    (flags.DEFINE_string, "output_dir", None, "Output folder."),
    (flags.DEFINE_string, "dataset_info_json", None,
     "Dataset description (default: dataset_info.json beside the shards)."),
    (flags.DEFINE_string, "dataset", None, "A registered dataset name (instead of a file)."),
    (flags.DEFINE_integer, "max_images", None, "Write at most this many images."),
    (flags.DEFINE_boolean, "overlays", True, "Write overlay images."),
)


def define_flags() -> None:
  for define, name, default, text in _FLAG_TABLE:
    define(name, default, text)


def main(argv: List[str]) -> Optional[int]:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    files = reader.list_files(FLAGS.tfrecord, "inspect")
    info = find_dataset_info(files, FLAGS.dataset_info_json, FLAGS.dataset)
    result = inspect(FLAGS.tfrecord, FLAGS.output_dir, info, FLAGS.max_images,
                     FLAGS.overlays)
  except ValueError as e:
    print(f"inspect: error: {e}", file=sys.stderr)
    return 1
  num_segments = sum(len(a["segments_info"]) for a in result["annotations"])
  print(f"Wrote {len(result['images'])} images ({num_segments} segments) to "
        f"{FLAGS.output_dir}: {PANOPTIC_JSON}, {PANOPTIC_DIR}/, "
        f"{OVERLAY_DIR + '/' if FLAGS.overlays else ''}")
  return 0


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["tfrecord", "output_dir"])
  app.run(main)
