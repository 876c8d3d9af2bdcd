"""Hugging Face ``Mask2FormerPixelDecoder`` weights -> our ``DeformableEncoder``.

``assign(part, weights, prefix)`` sets every variable of a built
``DeformableEncoder`` configured as Mask2Former's pixel decoder
(``configs/models/mask2former_pixel_decoder.gin``: ``input_strides`` coarse to
fine, no extra level, FPN strides, ``mask_features_dim``) from the arrays of a
transformers state dict (``Mask2FormerForUniversalSegmentation``: prefix
``model.pixel_level_module.decoder.``), and returns the names it used.

| Hugging Face (under the prefix) | ours | layout |
|---|---|---|
| ``level_embed`` ``[levels, d]`` | ``level_embed`` (level 0 = coarsest) | |
| ``input_projections.{l}.0`` / ``.1`` | ``mapper_s<s>`` / ``mapper_gn_s<s>``, ``s = input_strides[l]`` | conv ``[O, I, 1, 1]`` -> ``[1, 1, I, O]``; GroupNorm |
| ``encoder.layers.{i}.self_attn.{sampling_offsets, attention_weights, value_proj, output_proj}`` | ``layer{i}.self_attn...`` | ``[out, in]`` -> ``[in, out]`` |
| ``encoder.layers.{i}.self_attn_layer_norm`` / ``final_layer_norm`` | ``layer{i}.norm1`` / ``norm2`` | |
| ``encoder.layers.{i}.fc1`` / ``fc2`` | ``layer{i}.ffn.fc1`` / ``fc2`` | transposed |
| ``adapter_{k}.0`` / ``.1`` (k = 1 finest) | ``lateral_s<s>`` (no bias) / ``lateral_gn_s<s>`` | conv transposed |
| ``layer_{k}.0`` / ``.1`` | ``output_s<s>`` (3x3, no bias) / ``output_gn_s<s>`` | conv transposed |
| ``mask_projection`` | ``mask_features`` (1x1, bias) | conv transposed |

The sampling-offset and attention-weight rows are laid out (heads, levels,
points[, xy]) in both, with the levels in the same order because ``input_strides``
is coarse to fine as Hugging Face's levels are. The module has no buffers: every
array under the prefix must be used, and every variable found with its shape;
anything else is one ``ValueError`` naming the array.
"""

from typing import Callable, Dict, List, Tuple

import numpy as np
import tensorflow as tf

from deeplab_panoptic.modeling.pixel_decoders.deformable import DeformableEncoder
from deeplab_panoptic.tools.hf_mask2former import checked_value

Convert = Callable[[np.ndarray], np.ndarray]


def _same(array: np.ndarray) -> np.ndarray:
  return array


def _linear(array: np.ndarray) -> np.ndarray:
  return array.T                                            # [out, in] -> [in, out]


def _conv(array: np.ndarray) -> np.ndarray:
  return np.transpose(array, (2, 3, 1, 0))                  # [O, I, kh, kw] -> [kh, kw, I, O]


Entry = Tuple[tf.Variable, str, Convert]


def _norm(name: str, layer) -> List[Entry]:
  return [(layer.gamma, f"{name}.weight", _same), (layer.beta, f"{name}.bias", _same)]


def _layer(name: str, layer, convert: Convert) -> List[Entry]:
  entries = [(layer.kernel, f"{name}.weight", convert)]
  if layer.use_bias:
    entries.append((layer.bias, f"{name}.bias", _same))
  return entries


def _check_part(part: DeformableEncoder):
  if not isinstance(part, DeformableEncoder):
    raise ValueError(f"hf_mask2former pixel decoder: the part is a {type(part).__name__}, "
                     f"not a DeformableEncoder.")
  if not part.built:
    raise ValueError("hf_mask2former pixel decoder: build the DeformableEncoder first "
                     "(call it once on features).")
  if (list(part.encoded_strides) != sorted(part.input_strides, reverse=True)
      or part._mask_features is None or not part.fpn_strides):  # pylint: disable=protected-access
    raise ValueError(f"hf_mask2former pixel decoder: the DeformableEncoder must be "
                     f"configured as Mask2Former's (input_strides coarse to fine, no extra "
                     f"level, fpn_strides and mask_features_dim set), got input_strides="
                     f"{part.input_strides}, encoded {part.encoded_strides}, fpn_strides="
                     f"{part.fpn_strides}.")


def entries(part: DeformableEncoder) -> List[Entry]:
  """(variable, Hugging Face name without the prefix, convert) of every variable."""
  # pylint: disable=protected-access
  _check_part(part)
  out = [(part._level_embed, "level_embed", _same)]
  for level, (conv, norm) in enumerate(part._mappers):
    out += _layer(f"input_projections.{level}.0", conv, _conv)
    out += _norm(f"input_projections.{level}.1", norm)
  for i, layer in enumerate(part._layers):
    p = f"encoder.layers.{i}"
    attn = layer._attn
    for name, dense in (("sampling_offsets", attn._offsets),
                        ("attention_weights", attn._attention),
                        ("value_proj", attn._value_proj), ("output_proj", attn._output_proj)):
      out += _layer(f"{p}.self_attn.{name}", dense, _linear)
    out += _norm(f"{p}.self_attn_layer_norm", layer._norm1)
    out += _layer(f"{p}.fc1", layer._ffn._fc1, _linear)
    out += _layer(f"{p}.fc2", layer._ffn._fc2, _linear)
    out += _norm(f"{p}.final_layer_norm", layer._norm2)
  # Hugging Face numbers the FPN steps from the finest (adapter_1); ours run coarse to fine.
  for j, (lateral, lateral_norm, conv, norm) in enumerate(part._fpn):
    k = len(part._fpn) - j
    out += _layer(f"adapter_{k}.0", lateral, _conv) + _norm(f"adapter_{k}.1", lateral_norm)
    out += _layer(f"layer_{k}.0", conv, _conv) + _norm(f"layer_{k}.1", norm)
  out += _layer("mask_projection", part._mask_features, _conv)
  return out


def assign(part: DeformableEncoder, weights: Dict[str, np.ndarray], prefix: str) -> List[str]:
  """Sets every variable of ``part`` from ``weights[prefix + name]``.

  Args:
    part: a built ``DeformableEncoder`` configured as Mask2Former's pixel decoder.
    weights: a transformers state dict as numpy arrays (torch layout).
    prefix: the pixel decoder's prefix, e.g. ``"model.pixel_level_module.decoder."``.

  Returns:
    The full names (with the prefix) of the arrays used: all those under ``prefix``.

  Raises:
    ValueError: the part is not so configured, or an array is missing, has the
      wrong shape, or is under the prefix but not used.
  """
  values = []
  for variable, name, convert in entries(part):
    key = prefix + name
    values.append((variable, key,
                   checked_value("pixel decoder", weights, key, variable, convert)))
  used = [key for _, key, _ in values]
  unused = sorted(set(k for k in weights if k.startswith(prefix)) - set(used))
  if unused:
    raise ValueError(f"hf_mask2former pixel decoder: {len(unused)} arrays under {prefix!r} "
                     f"have no variable here (more layers or levels than the part?), first "
                     f"{unused[0]!r}.")
  for variable, _, value in values:
    variable.assign(value.astype(variable.dtype.as_numpy_dtype))
  return used
