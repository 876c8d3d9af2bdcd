"""Reading Cityscapes gtFine panoptic labels (numpy), with cityscapesscripts' labels.

Layout (the official download)::

  <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png

``*_gtFine_instanceIds.png`` is a 16-bit PNG: a pixel holds the label id
(``cityscapesscripts.helpers.labels``) for stuff and for thing *groups* (regions
covering several objects, which the official panoptic conversion marks
``iscrowd``), and ``label_id * 1000 + k`` for the k-th instance of a thing.
Label ids whose ``trainId`` is 255 or -1 (unlabelled, ego vehicle, ..., license
plate) become void.
"""

import glob
import os
from typing import List, Tuple

import numpy as np

from deeplab_panoptic.data import coco_panoptic
from deeplab_panoptic.data import dataset_info as dataset_info_lib

FormatError = coco_panoptic.FormatError

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_instanceIds.png"
# Cityscapes' own packing of instance ids in *_instanceIds.png.
CITYSCAPES_INSTANCE_DIVISOR = 1000


def list_pairs(root: str, split: str) -> List[Tuple[str, str]]:
  """(image, instanceIds label) paths of a split, sorted by image path.

  Raises:
    FormatError: if the split has no image, or an image has no label.
  """
  image_root = os.path.join(root, "leftImg8bit", split)
  images = sorted(glob.glob(os.path.join(image_root, "*", "*" + IMAGE_SUFFIX)))
  if not images:
    raise FormatError(f"{image_root}: no *{IMAGE_SUFFIX} image found (expected "
                      "<cityscapes_root>/leftImg8bit/<split>/<city>/).")
  pairs = []
  for image in images:
    city = os.path.basename(os.path.dirname(image))
    stem = os.path.basename(image)[:-len(IMAGE_SUFFIX)]
    label = os.path.join(root, "gtFine", split, city, stem + LABEL_SUFFIX)
    if not os.path.isfile(label):
      raise FormatError(f"{label}: file not found (the label of {image}).")
    pairs.append((image, label))
  return pairs


def _label_table(info: dataset_info_lib.DatasetInfo) -> np.ndarray:
  """Train id per Cityscapes label id (ignore_label for void, -1 for unknown ids)."""
  try:
    from cityscapesscripts.helpers import labels as cs_labels  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError("Reading Cityscapes labels needs the package cityscapesscripts: "
                     "pip install 'deeplab_panoptic[cityscapes]'.") from e
  train_id = info.train_id_from_dataset_id()
  table = np.full(CITYSCAPES_INSTANCE_DIVISOR, -1, np.int64)
  for label in cs_labels.labels:
    if 0 <= label.id < CITYSCAPES_INSTANCE_DIVISOR:
      table[label.id] = train_id.get(label.id, info.ignore_label)
  return table


def read_label(path: str, info: dataset_info_lib.DatasetInfo) -> np.ndarray:
  """Reads ``*_gtFine_instanceIds.png`` into the library's format.

  Thing instances are renumbered 1, 2, ... per class in increasing
  Cityscapes id (Cityscapes numbers them from 0); thing groups become crowd
  (instance 0); void label ids become ``ignore_label * label_divisor``.

  Returns:
    int32 [H, W].

  Raises:
    FormatError: naming the file if it is unreadable or holds an unknown label id.
  """
  image = coco_panoptic.load_image(path, "PNG")
  if image.mode not in ("I", "I;16", "I;16B", "L"):
    raise FormatError(f"{path}: expected a 16-bit instanceIds PNG, got mode "
                      f"{image.mode!r}.")
  ids = np.asarray(image, dtype=np.int64)
  table = _label_table(info)
  present, inverse = np.unique(ids, return_inverse=True)
  values = []
  next_instance = {}
  for value in present.tolist():
    label_id = value // CITYSCAPES_INSTANCE_DIVISOR if value >= CITYSCAPES_INSTANCE_DIVISOR \
        else value
    cls = int(table[label_id]) if 0 <= label_id < len(table) else -1
    if cls < 0:
      raise FormatError(f"{path}: unknown Cityscapes label id {label_id} (pixel value "
                        f"{value}).")
    if cls == info.ignore_label:
      values.append(info.ignore_label * info.label_divisor)
      continue
    instance = 0
    if info.classes[cls].is_thing and value >= CITYSCAPES_INSTANCE_DIVISOR:
      instance = next_instance.get(cls, 0) + 1
      next_instance[cls] = instance
      if instance >= info.label_divisor:
        raise FormatError(f"{path}: more than {info.label_divisor - 1} instances of "
                          f"{info.classes[cls].name!r}.")
    values.append(cls * info.label_divisor + instance)
  return np.array(values, np.int64)[inverse].reshape(ids.shape).astype(np.int32)
