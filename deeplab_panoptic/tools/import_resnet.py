r"""Imports torchvision / timm or Hugging Face ResNet weights into TorchvisionResNetEncoder.

    python -m deeplab_panoptic.tools.import_resnet \
      --gin_file=RECIPE.gin [--gin_param=...] \
      --safetensors=model.safetensors [--prefix=resnet.] [--naming=auto|hf|torchvision] \
      --output_dir=/tmp/resnet_imported

reads the file with safetensors' numpy API (no torch), builds the recipe's model,
assigns its pixel encoder (which must be ``TorchvisionResNetEncoder``) and writes
our checkpoint (``ckpt-0``) for ``ExperimentConfig.init_checkpoint`` with
``init_checkpoint_parts = ['pixel_encoder']``. ImageNet ResNet checkpoints come
in torchvision's names (torchvision, timm, detectron2's converted ``R-50.pkl``
once saved as safetensors) or in transformers' (``ResNetForImageClassification``:
``--prefix=resnet.``; ``ResNetBackbone``: ``--prefix=``; Mask2Former:
``model.pixel_level_module.encoder.``).

| torchvision / timm | transformers (under the prefix) | ours |
|---|---|---|
| ``conv1`` / ``bn1`` | ``embedder.embedder.convolution`` / ``.normalization`` | ``stem.conv`` / ``stem.bn`` |
| ``layer{i+1}.{j}.conv{k+1}`` / ``bn{k+1}`` | ``encoder.stages.{i}.layers.{j}.layer.{k}.convolution`` / ``.normalization`` | ``stages[i][j].conv{k+1}.conv`` / ``.bn`` |
| ``layer{i+1}.{j}.downsample.0`` / ``.1`` | ``encoder.stages.{i}.layers.{j}.shortcut.convolution`` / ``.normalization`` | ``stages[i][j].shortcut.conv`` / ``.bn`` |

Convs ``[O, I, kh, kw]`` -> ``[kh, kw, I, O]``; a batch norm's ``weight``,
``bias``, ``running_mean``, ``running_var`` are ``gamma``, ``beta``,
``moving_mean``, ``moving_variance``; its ``num_batches_tracked`` (a step counter)
is not used. The classifier (``fc.*``; transformers' ``classifier.*``, outside the
``resnet.`` prefix) is left out. Every encoder variable must be found with its
shape and every other array under the prefix used; anything else is one
``ValueError`` naming the array.
"""

from typing import Callable, Dict, List, Mapping, Tuple

import numpy as np
import tensorflow as tf

from deeplab_panoptic.modeling.pixel_encoders.torchvision_resnet import (
    ConvBN, TorchvisionResNetEncoder)

NAMINGS = ("auto", "hf", "torchvision")
# Arrays under the prefix that are no weight of the encoder.
TRAINING_ONLY_SUFFIXES = (".num_batches_tracked",)
CLASSIFIER_PREFIXES = {"hf": ("classifier.",), "torchvision": ("fc.",)}
Entry = Tuple[tf.Variable, str, Callable[[np.ndarray], np.ndarray]]


def _same(array: np.ndarray) -> np.ndarray:
  return array


def _conv(array: np.ndarray) -> np.ndarray:
  return np.transpose(array, (2, 3, 1, 0))            # [O, I, kh, kw] -> [kh, kw, I, O]


def _conv_bn(conv: str, norm: str, layer: ConvBN) -> List[Entry]:
  bn = layer.bn
  return [(layer.conv.kernel, f"{conv}.weight", _conv),
          (bn.gamma, f"{norm}.weight", _same),
          (bn.beta, f"{norm}.bias", _same),
          (bn.moving_mean, f"{norm}.running_mean", _same),
          (bn.moving_variance, f"{norm}.running_var", _same)]


def _hf_entries(encoder: TorchvisionResNetEncoder) -> List[Entry]:
  p = "embedder.embedder"
  out = _conv_bn(f"{p}.convolution", f"{p}.normalization", encoder.stem)
  for i, blocks in enumerate(encoder.stages):
    for j, block in enumerate(blocks):
      layers = [(f"layer.{k}", conv_bn)
                for k, conv_bn in enumerate((block.conv1, block.conv2, block.conv3))]
      if block.shortcut is not None:
        layers.append(("shortcut", block.shortcut))
      for name, conv_bn in layers:
        p = f"encoder.stages.{i}.layers.{j}.{name}"
        out += _conv_bn(f"{p}.convolution", f"{p}.normalization", conv_bn)
  return out


def _torchvision_entries(encoder: TorchvisionResNetEncoder) -> List[Entry]:
  out = _conv_bn("conv1", "bn1", encoder.stem)
  for i, blocks in enumerate(encoder.stages):
    for j, block in enumerate(blocks):
      p = f"layer{i + 1}.{j}"
      for k, conv_bn in enumerate((block.conv1, block.conv2, block.conv3)):
        out += _conv_bn(f"{p}.conv{k + 1}", f"{p}.bn{k + 1}", conv_bn)
      if block.shortcut is not None:
        out += _conv_bn(f"{p}.downsample.0", f"{p}.downsample.1", block.shortcut)
  return out


def detect_naming(weights: Mapping[str, np.ndarray], prefix: str) -> str:
  """"hf" or "torchvision", from the stem conv's name; raises when neither is there."""
  if prefix + "embedder.embedder.convolution.weight" in weights:
    return "hf"
  if prefix + "conv1.weight" in weights:
    return "torchvision"
  raise ValueError(f"ResNet import: neither {prefix}embedder.embedder.convolution.weight "
                   f"(transformers) nor {prefix}conv1.weight (torchvision / timm) is in the "
                   f"file, whose names look like {sorted(weights)[:2]} (--prefix?).")


def resnet_entries(encoder: TorchvisionResNetEncoder, naming: str) -> List[Entry]:
  """``(variable, name without prefix, convert)`` of a built encoder in ``naming``."""
  entries = _hf_entries(encoder) if naming == "hf" else _torchvision_entries(encoder)
  if len(entries) != len(encoder.weights):
    raise ValueError(f"ResNet import: {len(encoder.weights)} encoder variables but "
                     f"{len(entries)} mapped; the encoder's layout changed.")
  return entries


def load_resnet_state(encoder: TorchvisionResNetEncoder, weights: Mapping[str, np.ndarray],
                      prefix: str = "", naming: str = "auto") -> List[str]:
  """Sets every variable of a built ``encoder`` from the arrays named ``<prefix><name>``.

  Args:
    encoder: a built ``TorchvisionResNetEncoder``.
    weights: name -> array (e.g. ``safetensors.numpy.load_file``).
    prefix: the encoder's names start with it.
    naming: "hf", "torchvision" or "auto" (from the stem conv's name).

  Returns:
    The names used (with the prefix), in the order assigned.

  Raises:
    ValueError: one line naming the missing, unused or misshapen array.
  """
  if naming not in NAMINGS:
    raise ValueError(f"ResNet import: naming must be one of {NAMINGS}, got {naming!r}.")
  if naming == "auto":
    naming = detect_naming(weights, prefix)
  values = []
  for variable, name, convert in resnet_entries(encoder, naming):
    key = prefix + name
    if key not in weights:
      raise ValueError(f"ResNet import: {key} is missing (another depth or width, or not "
                       "a bottleneck ResNet?).")
    value = convert(np.asarray(weights[key]))
    if tuple(value.shape) != tuple(variable.shape):
      raise ValueError(f"ResNet import: {key} {tuple(np.shape(weights[key]))} does not fit "
                       f"{variable.name} {tuple(variable.shape)}.")
    values.append((variable, key, value))
  used = [key for _, key, _ in values]
  skipped = tuple(prefix + c for c in CLASSIFIER_PREFIXES[naming])
  unused = sorted(k for k in set(weights) - set(used)
                  if k.startswith(prefix) and not k.startswith(skipped)
                  and not k.endswith(TRAINING_ONLY_SUFFIXES))
  if unused:
    raise ValueError(f"ResNet import: {len(unused)} arrays under {prefix!r} have no place "
                     f"in the encoder, e.g. {unused[:3]} (another depth?).")
  for variable, _, value in values:
    variable.assign(value.astype(variable.dtype.as_numpy_dtype))
  return used


def main(argv):
  del argv
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
  from deeplab_panoptic.tools.import_deeplab2 import build_model_from_flags, write_imported_checkpoint  # pylint: disable=g-import-not-at-top,g-multiple-import
  from deeplab_panoptic.tools.import_swin import read_safetensors  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if not tf.io.gfile.exists(f.safetensors):
    raise app.UsageError(f"--safetensors={f.safetensors}: no such file.")
  model = build_model_from_flags("a recipe whose pixel encoder is TorchvisionResNetEncoder")
  if not isinstance(model.pixel_encoder, TorchvisionResNetEncoder):
    raise app.UsageError(f"the recipe's pixel encoder is {type(model.pixel_encoder).__name__},"
                         " not TorchvisionResNetEncoder.")
  try:
    weights = read_safetensors(f.safetensors, "")
    used = load_resnet_state(model.pixel_encoder, weights, f.prefix, f.naming)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  print(f"assigned {len(used)} encoder arrays; left out {len(weights) - len(used)} "
        "(classifier, batch-norm step counters, arrays outside the prefix)")
  print("wrote", write_imported_checkpoint(model, f.output_dir))


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
  import deeplab_panoptic.main  # pylint: disable=g-import-not-at-top,unused-import
  flags.DEFINE_string("safetensors", None, "ResNet weights (.safetensors).")
  flags.DEFINE_string("prefix", "", "Prefix of the encoder's names in the file, e.g. "
                      "'resnet.' or 'model.pixel_level_module.encoder.'.")
  flags.DEFINE_enum("naming", "auto", NAMINGS, "The file's names: transformers', "
                    "torchvision's / timm's, or auto (from the stem conv's name).")
  flags.DEFINE_string("output_dir", None, "Where our checkpoint (ckpt-0) is written.")
  flags.mark_flags_as_required(["safetensors", "output_dir"])
  app.run(main)
