"""Reading a dataset in COCO panoptic format for the converter (numpy).

A COCO panoptic dataset is a JSON file (``images``, ``categories``, one
``annotations`` entry per image with its PNG's ``file_name`` and
``segments_info``), a folder of segment-id PNGs and a folder of images; the
format itself (PNG packing, JSON, label-map conversion) is
:mod:`deeplab_panoptic.data.coco_panoptic`.

:func:`load_annotations` reads and checks the JSON (everything that can be
checked without opening the images); :func:`read_example` reads one image and
builds its label in the library's format (``train_id * label_divisor +
instance``, see docs/data_format.md). Every error is a :class:`FormatError`
that names the file (and the segment).
"""

import dataclasses
import io
import os
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from deeplab_panoptic.data import coco_panoptic
from deeplab_panoptic.data import dataset_info as dataset_info_lib

FormatError = coco_panoptic.FormatError
Segment = coco_panoptic.Segment
read_json = coco_panoptic.read_json
read_id_png = coco_panoptic.read_id_png


@dataclasses.dataclass(frozen=True)
class ImageEntry:
  """One annotated image: its files and segments."""
  image_file: str          # path of the image
  label_file: str          # path of the panoptic PNG
  file_name: str           # the image's file name as in the JSON ``images``
  height: Optional[int]
  width: Optional[int]
  segments: Tuple[Segment, ...]


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
        segment = Segment.from_json(seg)
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
  if data.startswith(coco_panoptic.PNG_MAGIC):
    return data, "png", height, width
  if data.startswith(coco_panoptic.JPEG_MAGIC) and image.mode in ("RGB", "L"):
    return data, "jpeg", height, width
  buf = io.BytesIO()
  image.convert("RGB").save(buf, format="PNG")
  return buf.getvalue(), "png", height, width


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
  panoptic = coco_panoptic.coco_to_panoptic(
      ids, entry.segments, info.train_id_from_dataset_id(), info.is_thing,
      info.label_divisor, info.ignore_label, where=entry.label_file,
      class_names=[c.name for c in info.classes])
  return image_bytes, image_format, panoptic
