"""``--profile_steps=a,b``: read and checked before TensorFlow starts.

The flag stands for the gin binding ``ExperimentConfig.profile_steps=(a, b)``
(``training/profiler.py`` writes the profile).
"""

from typing import Optional, Tuple

from deeplab_panoptic.cli.errors import UsageError

# The modes that train (a profile is of training steps).
TRAINING_MODES = ("train", "train_and_eval")


def parse(value: str) -> Tuple[int, int]:
  """``'a,b'`` -> ``(a, b)``, 1-based training steps with ``1 <= a <= b``.

  Raises:
    UsageError: naming the flag and the expected form.
  """
  parts = [p.strip() for p in value.split(",")]
  bad = UsageError(f"--profile_steps={value!r}: expected two training steps 'a,b' with "
                   "1 <= a <= b, e.g. --profile_steps=100,110")
  if len(parts) != 2 or not all(p.isdigit() for p in parts):
    raise bad
  first, last = int(parts[0]), int(parts[1])
  if not 1 <= first <= last:
    raise bad
  return first, last


def binding(value: Optional[str], mode: Optional[str]) -> Optional[str]:
  """The gin binding the flag stands for (None without the flag); ``mode`` None: any.

  Raises:
    UsageError: a malformed value, or a mode that does not train.
  """
  if value is None:
    return None
  first, last = parse(value)
  if mode is not None and mode not in TRAINING_MODES:
    raise UsageError(f"--profile_steps profiles training steps; --mode={mode} does not "
                     f"train (use {' or '.join(TRAINING_MODES)}).")
  return f"ExperimentConfig.profile_steps=({first}, {last})"
