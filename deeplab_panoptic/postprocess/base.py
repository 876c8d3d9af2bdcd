"""The postprocessor contract: a postprocessor declares the results it makes.

A *task* is what a postprocessor declares, not what the runtime assumes. Every
postprocessor names the results it produces (any non-empty subset of
:data:`RESULTS`) and the model outputs it reads; from that declaration

* the experiment checks the model against the dataset (:meth:`Postprocessor.check_model_outputs`),
* the evaluator builds its metrics (PQ for ``panoptic``, mIoU for ``semantic``,
  mask AP for ``instance``) and the keys of ``results.json`` and TensorBoard,
* the SavedModel gets its outputs (:func:`result_outputs`).

The result kinds and the dict entries each one puts in the postprocessor's
output (``B`` images, ``H x W`` the model input size, ``N`` mask slots):

* ``panoptic``: ``common.PANOPTIC`` int32 ``[B, H, W]``
  (``semantic * label_divisor + instance``, void ``ignore_label * label_divisor``),
  ``common.SEGMENT_CLASSES`` int32 ``[B, N]`` (-1 for dropped slots),
  ``common.SEGMENT_SCORES`` float32 ``[B, N]``, ``common.SEGMENT_AREAS`` int32 ``[B, N]``.
* ``semantic``: ``common.SEMANTIC`` int32 ``[B, H, W]`` train ids, ``ignore_label`` at void.
* ``instance``: ``common.INSTANCE`` int32 ``[B, H, W]`` (0: no instance; instance
  ``k + 1`` is slot ``k``), ``common.SEGMENT_CLASSES`` and ``common.SEGMENT_SCORES``
  ``[B, N]`` (the class and score of each slot's instance): non-overlapping
  instances read off a panoptic map.
* ``instance_masks``: ``common.INSTANCE_MASKS`` bool ``[B, H, W, K]`` (``K``
  instances that may overlap, channels last like the mask logits),
  ``common.INSTANCE_CLASSES`` int32 and ``common.INSTANCE_SCORES`` float32
  ``[B, K]`` (Mask2Former's instance inference, ``postprocess/mask_results.py``).
"""

import abc
from typing import Dict, FrozenSet, Iterable, List, Mapping, Sequence, Tuple

import tensorflow as tf

from deeplab_panoptic import common

PANOPTIC = common.PANOPTIC
SEMANTIC = common.SEMANTIC
INSTANCE = common.INSTANCE
INSTANCE_MASKS = common.INSTANCE_MASKS
RESULTS = (PANOPTIC, SEMANTIC, INSTANCE, INSTANCE_MASKS)

# The per-pixel maps of each result kind (restored to the original resolution by
# the evaluator and the SavedModel), its stacks of binary masks ([B, H, W, K],
# restored the same way) and its per-slot tensors.
RESULT_MAPS = {PANOPTIC: (common.PANOPTIC,), SEMANTIC: (common.SEMANTIC,),
               INSTANCE: (common.INSTANCE,), INSTANCE_MASKS: ()}
RESULT_MASK_STACKS = {PANOPTIC: (), SEMANTIC: (), INSTANCE: (),
                      INSTANCE_MASKS: (common.INSTANCE_MASKS,)}
RESULT_SLOT_TENSORS = {
    PANOPTIC: (common.SEGMENT_CLASSES, common.SEGMENT_SCORES, common.SEGMENT_AREAS),
    SEMANTIC: (),
    INSTANCE: (common.SEGMENT_CLASSES, common.SEGMENT_SCORES),
    INSTANCE_MASKS: (common.INSTANCE_CLASSES, common.INSTANCE_SCORES),
}


def check_results(owner: str, results: Iterable[str]) -> FrozenSet[str]:
  """Validates a declaration of results; returns it as a frozenset.

  Raises:
    ValueError: naming ``owner``, for an empty declaration or an unknown kind.
  """
  declared = frozenset(results)
  unknown = sorted(declared - set(RESULTS))
  if not declared or unknown:
    raise ValueError(f"{owner} declares results {sorted(declared)}; declare a non-empty "
                     f"subset of {list(RESULTS)}.")
  return declared


def result_maps(results: Iterable[str]) -> List[str]:
  """The per-pixel output keys of ``results``, in :data:`RESULTS` order."""
  return [key for kind in RESULTS if kind in results for key in RESULT_MAPS[kind]]


def result_mask_stacks(results: Iterable[str]) -> List[str]:
  """The mask-stack output keys (bool ``[B, H, W, K]``) of ``results``."""
  return [key for kind in RESULTS if kind in results for key in RESULT_MASK_STACKS[kind]]


def result_slot_tensors(results: Iterable[str]) -> List[str]:
  """The per-slot output keys of ``results`` (each once), in :data:`RESULTS` order."""
  keys: List[str] = []
  for kind in RESULTS:
    if kind in results:
      keys += [k for k in RESULT_SLOT_TENSORS[kind] if k not in keys]
  return keys


def result_outputs(results: Iterable[str]) -> List[str]:
  """Every output key a postprocessor declaring ``results`` must return."""
  return result_maps(results) + result_mask_stacks(results) + result_slot_tensors(results)


def map_void_values(results: Iterable[str], label_divisor: int,
                    ignore_label: int) -> Dict[str, int]:
  """The void value of each per-pixel map (fills padding and unlabelled pixels)."""
  void = {common.PANOPTIC: ignore_label * label_divisor, common.SEMANTIC: ignore_label,
          common.INSTANCE: 0}
  return {key: void[key] for key in result_maps(results)}


def check_dataset_config(owner: str, is_thing: Sequence[bool], label_divisor: int,
                         ignore_label: int) -> List[bool]:
  """Validates the dataset arguments every postprocessor takes.

  Returns:
    ``is_thing`` as a list of bools.

  Raises:
    ValueError: naming ``owner`` and the offending argument.
  """
  is_thing = [bool(t) for t in is_thing]
  if not is_thing:
    raise ValueError(f"{owner}: is_thing is empty.")
  if ignore_label < len(is_thing):
    raise ValueError(f"{owner}: ignore_label {ignore_label} must be >= num_classes "
                     f"({len(is_thing)}).")
  if label_divisor <= 0:
    raise ValueError(f"{owner}: label_divisor must be positive.")
  return is_thing


class Postprocessor(abc.ABC):
  """Model outputs -> declared results at the model input size (static shapes, XLA).

  Subclasses set :attr:`results` and :attr:`required_outputs`, call
  ``super().__init__`` with the dataset arguments, and implement :meth:`__call__`
  and :meth:`predicted_classes`.

  Attributes:
    results: the result kinds produced (a non-empty subset of :data:`RESULTS`).
    required_outputs: the model output keys read (``common.PRED_*``).
  """

  results: FrozenSet[str] = frozenset()
  required_outputs: Tuple[str, ...] = ()

  def __init__(self, is_thing: Sequence[bool], label_divisor: int, ignore_label: int):
    owner = type(self).__name__
    check_results(owner, self.results)
    self._is_thing = check_dataset_config(owner, is_thing, label_divisor, ignore_label)
    self._num_classes = len(self._is_thing)
    self._label_divisor = int(label_divisor)
    self._ignore_label = int(ignore_label)

  @property
  def num_classes(self) -> int:
    """Classes of the dataset (without void)."""
    return self._num_classes

  @property
  def output_keys(self) -> List[str]:
    """The keys :meth:`__call__` returns (from :attr:`results`)."""
    return result_outputs(self.results)

  @abc.abstractmethod
  def predicted_classes(self, outputs: Mapping[str, tf.Tensor]) -> int:
    """The number of real (non-void) classes the model outputs predict."""

  def check_model_outputs(self, outputs: Mapping[str, tf.Tensor]) -> None:
    """Checks a model's (inference) outputs against this postprocessor and the dataset.

    Raises:
      ValueError: an output this postprocessor reads is missing, or the model
        predicts another number of classes than the dataset has.
    """
    owner = type(self).__name__
    missing = [k for k in self.required_outputs if k not in outputs]
    if missing:
      raise ValueError(f"{owner} reads model outputs {missing}, which the model does not "
                       f"give (it gives {sorted(outputs)}): choose a postprocessor for "
                       "this model in ExperimentConfig.postprocessor.")
    predicted = self.predicted_classes(outputs)
    if predicted != self._num_classes:
      raise ValueError(f"The model predicts {predicted} classes but the dataset has "
                       f"{self._num_classes}: set NUM_CLASSES in the gin file.")

  @abc.abstractmethod
  def __call__(self, outputs: Mapping[str, tf.Tensor],
               target_size: Tuple[int, int]) -> Dict[str, tf.Tensor]:
    """Computes the declared results.

    Args:
      outputs: the model's inference outputs (float32).
      target_size: (H, W) python ints, the model input size.

    Returns:
      :attr:`output_keys` -> tensors, maps ``[B, H, W]``, per-slot ``[B, N]``.
    """
