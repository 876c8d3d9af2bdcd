"""Imports ImageNet PVTv2 weights (the PyTorch state dicts of whai362/PVT) into PVTv2Encoder.

The released ``pvt_v2_b*.pth`` files are PyTorch pickles; this tool reads them as
``.npz`` (one array per state-dict name), written where PyTorch is installed:

    python -c "import numpy, torch; numpy.savez('pvt_v2_b2.npz', **{k: v.numpy()
        for k, v in torch.load('pvt_v2_b2.pth', map_location='cpu').items()})"

then builds the recipe's model, assigns its pixel encoder and writes our
checkpoint (``ckpt-0``) for ``ExperimentConfig.init_checkpoint`` with
``init_checkpoint_parts = ['pixel_encoder']``:

    python -m deeplab_panoptic.tools.import_pvtv2 \\
      --gin_file=experiments/coco/panoptic_segformer_pvtv2_b2_50ep.gin \\
      --state_dict=pvt_v2_b2.npz --output_dir=/tmp/pvt_v2_b2_imagenet

Every encoder variable must be found with the right shape and every array of
the file used, except the classifier (``head.*``); anything else is an error.
"""

from typing import Callable, Dict, List, Mapping, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling.pixel_encoders.pvtv2 import PVTv2Encoder

# PyTorch layouts -> Keras layouts.
_LINEAR = lambda w: w.T                                  # [out, in] -> [in, out]
_CONV = lambda w: np.transpose(w, (2, 3, 1, 0))         # [O, I, kh, kw] -> [kh, kw, I, O]
_DEPTHWISE = lambda w: np.transpose(w, (2, 3, 0, 1))    # [C, 1, kh, kw] -> [kh, kw, C, 1]
_SAME = lambda w: w

Assignment = Tuple[tf.Variable, Callable[[np.ndarray], np.ndarray]]


def _layer_norm(prefix: str, layer: keras.layers.LayerNormalization) -> Dict[str, Assignment]:
  return {f"{prefix}.weight": (layer.gamma, _SAME), f"{prefix}.bias": (layer.beta, _SAME)}


def _weighted(prefix: str, kernel: tf.Variable, bias: tf.Variable,
              transform: Callable) -> Dict[str, Assignment]:
  return {f"{prefix}.weight": (kernel, transform), f"{prefix}.bias": (bias, _SAME)}


def pvtv2_variable_map(encoder: PVTv2Encoder) -> Dict[str, Assignment]:
  """PyTorch state-dict name -> (our variable, layout transform), for a built encoder."""
  names: Dict[str, Assignment] = {}
  # pylint: disable=protected-access
  for stage, (embed, blocks, norm) in enumerate(zip(encoder._embeds, encoder._stages,
                                                    encoder._norms)):
    s = stage + 1
    names.update(_weighted(f"patch_embed{s}.proj", embed._conv.kernel, embed._conv.bias, _CONV))
    names.update(_layer_norm(f"patch_embed{s}.norm", embed._norm))
    for j, block in enumerate(blocks):
      p = f"block{s}.{j}"
      attn, mlp = block._attn, block._mlp
      names.update(_layer_norm(f"{p}.norm1", block._norm1))
      names.update(_layer_norm(f"{p}.norm2", block._norm2))
      for name, dense in (("q", attn._q), ("kv", attn._kv), ("proj", attn._proj)):
        names.update(_weighted(f"{p}.attn.{name}", dense.kernel, dense.bias, _LINEAR))
      if hasattr(attn, "_sr"):
        names.update(_weighted(f"{p}.attn.sr", attn._sr.kernel, attn._sr.bias, _CONV))
        names.update(_layer_norm(f"{p}.attn.norm", attn._sr_norm))
      names.update(_weighted(f"{p}.mlp.fc1", mlp._fc1.kernel, mlp._fc1.bias, _LINEAR))
      names.update(_weighted(f"{p}.mlp.dwconv.dwconv", mlp._dw.depthwise_kernel,
                             mlp._dw.bias, _DEPTHWISE))
      names.update(_weighted(f"{p}.mlp.fc2", mlp._fc2.kernel, mlp._fc2.bias, _LINEAR))
    names.update(_layer_norm(f"norm{s}", norm))
  # pylint: enable=protected-access
  return names


def load_pvtv2_state_dict(encoder: PVTv2Encoder,
                          state: Mapping[str, np.ndarray]) -> List[str]:
  """Assigns every variable of a built ``encoder`` from a PyTorch PVTv2 state dict.

  Returns:
    The state-dict names that were not used (the classifier ``head.*``).

  Raises:
    ValueError: a variable without its array, a shape mismatch, or an array of
      the file that is neither used nor the classifier's.
  """
  mapping = pvtv2_variable_map(encoder)
  if len(mapping) != len(encoder.weights):
    raise ValueError(f"PVTv2 import: {len(encoder.weights)} encoder variables but "
                     f"{len(mapping)} names mapped; the encoder's layout changed.")
  missing = sorted(set(mapping) - set(state))
  if missing:
    raise ValueError(f"PVTv2 import: the state dict lacks {len(missing)} arrays the "
                     f"encoder needs, e.g. {missing[:5]} (another variant?).")
  unused = sorted(set(state) - set(mapping))
  unexpected = [n for n in unused if not n.startswith("head.")]
  if unexpected:
    raise ValueError(f"PVTv2 import: {len(unexpected)} arrays of the state dict have "
                     f"no place in the encoder, e.g. {unexpected[:5]} (another variant?).")
  for name, (variable, transform) in mapping.items():
    value = transform(np.asarray(state[name]))
    if tuple(value.shape) != tuple(variable.shape):
      raise ValueError(f"PVTv2 import: {name} has shape {np.shape(state[name])}, which "
                       f"does not fit {variable.name} {tuple(variable.shape)}.")
    variable.assign(value.astype(variable.dtype.as_numpy_dtype))
  return unused


def main(argv):
  del argv
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
  from deeplab_panoptic.tools.import_deeplab2 import build_model_from_flags, write_imported_checkpoint  # pylint: disable=g-import-not-at-top,g-multiple-import
  f = flags.FLAGS
  model = build_model_from_flags("a recipe whose pixel encoder is PVTv2Encoder")
  if not isinstance(model.pixel_encoder, PVTv2Encoder):
    raise app.UsageError(f"the recipe's pixel encoder is {type(model.pixel_encoder).__name__},"
                         " not PVTv2Encoder.")
  try:
    with np.load(f.state_dict) as data:
      state = {k: data[k] for k in data.files}
  except (OSError, ValueError) as e:
    raise app.UsageError(f"cannot read --state_dict={f.state_dict}: {e}") from e
  unused = load_pvtv2_state_dict(model.pixel_encoder, state)
  print(f"assigned {len(model.pixel_encoder.weights)} encoder variables; "
        f"left out {len(unused)} classifier arrays")
  print("wrote", write_imported_checkpoint(model, f.output_dir))


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
  import deeplab_panoptic.main  # pylint: disable=g-import-not-at-top,unused-import
  flags.DEFINE_string("state_dict", None, ".npz of the PyTorch PVTv2 state dict.")
  flags.DEFINE_string("output_dir", None, "Where our checkpoint (ckpt-0) is written.")
  flags.mark_flags_as_required(["state_dict", "output_dir"])
  app.run(main)
