"""Reading and writing the COCO panoptic format (JSON + PNG), in numpy.

COCO panoptic stores one RGB PNG per image whose pixels hold a segment id
``R + 256 * G + 256**2 * B`` (0: unlabelled), and one JSON file with the
``images``, the ``categories`` and one ``annotations`` entry per image: the
PNG's ``file_name`` and its ``segments_info`` (``id``, ``category_id``,
``iscrowd``, ``area``, ``bbox``).

:func:`load_annotations` reads and checks the JSON (everything that can be
checked without opening the images); :func:`read_example` reads one image and
builds its label in the library's format (``train_id * label_divisor +
instance``, see docs/data_format.md); :func:`segments_from_panoptic` and
:func:`panoptic_png_from_segments` go the other way for the inspector. Every
error is a :class:`FormatError` that names the file (and the segment).
"""

import dataclasses
import io
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from deeplab_panoptic.data import dataset_info as dataset_info_lib

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


class FormatError(ValueError):
  """A dataset file is missing, unreadable or inconsistent (the message names it)."""


@dataclasses.dataclass(frozen=True)
class Segment:
  """One ``segments_info`` entry."""
  id: int
  category_id: int
  iscrowd: bool


@dataclasses.dataclass(frozen=True)
class ImageEntry:
  """One annotated image: its files and segments."""
  image_file: str          # path of the image
  label_file: str          # path of the panoptic PNG
  file_name: str           # the image's file name as in the JSON ``images``
  height: Optional[int]
  width: Optional[int]
  segments: Tuple[Segment, ...]


def read_json(path: str) -> dict:
  """Reads a JSON file; a missing or malformed file is a FormatError naming it."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError as e:
    raise FormatError(f"{path}: file not found.") from e
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise FormatError(f"{path}: cannot read JSON: {e}") from e


def load_annotations(panoptic_json: str, panoptic_dir: str, image_dir: str,
                     info: dataset_info_lib.DatasetInfo,
                     check_files: bool = True) -> List[ImageEntry]:
  """Reads a COCO panoptic JSON and checks it against the dataset description.

  Checks: the file parses and has ``images`` and a non-empty ``annotations``
  list; every annotation names a known image, a PNG that exists and segments
  with unique ids and known category ids; every image file exists.

  Args:
    panoptic_json: the COCO panoptic annotation file.
    panoptic_dir: folder of the panoptic PNGs.
    image_dir: folder of the images.
    info: the dataset description (its ``dataset_id`` values are the category
      ids the JSON may use).
    check_files: check that the image and PNG files exist.

  Returns:
    One entry per annotation, in the JSON's order.

  Raises:
    FormatError: naming the JSON (or the missing file) and the image / segment.
  """
  data = read_json(panoptic_json)
  if not isinstance(data, dict):
    raise FormatError(f"{panoptic_json}: expected a JSON object with 'images' and "
                      "'annotations'.")
  annotations = data.get("annotations")
  if not isinstance(annotations, list) or not annotations:
    raise FormatError(f"{panoptic_json}: the 'annotations' list is missing or empty.")
  images = {}
  for image in data.get("images", []):
    try:
      images[image["id"]] = image
    except (KeyError, TypeError) as e:
      raise FormatError(f"{panoptic_json}: an 'images' entry lacks 'id'.") from e
  known = info.train_id_from_dataset_id()
  entries = []
  for index, ann in enumerate(annotations):
    try:
      label_name = ann["file_name"]
      image_id = ann["image_id"]
      segments_info = ann["segments_info"]
    except (KeyError, TypeError) as e:
      raise FormatError(f"{panoptic_json}: annotation #{index} lacks the field "
                        f"{e}.") from e
    where = f"{panoptic_json}: annotation of {label_name}"
    if image_id not in images:
      raise FormatError(f"{where}: image_id {image_id!r} is not in 'images'.")
    image = images[image_id]
    if "file_name" not in image:
      raise FormatError(f"{panoptic_json}: image {image_id!r} lacks 'file_name'.")
    segments = []
    seen = set()
    for seg in segments_info:
      try:
        segment = Segment(int(seg["id"]), int(seg["category_id"]),
                          bool(seg.get("iscrowd", 0)))
      except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{where}: malformed segment {seg!r}: {e}") from e
      if segment.category_id not in known:
        raise FormatError(f"{where}: segment {segment.id} has the unknown category id "
                          f"{segment.category_id} (dataset {info.name!r} knows "
                          f"{len(known)} categories).")
      if segment.id in seen:
        raise FormatError(f"{where}: segment id {segment.id} appears twice.")
      if segment.id == 0:
        raise FormatError(f"{where}: segment id 0 is reserved for unlabelled pixels.")
      seen.add(segment.id)
      segments.append(segment)
    entry = ImageEntry(
        image_file=os.path.join(image_dir, image["file_name"]),
        label_file=os.path.join(panoptic_dir, label_name),
        file_name=os.path.basename(image["file_name"]),
        height=image.get("height"), width=image.get("width"),
        segments=tuple(segments))
    if check_files:
      for path in (entry.image_file, entry.label_file):
        if not os.path.isfile(path):
          raise FormatError(f"{path}: file not found (listed in {panoptic_json}).")
    entries.append(entry)
  return entries


def read_image_file(path: str) -> Tuple[bytes, str, int, int]:
  """Reads an image file and checks that it decodes completely.

  PNG and RGB / greyscale JPEG bytes are kept as they are (no re-encoding
  loss); anything else (other formats, CMYK JPEG) is re-encoded as PNG, which
  every TensorFlow decoder reads.

  Returns:
    (bytes, format ``png`` | ``jpeg``, height, width).

  Raises:
    FormatError: if the file is missing, unreadable or truncated.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise FormatError(f"{path}: cannot read the image: {e}") from e
  try:
    image = Image.open(io.BytesIO(data))
    image.load()  # Decodes every pixel: a truncated file fails here.
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
    raise FormatError(f"{path}: unreadable or truncated image: {e}") from e
  width, height = image.size
  if data.startswith(_PNG_MAGIC):
    return data, "png", height, width
  if data.startswith(_JPEG_MAGIC) and image.mode in ("RGB", "L"):
    return data, "jpeg", height, width
  buf = io.BytesIO()
  image.convert("RGB").save(buf, format="PNG")
  return buf.getvalue(), "png", height, width


def read_id_png(path: str) -> np.ndarray:
  """Reads a COCO panoptic PNG as segment ids.

  Returns:
    int64 [H, W], ``R + 256 * G + 256**2 * B``.

  Raises:
    FormatError: if the file is missing, unreadable, truncated or not RGB.
  """
  try:
    image = Image.open(path)
    image.load()
  except FileNotFoundError as e:
    raise FormatError(f"{path}: file not found.") from e
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
    raise FormatError(f"{path}: unreadable or truncated PNG: {e}") from e
  if image.format != "PNG":
    raise FormatError(f"{path}: not a PNG file ({image.format}).")
  rgb = np.asarray(image.convert("RGB"), dtype=np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def panoptic_from_segments(ids: np.ndarray, segments: Sequence[Segment],
                           info: dataset_info_lib.DatasetInfo, where: str
                           ) -> np.ndarray:
  """Builds the library's label from a segment-id map and its segments.

  Stuff segments get instance 0 (two segments of one stuff class merge); thing
  segments get instances 1, 2, ... per class in ``segments`` order; crowd
  thing segments get instance 0 (crowd); id 0 becomes void.

  Args:
    ids: int [H, W] segment ids (0: unlabelled).
    segments: the segments of the image.
    info: the dataset description.
    where: the label file, for messages.

  Returns:
    int32 [H, W], ``train_id * label_divisor + instance``, void
    ``ignore_label * label_divisor``.

  Raises:
    FormatError: if a segment is absent from the PNG, the PNG holds an id
      that no segment lists, or a class has too many instances.
  """
  train_id = info.train_id_from_dataset_id()
  present, inverse = np.unique(ids, return_inverse=True)
  listed = {s.id: s for s in segments}
  absent = sorted(set(listed) - set(present.tolist()))
  if absent:
    raise FormatError(f"{where}: segment {absent[0]} of the JSON is absent from the "
                      f"PNG ({len(absent)} segment(s) absent: {absent[:10]}).")
  unknown = sorted(set(present.tolist()) - set(listed) - {0})
  if unknown:
    raise FormatError(f"{where}: the PNG holds segment id {unknown[0]} that the JSON "
                      f"does not list ({len(unknown)} unlisted id(s): {unknown[:10]}).")
  value_of = {0: info.ignore_label * info.label_divisor}
  next_instance: Dict[int, int] = {}
  for segment in segments:
    cls = train_id[segment.category_id]
    if not info.classes[cls].is_thing or segment.iscrowd:
      instance = 0
    else:
      instance = next_instance.get(cls, 0) + 1
      next_instance[cls] = instance
      if instance >= info.label_divisor:
        raise FormatError(f"{where}: more than {info.label_divisor - 1} instances of "
                          f"class {info.classes[cls].name!r} (segment {segment.id}); "
                          "raise the dataset's label_divisor.")
    value_of[segment.id] = cls * info.label_divisor + instance
  values = np.array([value_of[i] for i in present.tolist()], np.int64)
  return values[inverse].reshape(ids.shape).astype(np.int32)


def read_example(entry: ImageEntry, info: dataset_info_lib.DatasetInfo
                 ) -> Tuple[bytes, str, np.ndarray]:
  """Reads one image and its label.

  Returns:
    (image bytes, image format, int32 [H, W] label in the library's format).

  Raises:
    FormatError: naming the file on a missing / unreadable / truncated image or
      PNG, sizes that differ, or segments that do not match.
  """
  image_bytes, image_format, height, width = read_image_file(entry.image_file)
  if entry.height is not None and entry.width is not None and (
      (entry.height, entry.width) != (height, width)):
    raise FormatError(f"{entry.image_file}: the image is {height}x{width}, the JSON "
                      f"says {entry.height}x{entry.width}.")
  ids = read_id_png(entry.label_file)
  if ids.shape != (height, width):
    raise FormatError(f"{entry.label_file}: the label is {ids.shape[0]}x{ids.shape[1]} "
                      f"but its image {entry.image_file} is {height}x{width}.")
  panoptic = panoptic_from_segments(ids, entry.segments, info, entry.label_file)
  return image_bytes, image_format, panoptic


def segments_from_panoptic(panoptic: np.ndarray, info: dataset_info_lib.DatasetInfo
                           ) -> List[Tuple[int, int, bool, np.ndarray]]:
  """Splits a label in the library's format into COCO segments.

  One segment per stuff class, per thing instance and per crowd region (a
  thing class with instance 0); void is no segment.

  Args:
    panoptic: int [H, W], ``train_id * label_divisor + instance``.
    info: the dataset description.

  Returns:
    ``(panoptic value, dataset category id, iscrowd, bool [H, W] mask)`` per
    segment, in increasing panoptic value.

  Raises:
    ValueError: if the label holds a class outside the description.
  """
  segments = []
  for value in np.unique(panoptic).tolist():
    cls, instance = divmod(value, info.label_divisor)
    if cls == info.ignore_label:
      continue
    if not 0 <= cls < info.num_classes:
      raise ValueError(f"label value {value} has class {cls}, outside [0, "
                       f"{info.num_classes}) and not the ignore label.")
    is_thing = info.classes[cls].is_thing
    mask = panoptic == value
    if not is_thing:
      # All pixels of a stuff class are one segment, whatever their instance.
      if segments and segments[-1][1] == info.classes[cls].dataset_id and not segments[-1][2]:
        segments[-1] = (segments[-1][0], segments[-1][1], False, segments[-1][3] | mask)
        continue
      segments.append((cls * info.label_divisor, info.classes[cls].dataset_id, False, mask))
    else:
      segments.append((value, info.classes[cls].dataset_id, instance == 0, mask))
  return segments


def bbox_of(mask: np.ndarray) -> List[int]:
  """COCO ``[x, y, width, height]`` of a non-empty bool mask."""
  ys, xs = np.nonzero(mask)
  return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
          int(ys.max() - ys.min() + 1)]


def segment_colors(info: dataset_info_lib.DatasetInfo,
                   segments: Sequence[Tuple[int, int, bool, np.ndarray]]
                   ) -> List[Tuple[int, int, int]]:
  """A distinct RGB colour per segment, near its class colour.

  Stuff and the first instance of a class use the class colour; further
  instances are shifted by a deterministic offset until the colour is unused
  (and not black, the unlabelled id). The colour is also the segment id of the
  COCO panoptic PNG.
  """
  color_of = {c.dataset_id: c.color for c in info.classes}
  used = {(0, 0, 0)}
  colors = []
  for value, category_id, _, _ in segments:
    base = np.array(color_of[category_id], np.int64)
    color = tuple(int(c) for c in base)
    rng = np.random.default_rng(value)
    spread = 24
    while color in used:
      color = tuple(int(c) for c in np.clip(base + rng.integers(-spread, spread + 1, 3),
                                            0, 255))
      spread = min(spread + 4, 255)
    used.add(color)
    colors.append(color)
  return colors


def segment_id_of_color(color: Sequence[int]) -> int:
  """COCO segment id of an RGB colour: ``R + 256 * G + 256**2 * B``."""
  return int(color[0]) + 256 * int(color[1]) + 65536 * int(color[2])
