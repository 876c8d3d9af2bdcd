"""Hugging Face ``Mask2FormerForUniversalSegmentation`` weights -> our parts.

One module per part, each with ``assign(part, weights, prefix) -> names used``
(``weights``: the state dict's arrays, read with safetensors' numpy API; the
names keep their prefix); ``python -m deeplab_panoptic.tools.import_hf_mask2former``
composes them:

| module | part | prefix |
|---|---|---|
| ``encoders`` | ``SwinEncoder`` / ``TorchvisionResNetEncoder`` | ``model.pixel_level_module.encoder.`` |
| ``pixel_decoder`` | ``DeformableEncoder`` | ``model.pixel_level_module.decoder.`` |
| ``transformer_decoder`` | ``Mask2FormerDecoder`` | ``model.transformer_module.``, ``class_predictor.`` |
"""

from typing import Callable, Dict

import numpy as np


def checked_value(owner: str, weights: Dict[str, np.ndarray], key: str, variable,
                  convert: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
  """``convert(weights[key])`` once it exists and has ``variable``'s shape.

  Raises:
    ValueError: naming ``owner``, the key and the variable, when the array is
      missing or converts to another shape.
  """
  if key not in weights:
    raise ValueError(f"hf_mask2former {owner}: {key!r} is missing from the weights "
                     f"(needed for {variable.name}).")
  value = convert(np.asarray(weights[key]))
  if tuple(value.shape) != tuple(variable.shape):
    raise ValueError(f"hf_mask2former {owner}: {key!r} has shape "
                     f"{tuple(np.shape(weights[key]))}, which gives {tuple(value.shape)}; "
                     f"{variable.name} is {tuple(variable.shape)}.")
  return value
