"""Dataset descriptions: classes, names, colours, thing/stuff, label divisor, ignore label.

A dataset is described by a :class:`DatasetInfo`. Gin files select one with
``dataset_info.name = 'shapes'`` or build a custom one; nothing in the library
branches on a dataset's name, every consumer reads the fields.
"""

import dataclasses
import json
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import gin

from deeplab_panoptic.data import coco_categories
from deeplab_panoptic.utils import data_paths


@dataclasses.dataclass(frozen=True)
class ClassInfo:
  """One semantic class.

  Attributes:
    name: human-readable name.
    is_thing: whether the class has countable instances.
    color: RGB colour used in overlays.
    dataset_id: the category id the dataset's own files use (e.g. COCO's 1..200).
  """
  name: str
  is_thing: bool
  color: Tuple[int, int, int]
  dataset_id: int


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the library needs to know about a panoptic dataset.

  Train ids are the positions in ``classes`` (0 .. num_classes - 1).

  Attributes:
    name: dataset name (only used in messages and file names).
    classes: the classes, in train-id order.
    label_divisor: panoptic label = semantic * label_divisor + instance.
    ignore_label: semantic label of void pixels; must be >= num_classes.
  """
  name: str
  classes: Tuple[ClassInfo, ...]
  label_divisor: int
  ignore_label: int

  def __post_init__(self):
    if self.ignore_label < len(self.classes):
      raise ValueError(
          f"Dataset {self.name!r}: ignore_label {self.ignore_label} must be >= "
          f"the number of classes ({len(self.classes)}).")
    if self.label_divisor <= 0:
      raise ValueError(f"Dataset {self.name!r}: label_divisor must be positive.")

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  @property
  def thing_ids(self) -> List[int]:
    return [i for i, c in enumerate(self.classes) if c.is_thing]

  @property
  def stuff_ids(self) -> List[int]:
    return [i for i, c in enumerate(self.classes) if not c.is_thing]

  @property
  def is_thing(self) -> List[bool]:
    return [c.is_thing for c in self.classes]

  @property
  def class_names(self) -> List[str]:
    return [c.name for c in self.classes]

  @property
  def colors(self) -> List[Tuple[int, int, int]]:
    return [c.color for c in self.classes]

  def train_id_from_dataset_id(self) -> Dict[int, int]:
    return {c.dataset_id: i for i, c in enumerate(self.classes)}

  def dataset_id_from_train_id(self) -> Dict[int, int]:
    return {i: c.dataset_id for i, c in enumerate(self.classes)}

  def coco_categories(self) -> List[dict]:
    """The classes as a COCO panoptic ``categories`` list."""
    return [{"id": c.dataset_id, "name": c.name, "isthing": int(c.is_thing),
             "color": list(c.color), "supercategory": c.name}
            for c in self.classes]


SHAPES = DatasetInfo(
    name="shapes",
    classes=(
        ClassInfo("circle", True, (220, 60, 60), 1),
        ClassInfo("square", True, (60, 180, 75), 2),
        ClassInfo("triangle", True, (60, 100, 220), 3),
        ClassInfo("sky", False, (135, 206, 235), 4),
        ClassInfo("ground", False, (160, 110, 60), 5),
    ),
    label_divisor=256,
    ignore_label=255,
)



def _coco() -> DatasetInfo:
  """COCO 2017 panoptic: 133 classes (80 things, 53 stuff), divisor 256 (deeplab2)."""
  return DatasetInfo(
      name="coco",
      classes=tuple(ClassInfo(name, is_thing, color, dataset_id)
                    for dataset_id, name, is_thing, color
                    in coco_categories.COCO_PANOPTIC_CATEGORIES),
      label_divisor=256, ignore_label=255)


def _cityscapes() -> DatasetInfo:
  """Cityscapes: the 19 train classes (8 things, 11 stuff) of cityscapesscripts.

  Train ids, names, colours, thing/stuff and dataset ids (the gtFine label ids)
  all come from ``cityscapesscripts.helpers.labels``; label divisor 1000 as in
  the official panoptic ids.
  """
  try:
    from cityscapesscripts.helpers import labels as cs_labels  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError("The cityscapes dataset description needs the package "
                     "cityscapesscripts: pip install 'deeplab_panoptic[cityscapes]'.") from e
  train_labels = sorted((l for l in cs_labels.labels if 0 <= l.trainId < 255),
                        key=lambda l: l.trainId)
  if [l.trainId for l in train_labels] != list(range(len(train_labels))):
    raise ValueError("cityscapesscripts' train ids are not contiguous.")
  return DatasetInfo(
      name="cityscapes",
      classes=tuple(ClassInfo(l.name, bool(l.hasInstances), tuple(l.color), l.id)
                    for l in train_labels),
      label_divisor=1000, ignore_label=255)


@dataclasses.dataclass(frozen=True)
class CategoriesSpec:
  """A dataset whose classes are read from its own COCO categories JSON.

  Used for datasets whose class table ships with the data (e.g. ADE20K
  panoptic): the description is built at conversion / configuration time from
  the file, and checked against the expected counts.

  Attributes:
    num_classes: expected number of categories (None: any).
    num_things: expected number of thing categories (None: any).
    label_divisor: the dataset's label divisor.
    ignore_label: the dataset's ignore label.
  """
  num_classes: Optional[int]
  num_things: Optional[int]
  label_divisor: int
  ignore_label: int


# name -> a DatasetInfo, or a function building one (so that optional packages
# are imported only when that dataset is used).
_REGISTRY: Dict[str, Union[DatasetInfo, Callable[[], DatasetInfo]]] = {
    "shapes": SHAPES, "coco": _coco, "cityscapes": _cityscapes}
# name -> the spec of a dataset described by its own categories file.
_CATEGORIES_SPECS: Dict[str, CategoriesSpec] = {
    # ADE20K panoptic (the 150-class SceneParsing benchmark in COCO panoptic
    # format): 100 things, 50 stuff; divisor 1000 as in deeplab2.
    "ade20k": CategoriesSpec(num_classes=150, num_things=100, label_divisor=1000,
                             ignore_label=255),
}


def register(info: Union[DatasetInfo, Callable[[], DatasetInfo]],
             name: Optional[str] = None) -> None:
  """Adds a dataset description (or a function building it) to the registry.

  Args:
    info: the description, or a no-argument function returning it.
    name: registry name; default ``info.name`` (required for a function).
  """
  if name is None:
    if not isinstance(info, DatasetInfo):
      raise ValueError("register: a name is needed to register a function.")
    name = info.name
  _REGISTRY[name] = info


def register_categories_spec(name: str, spec: CategoriesSpec) -> None:
  """Registers a dataset whose classes come from its own categories JSON."""
  _CATEGORIES_SPECS[name] = spec


def registered_names() -> List[str]:
  """Names accepted by :func:`dataset_info` (with ``categories_json`` for some)."""
  return sorted(set(_REGISTRY) | set(_CATEGORIES_SPECS))


def _read_categories_file(categories_json: str) -> Tuple[list, dict]:
  try:
    with open(categories_json, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"Cannot read categories from {categories_json}: {e}") from e
  if isinstance(data, dict):
    if "categories" not in data:
      raise ValueError(f"{categories_json}: no 'categories' list.")
    return data["categories"], data
  if not isinstance(data, list):
    raise ValueError(f"{categories_json}: expected a list of categories or a dict "
                     "with a 'categories' list.")
  return data, {}


def from_categories_list(name: str, categories: Sequence[dict], label_divisor: int = 256,
                         ignore_label: int = 255, source: str = "categories"
                         ) -> DatasetInfo:
  """Builds a description from COCO ``categories`` entries (train ids in list order).

  Args:
    name: dataset name.
    categories: dicts with ``id``, ``name``, ``isthing`` and optionally ``color``.
    label_divisor: the label divisor.
    ignore_label: the void class.
    source: where the list comes from, for messages.

  Raises:
    ValueError: on a malformed entry, a duplicate id, or an empty list.
  """
  if not categories:
    raise ValueError(f"{source}: the categories list is empty.")
  classes = []
  seen = set()
  for i, cat in enumerate(categories):
    try:
      color = tuple(int(c) for c in cat.get(
          "color", ((37 * i) % 256, (91 * i) % 256, (163 * i) % 256)))
      info = ClassInfo(str(cat["name"]), bool(cat["isthing"]), color, int(cat["id"]))
    except KeyError as e:
      raise ValueError(f"{source}: category #{i} lacks the field {e}.") from e
    except (TypeError, ValueError, AttributeError) as e:
      raise ValueError(f"{source}: category #{i} is malformed: {e}") from e
    if info.dataset_id in seen:
      raise ValueError(f"{source}: category id {info.dataset_id} appears twice.")
    seen.add(info.dataset_id)
    classes.append(info)
  return DatasetInfo(name, tuple(classes), label_divisor, ignore_label)


def from_coco_categories(name: str, categories_json: str,
                         label_divisor: Optional[int] = None,
                         ignore_label: Optional[int] = None) -> DatasetInfo:
  """Builds a description from a COCO panoptic categories JSON file.

  The file holds either a list of categories or a dict with a ``categories`` key
  (a COCO panoptic annotation file, or the ``dataset_info.json`` that the
  converter writes beside the shards), each with ``id``, ``name``, ``isthing``
  and optionally ``color``. Train ids follow the file's order.

  Args:
    name: dataset name.
    categories_json: the file.
    label_divisor: the label divisor; None: the file's ``label_divisor`` key if
      it has one, else 256.
    ignore_label: the void class; None: the file's ``ignore_label``, else 255.
  """
  categories, data = _read_categories_file(categories_json)
  if label_divisor is None:
    label_divisor = int(data.get("label_divisor", 256))
  if ignore_label is None:
    ignore_label = int(data.get("ignore_label", 255))
  return from_categories_list(name, categories, label_divisor, ignore_label,
                              source=categories_json)


def from_spec(name: str, categories: Sequence[dict], source: str) -> DatasetInfo:
  """Builds the description of a registered categories-file dataset and checks it.

  Raises:
    ValueError: if ``name`` has no spec, or the counts differ from the spec.
  """
  spec = _CATEGORIES_SPECS[name]
  info = from_categories_list(name, categories, spec.label_divisor, spec.ignore_label,
                              source=source)
  if spec.num_classes is not None and info.num_classes != spec.num_classes:
    raise ValueError(f"{source}: dataset {name!r} has {spec.num_classes} classes, the "
                     f"file lists {info.num_classes}.")
  if spec.num_things is not None and len(info.thing_ids) != spec.num_things:
    raise ValueError(f"{source}: dataset {name!r} has {spec.num_things} thing classes, "
                     f"the file lists {len(info.thing_ids)}.")
  return info


@gin.configurable
def dataset_info(name: str = gin.REQUIRED, categories_json: Optional[str] = None,
                 label_divisor: Optional[int] = None,
                 ignore_label: Optional[int] = None,
                 data_dir: Optional[str] = None,
                 all_stuff: bool = False) -> DatasetInfo:
  """Returns the description of a dataset, selected from gin.

  Args:
    name: a registered dataset name (``shapes``, ``coco``, ``cityscapes``); a
      dataset described by its own categories file (``ade20k``) together with
      ``categories_json``; or any name with ``categories_json`` for a custom
      dataset.
    categories_json: COCO categories file: a COCO panoptic JSON, a list of
      categories, or the ``dataset_info.json`` the converter writes beside the
      shards.
    label_divisor: label divisor of a custom dataset (default: the file's, else
      256); for a registered dataset, a larger divisor than its own to read its
      shards with (the reader re-encodes the labels), for models with more mask
      slots than the dataset's divisor leaves instance ids for (Panoptic
      SegFormer's 400 queries on COCO, whose divisor is 256).
    ignore_label: ignore label of a custom dataset (default: the file's, else 255).
    data_dir: the dataset folder (``%DATA_DIR``): a bare ``categories_json`` file
      name is read there (``utils/data_paths.py``).
    all_stuff: read every class as stuff, so the instances of a thing class
      form one ground-truth mask per class and image: the targets of semantic
      training of mask transformers (MaskFormer / Mask2Former's semantic
      dataset mapper makes one mask per class of the semantic map;
      facebookresearch/Mask2Former mask2former/data/dataset_mappers/
      mask_former_semantic_dataset_mapper.py), from panoptic records. Crowd
      pixels join their class's mask. No instance results then.

  Raises:
    ValueError: for an unknown name, or a file that does not match.
  """
  info = _described(name, categories_json, label_divisor, ignore_label, data_dir)
  if not all_stuff:
    return info
  return dataclasses.replace(info, classes=tuple(
      dataclasses.replace(c, is_thing=False) for c in info.classes))


def _described(name: str, categories_json: Optional[str], label_divisor: Optional[int],
               ignore_label: Optional[int], data_dir: Optional[str]) -> DatasetInfo:
  """The description ``dataset_info`` returns, before ``all_stuff``."""
  categories_json = data_paths.under_data_dir(categories_json, data_dir)
  if name in _CATEGORIES_SPECS:
    if not categories_json:
      raise ValueError(f"Dataset {name!r} is described by its own categories file: "
                       "set dataset_info.categories_json (e.g. the dataset_info.json "
                       "that the converter writes beside the shards).")
    categories, _ = _read_categories_file(categories_json)
    return _with_label_divisor(from_spec(name, categories, categories_json), label_divisor)
  if categories_json:
    return from_coco_categories(name, categories_json, label_divisor, ignore_label)
  if name not in _REGISTRY:
    raise ValueError(f"Unknown dataset {name!r}; known: {registered_names()}. "
                     "For a custom dataset set dataset_info.categories_json.")
  entry = _REGISTRY[name]
  info = entry if isinstance(entry, DatasetInfo) else entry()
  if not isinstance(entry, DatasetInfo):
    _REGISTRY[name] = info  # Built once.
  return _with_label_divisor(info, label_divisor)


def _with_label_divisor(info: DatasetInfo, label_divisor: Optional[int]) -> DatasetInfo:
  """``info`` with a larger label divisor (None: unchanged)."""
  if label_divisor is None or label_divisor == info.label_divisor:
    return info
  if label_divisor < info.label_divisor:
    raise ValueError(f"dataset_info.label_divisor = {label_divisor} is below dataset "
                     f"{info.name!r}'s own ({info.label_divisor}); only a larger one "
                     "can hold its instance ids.")
  return dataclasses.replace(info, label_divisor=int(label_divisor))


def to_json(info: DatasetInfo) -> dict:
  """The description as the JSON that :func:`from_coco_categories` reads back."""
  return {"name": info.name, "label_divisor": info.label_divisor,
          "ignore_label": info.ignore_label, "categories": info.coco_categories()}


def class_table(info: DatasetInfo) -> Sequence[str]:
  """One line per class (train id, name, thing/stuff), for summaries."""
  return [f"{i:4d}  {c.name:<24s} {'thing' if c.is_thing else 'stuff'}"
          for i, c in enumerate(info.classes)]
