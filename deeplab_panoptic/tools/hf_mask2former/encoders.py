"""Hugging Face backbone weights -> our pixel encoders (Mask2Former's two kinds).

``assign(encoder, weights, prefix)`` sets every variable of a built encoder from
the arrays named ``<prefix><name>`` and returns the names it used; for
``Mask2FormerForUniversalSegmentation`` the prefix is
``model.pixel_level_module.encoder.``.

* ``SwinEncoder`` <- ``SwinBackbone``: ``tools/import_swin.py``'s Hugging Face
  mapping (every array under the prefix used; the unused final
  ``layernorm.*`` that transformers' ``SwinBackbone`` may save is not returned).
* ``TorchvisionResNetEncoder`` <- ``ResNetBackbone`` (bottleneck layers):

| Hugging Face (under the prefix) | ours | layout |
|---|---|---|
| ``embedder.embedder.convolution`` / ``.normalization`` | ``stem.conv`` / ``stem.bn`` | ``[O, I, kh, kw]`` -> ``[kh, kw, I, O]`` |
| ``encoder.stages.{i}.layers.{j}.layer.{0,1,2}.convolution`` / ``.normalization`` | ``stages[i][j].conv{1,2,3}.conv`` / ``.bn`` | conv transposed |
| ``encoder.stages.{i}.layers.{j}.shortcut.convolution`` / ``.normalization`` | ``stages[i][j].shortcut.conv`` / ``.bn`` | conv transposed |

A batch norm's ``weight``, ``bias``, ``running_mean``, ``running_var`` are our
``gamma``, ``beta``, ``moving_mean``, ``moving_variance``; its
``num_batches_tracked`` counts training steps and is not a weight
(``TRAINING_ONLY_SUFFIXES``: not used, not returned). Anything else under the
prefix, a missing array or a shape that does not fit is one ``ValueError``
naming the array.
"""

from typing import Callable, Dict, List, Tuple

import numpy as np
import tensorflow as tf

from deeplab_panoptic.modeling.pixel_encoders.swin import SwinEncoder
from deeplab_panoptic.modeling.pixel_encoders.torchvision_resnet import (
    ConvBN, TorchvisionResNetEncoder)
from deeplab_panoptic.tools import import_swin

# Buffers of PyTorch batch norms that are no weight: the count of training steps.
TRAINING_ONLY_SUFFIXES = (".num_batches_tracked",)
Entry = Tuple[tf.Variable, str, Callable[[np.ndarray], np.ndarray]]


def _same(array: np.ndarray) -> np.ndarray:
  return array


def _conv(array: np.ndarray) -> np.ndarray:
  return np.transpose(array, (2, 3, 1, 0))            # [O, I, kh, kw] -> [kh, kw, I, O]


def _conv_bn(name: str, layer: ConvBN) -> List[Entry]:
  bn = layer.bn
  return [(layer.conv.kernel, f"{name}.convolution.weight", _conv),
          (bn.gamma, f"{name}.normalization.weight", _same),
          (bn.beta, f"{name}.normalization.bias", _same),
          (bn.moving_mean, f"{name}.normalization.running_mean", _same),
          (bn.moving_variance, f"{name}.normalization.running_var", _same)]


def resnet_entries(encoder: TorchvisionResNetEncoder) -> List[Entry]:
  """``(variable, Hugging Face name without prefix, convert)`` of a built encoder."""
  out = _conv_bn("embedder.embedder", encoder.stem)
  for i, blocks in enumerate(encoder.stages):
    for j, block in enumerate(blocks):
      p = f"encoder.stages.{i}.layers.{j}"
      for k, conv_bn in enumerate((block.conv1, block.conv2, block.conv3)):
        out += _conv_bn(f"{p}.layer.{k}", conv_bn)
      if block.shortcut is not None:
        out += _conv_bn(f"{p}.shortcut", block.shortcut)
  return out


def assign_resnet(encoder: TorchvisionResNetEncoder, weights: Dict[str, np.ndarray],
                  prefix: str) -> List[str]:
  """Sets every variable of a built ``encoder`` from ``ResNetBackbone`` arrays.

  Args:
    encoder: a built ``TorchvisionResNetEncoder``.
    weights: name -> array (e.g. ``safetensors.numpy.load_file``).
    prefix: the backbone's names start with it.

  Returns:
    The names used (with the prefix), in the order assigned.

  Raises:
    ValueError: one line naming the missing, unused or misshapen array.
  """
  entries = resnet_entries(encoder)
  if len(entries) != len(encoder.weights):
    raise ValueError(f"ResNet import: {len(encoder.weights)} encoder variables but "
                     f"{len(entries)} mapped; the encoder's layout changed.")
  values = []
  for variable, name, convert in entries:
    key = prefix + name
    if key not in weights:
      raise ValueError(f"ResNet import: {key} is missing (another depth or width, or "
                       "not a bottleneck ResNetBackbone?).")
    value = convert(np.asarray(weights[key]))
    if tuple(value.shape) != tuple(variable.shape):
      raise ValueError(f"ResNet import: {key} {tuple(np.shape(weights[key]))} does not fit "
                       f"{variable.name} {tuple(variable.shape)}.")
    values.append((variable, key, value))
  used = [key for _, key, _ in values]
  unused = sorted(k for k in set(weights) - set(used)
                  if k.startswith(prefix) and not k.endswith(TRAINING_ONLY_SUFFIXES))
  if unused:
    raise ValueError(f"ResNet import: {len(unused)} arrays under {prefix!r} have no place "
                     f"in the encoder, e.g. {unused[:3]}.")
  for variable, _, value in values:
    variable.assign(value.astype(variable.dtype.as_numpy_dtype))
  return used


def assign_swin(encoder: SwinEncoder, weights: Dict[str, np.ndarray],
                prefix: str) -> List[str]:
  """Sets every variable of a built ``encoder`` from ``SwinBackbone`` arrays.

  Returns the names used (with the prefix); raises ``ValueError`` as
  ``import_swin.load_swin_state`` does. Per-stage norms are required here
  (``SwinBackbone`` always has them).
  """
  state = import_swin.strip_prefix(weights, prefix)
  _, entries, stage_norms = import_swin.swin_entries(encoder, state, "hf")
  missing = sorted(n for e in stage_norms for n in e.names if n not in state)
  if missing:
    raise ValueError(f"Swin import: {prefix}{missing[0]} is missing (the backbone's "
                     "per-stage norms).")
  import_swin.load_swin_state(encoder, state, "hf")
  return [prefix + n for e in entries + stage_norms for n in e.names]


def assign(encoder, weights: Dict[str, np.ndarray], prefix: str) -> List[str]:
  """``assign_swin`` or ``assign_resnet`` by the encoder's type."""
  if isinstance(encoder, SwinEncoder):
    return assign_swin(encoder, weights, prefix)
  if isinstance(encoder, TorchvisionResNetEncoder):
    return assign_resnet(encoder, weights, prefix)
  raise ValueError(f"Mask2Former import: no Hugging Face mapping for the pixel encoder "
                   f"{type(encoder).__name__} (SwinEncoder or TorchvisionResNetEncoder).")
