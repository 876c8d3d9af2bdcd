"""Dataset descriptions: classes, names, colours, thing/stuff, label divisor, ignore label.

A dataset is described by a :class:`DatasetInfo`. Gin files select one with
``dataset_info.name = 'shapes'`` or build a custom one; nothing in the library
branches on a dataset's name, every consumer reads the fields.
"""

import dataclasses
import json
from typing import Dict, List, Optional, Sequence, Tuple

import gin


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

_REGISTRY: Dict[str, DatasetInfo] = {"shapes": SHAPES}


def register(info: DatasetInfo) -> None:
  """Adds a dataset description to the registry used by :func:`dataset_info`."""
  _REGISTRY[info.name] = info


def from_coco_categories(name: str, categories_json: str, label_divisor: int = 256,
                         ignore_label: int = 255) -> DatasetInfo:
  """Builds a description from a COCO panoptic categories JSON file.

  The file holds either a list of categories or a dict with a ``categories`` key,
  each with ``id``, ``name``, ``isthing`` and optionally ``color``. Train ids
  follow the file's order.
  """
  try:
    with open(categories_json, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"Cannot read categories from {categories_json}: {e}") from e
  cats = data["categories"] if isinstance(data, dict) else data
  classes = []
  for i, cat in enumerate(cats):
    try:
      color = tuple(cat.get("color", ((37 * i) % 256, (91 * i) % 256, (163 * i) % 256)))
      classes.append(ClassInfo(str(cat["name"]), bool(cat["isthing"]), color, int(cat["id"])))
    except KeyError as e:
      raise ValueError(f"{categories_json}: category #{i} lacks the field {e}.") from e
  return DatasetInfo(name, tuple(classes), label_divisor, ignore_label)


@gin.configurable
def dataset_info(name: str = gin.REQUIRED, categories_json: Optional[str] = None,
                 label_divisor: int = 256, ignore_label: int = 255) -> DatasetInfo:
  """Returns the description of a dataset, selected from gin.

  Args:
    name: a registered dataset name, or any name together with ``categories_json``.
    categories_json: optional COCO categories file for a custom dataset.
    label_divisor: label divisor of a custom dataset.
    ignore_label: ignore label of a custom dataset.
  """
  if categories_json:
    return from_coco_categories(name, categories_json, label_divisor, ignore_label)
  if name not in _REGISTRY:
    raise ValueError(f"Unknown dataset {name!r}; known: {sorted(_REGISTRY)}. "
                     "For a custom dataset set dataset_info.categories_json.")
  return _REGISTRY[name]


def class_table(info: DatasetInfo) -> Sequence[str]:
  """One line per class (train id, name, thing/stuff), for summaries."""
  return [f"{i:4d}  {c.name:<24s} {'thing' if c.is_thing else 'stuff'}"
          for i, c in enumerate(info.classes)]
