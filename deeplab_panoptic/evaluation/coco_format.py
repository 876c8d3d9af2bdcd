"""COCO panoptic format: PNG segment ids, segments_info, and a prediction writer.

A COCO panoptic annotation is a PNG whose pixel colour encodes a segment id,
``id = R + 256 * G + 256**2 * B`` (0 is VOID / unlabelled), plus a JSON entry per
image with ``segments_info`` (``id``, ``category_id``, ``iscrowd``, ``area``,
``bbox``) using the dataset's own category ids. This module converts between
that format and this library's label maps (``train_id * label_divisor +
instance``), and writes predictions that the COCO and Cityscapes evaluation
servers, ``coco_pq`` and panopticapi accept.

This module imports neither TensorFlow nor gin, so ``coco_pq`` starts fast.
"""

import json
import os
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt
from PIL import Image

# Segment ids are 24-bit: three 8-bit channels.
MAX_SEGMENT_ID = (1 << 24) - 1


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
  """COCO panoptic colours to segment ids.

  Args:
    rgb: uint8 [H, W, C] with C >= 3 (an alpha channel is ignored).

  Returns:
    uint32 [H, W], ``R + 256 G + 256**2 B``.
  """
  rgb = np.asarray(rgb)
  height, width = rgb.shape[:2]
  # Little-endian RGB0 bytes read as one uint32 are exactly R + 256 G + 65536 B,
  # one copy instead of three multiplies and two adds over the image.
  packed = np.zeros((height, width, 4), np.uint8)
  packed[..., :3] = rgb[..., :3]
  return packed.view("<u4")[..., 0]


def id_to_rgb(ids: npt.ArrayLike) -> np.ndarray:
  """Segment ids to COCO panoptic colours.

  Args:
    ids: int [H, W] in [0, 2**24).

  Returns:
    uint8 [H, W, 3].
  """
  ids = np.asarray(ids).astype("<u4", copy=False)
  return np.ascontiguousarray(ids[..., np.newaxis].view(np.uint8)[..., :3])


def read_segment_ids(path: str) -> np.ndarray:
  """Reads a COCO panoptic PNG as segment ids.

  Args:
    path: the PNG file.

  Returns:
    uint32 [H, W] segment ids.

  Raises:
    ValueError: if the file cannot be read or is not an RGB(A) image.
  """
  try:
    with Image.open(path) as image:
      if image.mode not in ("RGB", "RGBA"):
        raise ValueError(f"{path}: a COCO panoptic PNG must be RGB, got mode {image.mode!r}.")
      image.load()
      width, height = image.size
      # Pillow holds RGB(A) pixels as 4 bytes; the "RGBX" packer copies them out
      # as is, so one little-endian uint32 per pixel is R + 256 G + 65536 B + X.
      raw = image.tobytes("raw", "RGBX")
  except (OSError, SyntaxError) as e:
    raise ValueError(f"Cannot read the panoptic PNG {path}: {e}") from e
  return np.frombuffer(raw, "<u4").reshape(height, width) & np.uint32(0xFFFFFF)


def _atomic_target(path: str) -> str:
  """A temporary file name next to ``path`` (same file system, so rename is atomic)."""
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
  os.close(fd)
  return tmp


def write_segment_ids(path: str, ids: npt.ArrayLike) -> None:
  """Writes segment ids as a COCO panoptic PNG, through a temporary file.

  Args:
    path: the PNG file to write.
    ids: int [H, W] segment ids in [0, 2**24).
  """
  tmp = _atomic_target(path)
  try:
    Image.fromarray(id_to_rgb(ids), mode="RGB").save(tmp, format="PNG")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str, data: Any) -> None:
  """Writes JSON through a temporary file and a rename."""
  tmp = _atomic_target(path)
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(data, f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _bboxes(index: np.ndarray, num_segments: int) -> np.ndarray:
  """COCO ``[x, y, width, height]`` boxes of the segments of an index map.

  Args:
    index: int [H, W], segment index per pixel in [0, num_segments).
    num_segments: S.

  Returns:
    int64 [S, 4] (zeros for segments without pixels).
  """
  height, width = index.shape
  # Which rows / columns each segment touches: two O(pixels) bincounts instead
  # of one np.nonzero over the image per segment.
  rows = np.bincount((index * height + np.arange(height)[:, np.newaxis]).ravel(),
                     minlength=num_segments * height).reshape(num_segments, height) > 0
  cols = np.bincount((index * width + np.arange(width)[np.newaxis, :]).ravel(),
                     minlength=num_segments * width).reshape(num_segments, width) > 0
  boxes = np.zeros((num_segments, 4), np.int64)
  has = rows.any(axis=1)
  y0 = np.argmax(rows, axis=1)
  y1 = height - np.argmax(rows[:, ::-1], axis=1)
  x0 = np.argmax(cols, axis=1)
  x1 = width - np.argmax(cols[:, ::-1], axis=1)
  boxes[has] = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)[has]
  return boxes


def panoptic_to_coco(panoptic: npt.ArrayLike, label_divisor: int, ignore_label: int,
                     dataset_id_from_train_id: Mapping[int, int]
                     ) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
  """A label map in this library's encoding as COCO segment ids + segments_info.

  Segment ids are 1, 2, ... in ascending order of the panoptic labels (0 stays
  VOID), so they never collide with VOID whatever the dataset's category ids.

  Args:
    panoptic: int [H, W], ``train_id * label_divisor + instance``; labels whose
      class is ``ignore_label`` are VOID.
    label_divisor: the label divisor.
    ignore_label: the void class.
    dataset_id_from_train_id: the dataset's category id of each train id
      (``DatasetInfo.dataset_id_from_train_id()``).

  Returns:
    ids uint32 [H, W] and the segments_info list (``id``, ``category_id``,
    ``iscrowd`` 0, ``area``, ``bbox``), one entry per segment present.

  Raises:
    ValueError: on a label whose class has no dataset category id.
  """
  panoptic = np.asarray(panoptic).astype(np.int64, copy=False)
  if panoptic.ndim != 2:
    raise ValueError(f"panoptic_to_coco: expected a [H, W] label map, got {panoptic.shape}.")
  labels, inverse, areas = np.unique(panoptic, return_inverse=True, return_counts=True)
  inverse = inverse.reshape(panoptic.shape)
  classes = labels // label_divisor
  is_void = classes == ignore_label
  # Index 0 is VOID; real segments 1..S in label order.
  segment_id = np.cumsum(~is_void) * ~is_void
  ids = segment_id[inverse].astype(np.uint32)
  boxes = _bboxes(inverse, labels.size)
  segments = []
  for k in np.flatnonzero(~is_void):
    train_id = int(classes[k])
    if train_id not in dataset_id_from_train_id:
      raise ValueError(f"panoptic_to_coco: panoptic label {int(labels[k])} has class "
                       f"{train_id}, which has no dataset category id.")
    segments.append({"id": int(segment_id[k]),
                     "category_id": int(dataset_id_from_train_id[train_id]),
                     "iscrowd": 0, "area": int(areas[k]),
                     "bbox": [int(v) for v in boxes[k]]})
  return ids, segments


def coco_to_panoptic(ids: npt.ArrayLike, segments_info: Sequence[Mapping[str, Any]],
                     train_id_from_dataset_id: Mapping[int, int], is_thing: Sequence[bool],
                     label_divisor: int, ignore_label: int) -> np.ndarray:
  """COCO segment ids + segments_info as a label map in this library's encoding.

  Thing segments get instances 1, 2, ... per class in segments_info order; crowd
  thing segments and stuff segments get instance 0 (see ``common``).

  Args:
    ids: int [H, W] segment ids (0 = VOID).
    segments_info: the image's segments.
    train_id_from_dataset_id: train id of each dataset category id.
    is_thing: per train id.
    label_divisor: the label divisor.
    ignore_label: the void class.

  Returns:
    int32 [H, W] panoptic labels (VOID and ids without segments_info:
    ``ignore_label * label_divisor``).
  """
  ids = np.asarray(ids)
  lookup_ids = [0]
  lookup_labels = [ignore_label * label_divisor]
  next_instance: Dict[int, int] = {}
  for seg in segments_info:
    train_id = train_id_from_dataset_id[int(seg["category_id"])]
    instance = 0
    if is_thing[train_id] and not seg.get("iscrowd", 0):
      instance = next_instance.get(train_id, 0) + 1
      next_instance[train_id] = instance
    lookup_ids.append(int(seg["id"]))
    lookup_labels.append(train_id * label_divisor + instance)
  order = np.argsort(lookup_ids)
  sorted_ids = np.asarray(lookup_ids, np.int64)[order]
  sorted_labels = np.asarray(lookup_labels, np.int64)[order]
  pos = np.clip(np.searchsorted(sorted_ids, ids), 0, sorted_ids.size - 1)
  known = sorted_ids[pos] == ids
  return np.where(known, sorted_labels[pos], ignore_label * label_divisor).astype(np.int32)


def image_id_from_name(image_name: str) -> Union[int, str]:
  """COCO image id from a file name: ``000000142238.jpg`` -> 142238; else the stem."""
  stem = os.path.splitext(os.path.basename(image_name))[0]
  return int(stem) if stem.isdigit() else stem


class CocoPanopticWriter:
  """Writes panoptic predictions in COCO panoptic format.

  One PNG per image under ``<output_dir>/<png_folder>/`` (named after the
  image, extension ``.png``) and, on :meth:`close`, ``<output_dir>/<json_name>``
  with ``annotations`` (``image_id``, ``file_name``, ``segments_info``) and the
  dataset's ``categories``. Every file is written to a temporary name and
  renamed, so an interrupted run leaves no half file.

  Example::

      writer = CocoPanopticWriter(out, info.dataset_id_from_train_id(),
                                  info.label_divisor, info.ignore_label,
                                  categories=info.coco_categories())
      writer.add("000000142238.jpg", panoptic)   # int [H, W] at original size
      writer.close()
  """

  def __init__(self, output_dir: str, dataset_id_from_train_id: Mapping[int, int],
               label_divisor: int, ignore_label: int,
               categories: Optional[List[Dict[str, Any]]] = None,
               png_folder: str = "panoptic", json_name: str = "panoptic.json"):
    """Initialises the writer.

    Args:
      output_dir: the folder that receives the PNG folder and the JSON file.
      dataset_id_from_train_id: dataset category id of each train id.
      label_divisor: the label divisor of the label maps passed to :meth:`add`.
      ignore_label: their void class.
      categories: optional COCO ``categories`` list written into the JSON.
      png_folder: sub-folder for the PNGs.
      json_name: the JSON file name.
    """
    self.output_dir = output_dir
    self.png_dir = os.path.join(output_dir, png_folder)
    self.json_path = os.path.join(output_dir, json_name)
    self._dataset_ids = dict(dataset_id_from_train_id)
    self._label_divisor = int(label_divisor)
    self._ignore_label = int(ignore_label)
    self._categories = categories
    self._annotations: List[Dict[str, Any]] = []
    self._file_names: Dict[str, str] = {}
    os.makedirs(self.png_dir, exist_ok=True)

  @property
  def annotations(self) -> List[Dict[str, Any]]:
    """The annotations added so far."""
    return list(self._annotations)

  def add(self, image_name: str, panoptic: npt.ArrayLike) -> Dict[str, Any]:
    """Writes the PNG of one image and records its annotation.

    Args:
      image_name: the image's file name (its stem names the PNG; a numeric stem
        is the COCO image id).
      panoptic: int [H, W] prediction at the image's original size.

    Returns:
      The annotation (``image_id``, ``file_name``, ``segments_info``).

    Raises:
      ValueError: on an empty or repeated image name.
    """
    if not image_name:
      raise ValueError("CocoPanopticWriter.add: empty image name.")
    file_name = os.path.splitext(os.path.basename(image_name))[0] + ".png"
    if file_name in self._file_names:
      raise ValueError(f"CocoPanopticWriter.add: {image_name!r} and "
                       f"{self._file_names[file_name]!r} both map to {file_name}.")
    self._file_names[file_name] = image_name
    ids, segments = panoptic_to_coco(panoptic, self._label_divisor, self._ignore_label,
                                     self._dataset_ids)
    write_segment_ids(os.path.join(self.png_dir, file_name), ids)
    annotation = {"image_id": image_id_from_name(image_name), "file_name": file_name,
                  "segments_info": segments}
    self._annotations.append(annotation)
    return annotation

  def close(self) -> str:
    """Writes the JSON file; returns its path."""
    data: Dict[str, Any] = {"annotations": self._annotations}
    if self._categories is not None:
      data["categories"] = self._categories
    write_json(self.json_path, data)
    return self.json_path
