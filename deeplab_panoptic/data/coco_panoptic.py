"""The COCO panoptic codec: segment-id PNGs, their JSON, and this library's label maps.

COCO panoptic stores one RGB PNG per image whose pixels hold a segment id
``R + 256 * G + 256**2 * B`` (0: unlabelled / VOID), and one JSON file with the
``images``, the ``categories`` and one ``annotations`` entry per image: the
PNG's ``file_name`` and its ``segments_info`` (``id``, ``category_id`` -- the
dataset's own ids --, ``iscrowd``, ``area``, ``bbox``). This library's label
maps are ``train_id * label_divisor + instance`` (docs/data_format.md); the
TFRecord label PNG uses the same RGB packing for them.

Every reader and writer of that format goes through this module: the
converter (:mod:`data.coco_format`), the inspector, the evaluator and
``predict`` (:class:`CocoPanopticWriter`) and ``coco_pq``:

* PNG: :func:`rgb_to_id` / :func:`id_to_rgb`, :func:`encode_png`,
  :func:`encode_id_png` / :func:`decode_id_png`, :func:`read_id_png` /
  :func:`write_id_png`, :func:`write_png`;
* JSON: :func:`read_json` / :func:`write_json`;
* label maps: :func:`panoptic_to_coco` / :func:`coco_to_panoptic`.

Writes are atomic (``utils.files``). Errors are :class:`FormatError` naming the
file (and the segment). numpy and Pillow only: no TensorFlow, no gin, so
``coco_pq`` and ``predict`` start fast.
"""

import dataclasses
import io
import json
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt
from PIL import Image

from deeplab_panoptic.utils import files

# Segment ids are 24-bit: three 8-bit channels.
MAX_SEGMENT_ID = (1 << 24) - 1
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
# zlib level of every PNG written (Pillow's default).
_PNG_COMPRESS_LEVEL = 6

# (canonical panoptic labels int64 [S], dataset category ids int64 [S]) ->
# segment ids [S], distinct, in [1, MAX_SEGMENT_ID].
SegmentIdFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class FormatError(ValueError):
  """A dataset file is missing, unreadable or inconsistent (the message names it)."""


@dataclasses.dataclass(frozen=True)
class Segment:
  """One ``segments_info`` entry, as far as decoding needs it."""
  id: int
  category_id: int
  iscrowd: bool

  @classmethod
  def from_json(cls, entry: Mapping[str, Any]) -> "Segment":
    """From a ``segments_info`` dict (``iscrowd`` defaults to 0).

    Raises:
      KeyError, TypeError, ValueError: on a malformed entry.
    """
    return cls(int(entry["id"]), int(entry["category_id"]), bool(entry.get("iscrowd", 0)))


# ---------------------------------------------------------------- PNG
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


def encode_png(array: np.ndarray) -> bytes:
  """Encodes a uint8 [H, W, 3] (or [H, W]) array as PNG bytes."""
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(array)).save(
      buf, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
  return buf.getvalue()


def encode_id_png(ids: npt.ArrayLike) -> bytes:
  """Segment ids (int [H, W] in [0, 2**24)) as the bytes of an RGB id PNG."""
  return encode_png(id_to_rgb(ids))


def _ids_of_image(image: Image.Image, where: str) -> np.ndarray:
  """uint32 [H, W] segment ids of an opened PNG (RGB, RGBA or palette)."""
  if image.format != "PNG":
    raise FormatError(f"{where}: not a PNG file ({image.format}).")
  if image.mode == "P":  # Palette entries are real colours.
    image = image.convert("RGB")
  elif image.mode not in ("RGB", "RGBA"):
    raise FormatError(f"{where}: a COCO panoptic PNG must be RGB, got mode {image.mode!r}.")
  image.load()  # Decodes every pixel: a truncated file fails here.
  width, height = image.size
  # Pillow holds RGB(A) pixels as 4 bytes; the "RGBX" packer copies them out as
  # is, so one little-endian uint32 per pixel is R + 256 G + 65536 B + X.
  raw = image.tobytes("raw", "RGBX")
  return np.frombuffer(raw, "<u4").reshape(height, width) & np.uint32(0xFFFFFF)


def decode_id_png(data: bytes, where: str = "PNG bytes") -> np.ndarray:
  """Inverse of :func:`encode_id_png`.

  Returns:
    uint32 [H, W] segment ids.

  Raises:
    FormatError: naming ``where`` if the bytes are no readable RGB PNG.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      return _ids_of_image(image, where)
  except FormatError:
    raise
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
    raise FormatError(f"{where}: unreadable or truncated PNG: {e}") from e


def load_image(path: str, what: str = "image") -> Image.Image:
  """Opens an image file and decodes every pixel (a truncated file fails here).

  Raises:
    FormatError: naming the file if it is missing, unreadable or truncated.
  """
  try:
    image = Image.open(path)
    image.load()
  except FileNotFoundError as e:
    raise FormatError(f"{path}: file not found.") from e
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
    raise FormatError(f"{path}: unreadable or truncated {what}: {e}") from e
  return image


def read_id_png(path: str) -> np.ndarray:
  """Reads a COCO panoptic PNG as segment ids.

  Returns:
    uint32 [H, W], ``R + 256 * G + 256**2 * B``.

  Raises:
    FormatError: if the file is missing, unreadable, truncated or not an RGB PNG.
  """
  return _ids_of_image(load_image(path, "PNG"), path)


def write_png(path: str, array: np.ndarray) -> None:
  """Writes a uint8 [H, W, 3] picture as a PNG, atomically."""
  files.write_bytes_atomic(path, encode_png(array))


def write_id_png(path: str, ids: npt.ArrayLike) -> None:
  """Writes segment ids (int [H, W] in [0, 2**24)) as a COCO panoptic PNG, atomically."""
  files.write_bytes_atomic(path, encode_id_png(ids))


# ---------------------------------------------------------------- JSON
def read_json(path: str) -> Any:
  """Reads a JSON file.

  Raises:
    FormatError: naming the file if it is missing or malformed.
  """
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError as e:
    raise FormatError(f"{path}: file not found.") from e
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise FormatError(f"{path}: cannot read JSON: {e}") from e


def write_json(path: str, data: Any) -> None:
  """Writes COCO JSON (one line, as the COCO files are), atomically."""
  files.write_json_atomic(path, data, indent=None)


# ---------------------------------------------------------------- label maps
def segment_boxes(index: np.ndarray, num_segments: int) -> np.ndarray:
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


def _thing_labels(labels: np.ndarray, classes: np.ndarray, is_void: np.ndarray,
                  is_thing: Sequence[bool]) -> np.ndarray:
  """bool [U]: which of the distinct labels ``labels`` (classes ``classes``) are things.

  Raises:
    ValueError: on a class outside ``is_thing`` that is not void.
  """
  table = np.asarray(list(is_thing), bool)
  known = (classes >= 0) & (classes < table.size)
  bad = ~known & ~is_void
  if bad.any():
    k = int(np.flatnonzero(bad)[0])
    raise ValueError(f"panoptic_to_coco: panoptic label {int(labels[k])} has class "
                     f"{int(classes[k])}, outside [0, {table.size}) and not the "
                     "ignore label.")
  return np.where(known, table[np.where(known, classes, 0)], False)


def panoptic_to_coco(panoptic: npt.ArrayLike, label_divisor: int, ignore_label: int,
                     dataset_id_from_train_id: Mapping[int, int],
                     is_thing: Optional[Sequence[bool]] = None,
                     segment_ids: Optional[SegmentIdFn] = None
                     ) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
  """A label map in this library's encoding as COCO segment ids + segments_info.

  One segment per distinct label (VOID, the ``ignore_label`` class, is none),
  in ascending label order. With ``is_thing`` (ground truth): each stuff class
  is one segment whatever its instance ids, and a thing label with instance 0
  is crowd (``iscrowd`` 1); without (predictions), ``iscrowd`` is 0.

  Args:
    panoptic: int [H, W], ``train_id * label_divisor + instance``.
    label_divisor: the label divisor.
    ignore_label: the void class.
    dataset_id_from_train_id: the dataset's category id of each train id
      (``DatasetInfo.dataset_id_from_train_id()``).
    is_thing: per train id, or None (see above).
    segment_ids: the segment ids, from the segments' canonical labels and
      category ids; default 1, 2, ... (never VOID, whatever the category ids).

  Returns:
    ids uint32 [H, W] (0: VOID) and the segments_info list (``id``,
    ``category_id``, ``iscrowd``, ``area``, ``bbox``), one entry per segment.

  Raises:
    ValueError: on a label whose class has no dataset category id.
  """
  panoptic = np.asarray(panoptic).astype(np.int64, copy=False)
  if panoptic.ndim != 2:
    raise ValueError(f"panoptic_to_coco: expected a [H, W] label map, got {panoptic.shape}.")
  labels, inverse = np.unique(panoptic, return_inverse=True)
  inverse = inverse.reshape(panoptic.shape)
  classes = labels // label_divisor
  is_void = classes == ignore_label
  crowd = np.zeros(labels.shape, bool)
  if is_thing is not None:
    # Each stuff class is one segment: its instance ids are dropped.
    thing = _thing_labels(labels, classes, is_void, is_thing)
    merged = np.where(thing | is_void, labels, classes * label_divisor)
    labels, merge = np.unique(merged, return_inverse=True)
    inverse = merge.reshape(-1)[inverse]
    classes = labels // label_divisor
    is_void = classes == ignore_label
    crowd = _thing_labels(labels, classes, is_void, is_thing) & (labels % label_divisor == 0)
  areas = np.bincount(inverse.ravel(), minlength=labels.size)
  real = np.flatnonzero(~is_void)
  for k in real:
    if int(classes[k]) not in dataset_id_from_train_id:
      raise ValueError(f"panoptic_to_coco: panoptic label {int(labels[k])} has class "
                       f"{int(classes[k])}, which has no dataset category id.")
  category_ids = np.array([dataset_id_from_train_id[int(classes[k])] for k in real], np.int64)
  ids_of_real = (np.arange(1, real.size + 1) if segment_ids is None
                 else np.asarray(segment_ids(labels[real], category_ids), np.int64))
  lookup = np.zeros(labels.size, np.uint32)
  lookup[real] = ids_of_real
  ids = lookup[inverse]
  boxes = segment_boxes(inverse, labels.size)
  segments = [{"id": int(ids_of_real[j]), "category_id": int(category_ids[j]),
               "iscrowd": int(crowd[k]), "area": int(areas[k]),
               "bbox": [int(v) for v in boxes[k]]} for j, k in enumerate(real)]
  return ids, segments


def coco_to_panoptic(ids: npt.ArrayLike,
                     segments: Sequence[Union[Segment, Mapping[str, Any]]],
                     train_id_from_dataset_id: Mapping[int, int], is_thing: Sequence[bool],
                     label_divisor: int, ignore_label: int, where: str = "segment ids",
                     class_names: Optional[Sequence[str]] = None) -> np.ndarray:
  """COCO segment ids + segments as a label map in this library's encoding.

  Stuff segments get instance 0 (two segments of one stuff class merge); thing
  segments get instances 1, 2, ... per class in ``segments`` order; crowd
  thing segments get instance 0 (crowd); id 0 becomes VOID.

  Args:
    ids: int [H, W] segment ids (0: VOID).
    segments: the image's segments (:class:`Segment` or ``segments_info`` dicts).
    train_id_from_dataset_id: train id of each dataset category id.
    is_thing: per train id.
    label_divisor: the label divisor.
    ignore_label: the void class.
    where: the label file, for messages.
    class_names: per train id, for messages.

  Returns:
    int32 [H, W], ``train_id * label_divisor + instance``, VOID
    ``ignore_label * label_divisor``.

  Raises:
    FormatError: if a segment is absent from the map, the map holds an id that
      no segment lists, a category id is unknown, or a class has too many
      instances for ``label_divisor``.
  """
  ids = np.asarray(ids)
  segments = [s if isinstance(s, Segment) else Segment.from_json(s) for s in segments]
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
  value_of = {0: ignore_label * label_divisor}
  next_instance: Dict[int, int] = {}
  for segment in segments:
    if segment.category_id not in train_id_from_dataset_id:
      raise FormatError(f"{where}: segment {segment.id} has the unknown category id "
                        f"{segment.category_id}.")
    cls = train_id_from_dataset_id[segment.category_id]
    instance = 0
    if is_thing[cls] and not segment.iscrowd:
      instance = next_instance.get(cls, 0) + 1
      next_instance[cls] = instance
      if instance >= label_divisor:
        name = repr(class_names[cls]) if class_names is not None else cls
        raise FormatError(f"{where}: more than {label_divisor - 1} instances of class "
                          f"{name} (segment {segment.id}); raise the dataset's "
                          "label_divisor.")
    value_of[segment.id] = cls * label_divisor + instance
  values = np.array([value_of[i] for i in present.tolist()], np.int64)
  return values[inverse].reshape(ids.shape).astype(np.int32)


def image_id_from_name(image_name: str) -> Union[int, str]:
  """COCO image id from a file name: ``000000142238.jpg`` -> 142238; else the stem."""
  stem = os.path.splitext(os.path.basename(image_name))[0]
  return int(stem) if stem.isdigit() else stem


# ---------------------------------------------------------------- writer
class CocoPanopticWriter:
  """Writes label maps (predictions or ground truth) in COCO panoptic format.

  One PNG per image under ``<output_dir>/<png_folder>/`` (named after the
  image, extension ``.png``) and, on :meth:`close`, ``<output_dir>/<json_name>``
  with ``images`` (``id``, ``file_name``, ``height``, ``width``),
  ``annotations`` (``image_id``, ``file_name``, ``segments_info``) and the
  dataset's ``categories``. Every file is written atomically, the JSON last.

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
    self._images: List[Dict[str, Any]] = []
    self._annotations: List[Dict[str, Any]] = []
    self._file_names: Dict[str, str] = {}
    os.makedirs(self.png_dir, exist_ok=True)

  @property
  def annotations(self) -> List[Dict[str, Any]]:
    """The annotations added so far."""
    return list(self._annotations)

  def add(self, image_name: str, panoptic: npt.ArrayLike) -> Dict[str, Any]:
    """Writes the PNG of one label map and records its annotation.

    Args:
      image_name: the image's file name (its stem names the PNG; a numeric stem
        is the COCO image id).
      panoptic: int [H, W] label map at the image's original size (see
        :func:`panoptic_to_coco`, without ``is_thing``).

    Returns:
      The annotation (``image_id``, ``file_name``, ``segments_info``); changes
      to it (e.g. a ``score`` per segment) are written by :meth:`close`.

    Raises:
      ValueError: on an empty or repeated image name.
    """
    ids, segments = panoptic_to_coco(panoptic, self._label_divisor, self._ignore_label,
                                     self._dataset_ids)
    return self.add_segments(image_name, ids, segments)

  def add_segments(self, image_name: str, ids: np.ndarray,
                   segments_info: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Like :meth:`add`, from segment ids and segments_info already made.

    Args:
      image_name: as for :meth:`add`.
      ids: int [H, W] segment ids (e.g. from :func:`panoptic_to_coco`).
      segments_info: their segments.

    Returns:
      The annotation.

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
    write_id_png(os.path.join(self.png_dir, file_name), ids)
    image_id = image_id_from_name(image_name)
    self._images.append({"id": image_id, "file_name": os.path.basename(image_name),
                         "height": int(ids.shape[0]), "width": int(ids.shape[1])})
    annotation = {"image_id": image_id, "file_name": file_name,
                  "segments_info": segments_info}
    self._annotations.append(annotation)
    return annotation

  def as_json(self) -> Dict[str, Any]:
    """The COCO panoptic dict :meth:`close` writes."""
    data: Dict[str, Any] = {"images": list(self._images), "annotations": self.annotations}
    if self._categories is not None:
      data["categories"] = self._categories
    return data

  def close(self) -> str:
    """Writes the JSON file; returns its path."""
    write_json(self.json_path, self.as_json())
    return self.json_path
