"""Hugging Face ``Mask2FormerTransformerModule`` weights -> our ``Mask2FormerDecoder``.

``assign(part, weights, prefix)`` sets every variable of a built
``Mask2FormerDecoder`` from the arrays of a transformers state dict
(``Mask2FormerForUniversalSegmentation``: prefix ``model.transformer_module.``;
the class head from ``class_predictor.``, outside that module), and returns the
names it used. The part must have as many layers as the file
(``config.decoder_layers - 1``: transformers counts the initial prediction),
``level_strides`` coarse to fine (transformers' level ``l`` is the pixel
decoder's ``l``-th output, the coarsest first), and ``input_projection`` exactly
when the file has ``input_projections.*`` (transformers uses the identity when
``feature_size == hidden_dim`` and ``enforce_input_projection`` is off).

| Hugging Face (under the prefix) | ours | layout |
|---|---|---|
| ``queries_features`` / ``queries_embedder`` | ``query_features`` / ``query_pos`` | ``[N, d]`` |
| ``level_embed`` | ``level_embed`` (level ``l`` = ``level_strides[l]``) | ``[levels, d]`` |
| ``input_projections.{l}`` | ``input_projections[l]`` | conv ``[O, I, 1, 1]`` -> ``[I, O]`` |
| ``decoder.layers.{i}.cross_attn.in_proj_{weight,bias}`` | ``layer{i}.cross_attn.{q,k,v}`` | thirds, ``[out, in]`` -> ``[in, out]`` |
| ``decoder.layers.{i}.cross_attn.out_proj`` | ``layer{i}.cross_attn.out`` | transposed |
| ``decoder.layers.{i}.self_attn.{q,k,v,out}_proj`` | ``layer{i}.self_attn.{q,k,v,out}`` | transposed |
| ``decoder.layers.{i}.{cross_attn,self_attn,final}_layer_norm`` | ``layer{i}.{cross,self,ffn}_norm`` | |
| ``decoder.layers.{i}.fc1`` / ``fc2`` | ``layer{i}.ffn.fc1`` / ``fc2`` | transposed |
| ``decoder.layernorm`` | ``decoder_norm`` | |
| ``decoder.mask_predictor.mask_embedder.{j}.0`` | ``mask_embedding.fc{j}`` | transposed |
| ``class_predictor`` (``class_prefix``) | ``class`` | transposed |

Every array under the prefix must be used and every variable found with its
shape; anything else is one ``ValueError`` naming the array.
"""

from typing import Callable, Dict, List, Tuple

import numpy as np
import tensorflow as tf

from deeplab_panoptic.modeling.transformer_decoders.mask2former import Mask2FormerDecoder
from deeplab_panoptic.tools.hf_mask2former import checked_value

Convert = Callable[[np.ndarray], np.ndarray]
Entry = Tuple[tf.Variable, str, Convert]


def _same(array: np.ndarray) -> np.ndarray:
  return array


def _linear(array: np.ndarray) -> np.ndarray:
  return array.T                                            # [out, in] -> [in, out]


def _conv1x1(array: np.ndarray) -> np.ndarray:
  return array[:, :, 0, 0].T                                # [O, I, 1, 1] -> [I, O]


def _third(index: int, convert: Convert) -> Convert:
  """Rows ``index`` of three equal blocks (torch's packed q, k, v projection)."""
  def take(array: np.ndarray) -> np.ndarray:
    return convert(np.split(array, 3, axis=0)[index])
  return take


def _dense(name: str, layer) -> List[Entry]:
  return [(layer.kernel, f"{name}.weight", _linear), (layer.bias, f"{name}.bias", _same)]


def _norm(name: str, layer) -> List[Entry]:
  return [(layer.gamma, f"{name}.weight", _same), (layer.beta, f"{name}.bias", _same)]


def _layer_entries(p: str, layer) -> List[Entry]:
  """The entries of one ``MaskedAttentionLayer`` under ``p`` (``decoder.layers.{i}``)."""
  out = []
  for index, dense in enumerate((layer.cross_attn.q, layer.cross_attn.k, layer.cross_attn.v)):
    out += [(dense.kernel, f"{p}.cross_attn.in_proj_weight", _third(index, _linear)),
            (dense.bias, f"{p}.cross_attn.in_proj_bias", _third(index, _same))]
  out += _dense(f"{p}.cross_attn.out_proj", layer.cross_attn.out)
  out += _norm(f"{p}.cross_attn_layer_norm", layer.cross_norm)
  for name in ("q", "k", "v", "out"):
    out += _dense(f"{p}.self_attn.{name}_proj", getattr(layer.self_attn, name))
  out += _norm(f"{p}.self_attn_layer_norm", layer.self_norm)
  # pylint: disable=protected-access
  out += _dense(f"{p}.fc1", layer.ffn._fc1) + _dense(f"{p}.fc2", layer.ffn._fc2)
  out += _norm(f"{p}.final_layer_norm", layer.ffn_norm)
  return out


def entries(part: Mask2FormerDecoder) -> List[Entry]:
  """(variable, Hugging Face name without the prefix, convert) of every variable but
  the class head's."""
  if not isinstance(part, Mask2FormerDecoder):
    raise ValueError(f"hf_mask2former transformer decoder: the part is a "
                     f"{type(part).__name__}, not a Mask2FormerDecoder.")
  if not part.built or not part.class_head.built:
    raise ValueError("hf_mask2former transformer decoder: build the Mask2FormerDecoder "
                     "first (call it once on features).")
  out = [(part.query_features, "queries_features.weight", _same),
         (part.query_pos, "queries_embedder.weight", _same),
         (part.level_embed, "level_embed.weight", _same)]
  for level, dense in enumerate(part.input_projections or []):
    out += [(dense.kernel, f"input_projections.{level}.weight", _conv1x1),
            (dense.bias, f"input_projections.{level}.bias", _same)]
  for i, layer in enumerate(part.decoder_layers):
    out += _layer_entries(f"decoder.layers.{i}", layer)
  out += _norm("decoder.layernorm", part.decoder_norm)
  for j, dense in enumerate(part.mask_embedding.dense):
    out += _dense(f"decoder.mask_predictor.mask_embedder.{j}.0", dense)
  return out


def assign(part: Mask2FormerDecoder, weights: Dict[str, np.ndarray], prefix: str,
           class_prefix: str = "class_predictor.") -> List[str]:
  """Sets every variable of ``part`` from ``weights[prefix + name]`` (class head:
  ``weights[class_prefix + name]``).

  Args:
    part: a built ``Mask2FormerDecoder``.
    weights: a transformers state dict as numpy arrays (torch layout).
    prefix: the transformer module's prefix, e.g. ``"model.transformer_module."``.
    class_prefix: the class predictor's prefix (``"class_predictor."``).

  Returns:
    The full names of the arrays used: all those under ``prefix`` and the class
    predictor's weight and bias.

  Raises:
    ValueError: an array is missing, has the wrong shape, or is under the prefix
      but not used (more layers, levels or projections than the part).
  """
  named = [(variable, prefix + name, convert) for variable, name, convert in entries(part)]
  named += [(variable, class_prefix + name[len("class."):], convert)
            for variable, name, convert in _dense("class", part.class_head)]
  values = [(variable, key, checked_value("transformer decoder", weights, key, variable, convert))
            for variable, key, convert in named]
  used = list(dict.fromkeys(key for _, key, _ in values))
  unused = sorted(set(k for k in weights if k.startswith(prefix)) - set(used))
  if unused:
    raise ValueError(f"hf_mask2former transformer decoder: {len(unused)} arrays under "
                     f"{prefix!r} have no variable here (more layers or levels than the "
                     f"part, or input projections it does not have?), first {unused[0]!r}.")
  for variable, _, value in values:
    variable.assign(value.astype(variable.dtype.as_numpy_dtype))
  return used
