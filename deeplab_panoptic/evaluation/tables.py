"""The per-class results of an evaluation as one text table, for the console.

Rows are the dataset's classes in train-id order; columns are what the
evaluation measured: PQ / SQ / RQ (panoptic), IoU (semantic), AP (instance,
thing classes). A class a metric leaves undefined (no ground truth and no
prediction) shows ``-``.
"""

from typing import Dict, Mapping, Optional, Sequence

# (results.json key, column names, the value of a column in the key's entry)
_GROUPS = (
    ("per_class", ("PQ", "SQ", "RQ"), lambda entry, column: entry[column]),
    ("per_class_IoU", ("IoU",), lambda entry, column: entry),
    ("per_class_AP", ("AP",), lambda entry, column: entry),
)
_NAME_WIDTH = 24


def per_class_table(summary: Mapping, class_names: Sequence[str],
                    is_thing: Sequence[bool]) -> Optional[str]:
  """The table of ``summary``'s per-class entries (``results.json``, percent).

  Args:
    summary: the evaluator's results, with any of ``per_class`` (class name ->
      ``{"PQ", "SQ", "RQ"}``), ``per_class_IoU`` and ``per_class_AP`` (class name
      -> value).
    class_names: every class, in train-id order.
    is_thing: per class, whether it is a thing.

  Returns:
    The table, or None when ``summary`` holds no per-class entry.
  """
  groups = [(key, columns, get) for key, columns, get in _GROUPS if summary.get(key)]
  if not groups:
    return None
  header = f"{'id':>4s} {'class':<{_NAME_WIDTH}s} {'kind':<5s}"
  for _, columns, _ in groups:
    header += " |" + "".join(f" {c:>6s}" for c in columns)
  lines = [header, "-" * len(header)]
  for class_id, name in enumerate(class_names):
    kind = "thing" if is_thing[class_id] else "stuff"
    line = f"{class_id:>4d} {name[:_NAME_WIDTH]:<{_NAME_WIDTH}s} {kind:<5s}"
    for key, columns, get in groups:
      entry = summary[key].get(name)
      line += " |" + "".join(
          f" {'-':>6s}" if entry is None else f" {get(entry, c):6.2f}" for c in columns)
    lines.append(line)
  return "\n".join(lines)


def percent_by_name(values: Mapping[int, float], class_names: Sequence[str]
                    ) -> Dict[str, float]:
  """Train id -> fraction as class name -> percent, leaving out undefined (< 0) values."""
  return {class_names[int(c)]: 100.0 * float(v) for c, v in values.items() if v >= 0}
