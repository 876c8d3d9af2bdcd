r"""Imports a Hugging Face Mask2Former (``save_pretrained`` folder) as our checkpoint + gin.

    python -m deeplab_panoptic.tools.import_hf_mask2former \
      --hf_model_dir=D --output_dir=O

reads ``D/config.json`` (a ``Mask2FormerConfig``: a Swin or bottleneck-ResNet
``backbone_config``, widths, layers, queries, classes) and ``D/model.safetensors``
(or the shards of ``model.safetensors.index.json``) with safetensors' numpy API
(no torch), builds the same model here:

| Hugging Face | ours |
|---|---|
| ``SwinBackbone`` / ``ResNetBackbone`` (``model.pixel_level_module.encoder``) | ``SwinEncoder`` / ``TorchvisionResNetEncoder``, ``input_normalization = True`` |
| ``Mask2FormerPixelDecoder`` (``model.pixel_level_module.decoder``) | ``DeformableEncoder`` as ``configs/models/mask2former_pixel_decoder.gin`` |
| ``Mask2FormerTransformerModule`` + ``class_predictor`` | ``Mask2FormerDecoder`` (``decoder_layers - 1`` layers) |

assigns every variable (``deeplab_panoptic/tools/hf_mask2former/``), checks that
every array of the file was used except ``IGNORED`` (training-only or never
run: listed in the report), and writes to ``O``:

* ``ckpt-0``: ``tf.train.Checkpoint(model=...)``, what ``main.py`` writes and
  ``ExperimentConfig.init_checkpoint`` reads;
* ``model.gin``: the bindings that rebuild this model (``MaskTransformer`` and its
  parts, every value from ``config.json``), to include in a recipe;
* ``import_report.json``: the arrays used per part and the ones ignored.

The images of our pipeline are in [-1, 1]; the encoder converts them to the
``(pixel / 255 - mean) / std`` the weights were trained on, with the mean / std of
``D/preprocessor_config.json`` when the folder has one, else ImageNet's
(``configs/models/imagenet_input_normalization.gin``, the default of
transformers' ``Mask2FormerImageProcessor``).

A missing folder or file, an unreadable config, a backbone or option this
library does not build, and a missing, unused or misshapen array are each one
error line naming it, raised before the model is built where the config shows it.
"""

import json
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
IMAGENET_GIN = "configs/models/imagenet_input_normalization.gin"
PREFIXES = {"encoder": "model.pixel_level_module.encoder.",
            "pixel_decoder": "model.pixel_level_module.decoder.",
            "transformer_decoder": "model.transformer_module.",
            "class_predictor": "class_predictor."}
# Arrays of the file that are no weight of the inference model: (what, why).
IGNORED = (
    (".num_batches_tracked", "batch-norm step counters (training only)"),
    ("criterion.", "the loss's class weights (training only)"),
    (PREFIXES["encoder"] + "swin.layernorm.", "SwinBackbone's final norm, which its "
     "forward never runs"),
)
# The pixel decoder's and transformer decoder's memory levels, coarse to fine
# (transformers' Mask2Former: the three coarsest backbone strides).
LEVEL_STRIDES = (32, 16, 8)
DEFORMABLE_POINTS = 4          # transformers' Mask2Former: n_points=4, fixed
GROUP_NORM_GROUPS = 32         # transformers' Mask2Former: nn.GroupNorm(32, ...), fixed
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def _fail(message: str):
  raise ValueError(f"import_hf_mask2former: {message}")


def _read_json(path: str, what: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    _fail(f"cannot read {what} {path}: {e}")


def read_config(model_dir: str) -> dict:
  """``config.json`` of a ``save_pretrained`` folder; raises on a missing folder / file."""
  if not os.path.isdir(model_dir):
    _fail(f"--hf_model_dir={model_dir}: no such directory.")
  path = os.path.join(model_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    _fail(f"--hf_model_dir={model_dir} has no {CONFIG_FILE} (a save_pretrained folder?).")
  config = _read_json(path, "the config")
  if config.get("model_type") != "mask2former":
    _fail(f"{path}: model_type is {config.get('model_type')!r}, not 'mask2former'.")
  return config


def weight_files(model_dir: str) -> List[str]:
  """The safetensors files of the folder (one file, or the index's shards)."""
  single = os.path.join(model_dir, WEIGHTS_FILE)
  if os.path.isfile(single):
    return [single]
  index = os.path.join(model_dir, WEIGHTS_INDEX)
  if not os.path.isfile(index):
    _fail(f"--hf_model_dir={model_dir} has neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX} "
          "(a PyTorch .bin folder? save it again with safe_serialization).")
  shards = sorted(set(_read_json(index, "the weights index").get("weight_map", {}).values()))
  paths = [os.path.join(model_dir, s) for s in shards]
  missing = [p for p in paths if not os.path.isfile(p)]
  if not paths or missing:
    _fail(f"{index} names shards that are not there: {missing[:2] or 'none listed'}.")
  return paths


def read_weights(paths: Sequence[str]) -> Dict[str, np.ndarray]:
  """Every array of the safetensors files, by name (numpy; no torch)."""
  from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  weights = {}
  for path in paths:
    try:
      weights.update(load_file(path))
    except (OSError, ValueError, SafetensorError) as e:
      _fail(f"cannot read {path}: {e}")
  return weights


def _require(config: dict, key: str, allowed, where: str) -> None:
  if config.get(key) not in allowed:
    _fail(f"{where}.{key} = {config.get(key)!r} is not supported here (only "
          f"{', '.join(repr(a) for a in allowed)}).")


def _swin_bindings(backbone: dict) -> List[str]:
  for key, allowed in (("qkv_bias", (True,)), ("hidden_act", ("gelu",)),
                       ("patch_size", (4,)), ("use_absolute_embeddings", (False, None)),
                       ("num_channels", (3,))):
    _require(backbone, key, allowed, "backbone_config")
  return ["MaskTransformer.pixel_encoder = @SwinEncoder()",
          f"SwinEncoder.embed_dim = {int(backbone['embed_dim'])}",
          f"SwinEncoder.depths = {tuple(backbone['depths'])}",
          f"SwinEncoder.num_heads = {tuple(backbone['num_heads'])}",
          f"SwinEncoder.window_size = {int(backbone['window_size'])}",
          f"SwinEncoder.mlp_ratio = {float(backbone['mlp_ratio'])}",
          f"SwinEncoder.drop_path_rate = {float(backbone.get('drop_path_rate', 0.0))}",
          f"SwinEncoder.layer_norm_epsilon = {float(backbone['layer_norm_eps'])}",
          "SwinEncoder.input_normalization = True"]


def _resnet_bindings(backbone: dict) -> List[str]:
  for key, allowed in (("layer_type", ("bottleneck",)), ("hidden_act", ("relu",)),
                       ("downsample_in_first_stage", (False, None)), ("num_channels", (3,))):
    _require(backbone, key, allowed, "backbone_config")
  return ["MaskTransformer.pixel_encoder = @TorchvisionResNetEncoder()",
          f"TorchvisionResNetEncoder.depths = {tuple(backbone['depths'])}",
          f"TorchvisionResNetEncoder.stem_width = {int(backbone['embedding_size'])}",
          f"TorchvisionResNetEncoder.widths = {tuple(backbone['hidden_sizes'])}",
          "TorchvisionResNetEncoder.stride_in_1x1 = "
          f"{bool(backbone.get('downsample_in_bottleneck', False))}",
          # detectron2's default MODEL.RESNETS.NORM = "FrozenBN" (detectron2/config/
          # defaults.py), which Mask2Former's ResNet configs keep (NORM commented
          # out; FREEZE_AT 0: every stage trained; facebookresearch/Mask2Former
          # configs/coco/panoptic-segmentation/Base-COCO-PanopticSegmentation.yaml).
          "TorchvisionResNetEncoder.freeze_batch_norm = True",
          "TorchvisionResNetEncoder.input_normalization = True"]


def encoder_bindings(config: dict) -> List[str]:
  """The pixel encoder's gin bindings from ``config["backbone_config"]``."""
  backbone = config.get("backbone_config")
  if not isinstance(backbone, dict) or config.get("use_timm_backbone"):
    _fail("config.json has no backbone_config (a timm or named backbone is not "
          "supported; only transformers' Swin and ResNet backbones).")
  kind = backbone.get("model_type")
  builders = {"swin": _swin_bindings, "resnet": _resnet_bindings}
  if kind not in builders:
    _fail(f"unknown backbone type backbone_config.model_type = {kind!r} (supported: "
          f"{sorted(builders)}).")
  if list(backbone.get("out_features") or []) != STAGES:
    _fail(f"backbone_config.out_features = {backbone.get('out_features')!r}; Mask2Former "
          f"reads {STAGES}.")
  return builders[kind](backbone)


def _num_classes(config: dict) -> int:
  labels = config.get("id2label") or {}
  if not labels:
    _fail("config.json has no id2label: the number of classes is unknown.")
  return len(labels)


def _fpn_strides(common_stride: int) -> Tuple[int, ...]:
  """The FPN steps below the finest level: 8 -> ``common_stride`` (4 gives (4,))."""
  strides, s = [], min(LEVEL_STRIDES) // 2
  while s >= common_stride:
    strides.append(s)
    s //= 2
  return tuple(strides)


def head_bindings(config: dict) -> List[str]:
  """The pixel decoder's and transformer decoder's bindings from the config."""
  for key, allowed in (("pre_norm", (False,)), ("activation_function", ("relu",)),
                       ("feature_strides", ([4, 8, 16, 32],)), ("common_stride", (4,))):
    _require(config, key, allowed, "config")
  if int(config["decoder_layers"]) < 2:
    _fail(f"config.decoder_layers = {config['decoder_layers']}: at least 2 (it counts the "
          "prediction before the first layer).")
  feature, hidden = int(config["feature_size"]), int(config["hidden_dim"])
  projection = feature != hidden or bool(config.get("enforce_input_projection"))
  return [
      "MaskTransformer.pixel_decoder = @DeformableEncoder()",
      f"DeformableEncoder.input_strides = {LEVEL_STRIDES}",
      "DeformableEncoder.num_extra_levels = 0",
      f"DeformableEncoder.hidden_dim = {feature}",
      f"DeformableEncoder.num_layers = {int(config['encoder_layers'])}",
      f"DeformableEncoder.num_heads = {int(config['num_attention_heads'])}",
      f"DeformableEncoder.num_points = {DEFORMABLE_POINTS}",
      f"DeformableEncoder.ffn_dim = {int(config['encoder_feedforward_dim'])}",
      f"DeformableEncoder.dropout = {float(config.get('dropout', 0.0))}",
      f"DeformableEncoder.num_groups = {GROUP_NORM_GROUPS}",
      "DeformableEncoder.position_offset = 0.0",
      f"DeformableEncoder.fpn_strides = {_fpn_strides(int(config['common_stride']))}",
      f"DeformableEncoder.mask_features_dim = {int(config['mask_feature_size'])}",
      "MaskTransformer.transformer_decoder = @Mask2FormerDecoder()",
      f"Mask2FormerDecoder.num_classes = {_num_classes(config)}",
      f"Mask2FormerDecoder.num_queries = {int(config['num_queries'])}",
      f"Mask2FormerDecoder.hidden_dim = {hidden}",
      f"Mask2FormerDecoder.num_heads = {int(config['num_attention_heads'])}",
      f"Mask2FormerDecoder.ffn_dim = {int(config['dim_feedforward'])}",
      f"Mask2FormerDecoder.num_layers = {int(config['decoder_layers']) - 1}",
      f"Mask2FormerDecoder.level_strides = {LEVEL_STRIDES}",
      f"Mask2FormerDecoder.mask_stride = {int(config['common_stride'])}",
      f"Mask2FormerDecoder.mask_dim = {int(config['mask_feature_size'])}",
      f"Mask2FormerDecoder.input_projection = {projection}",
      f"Mask2FormerDecoder.dropout = {float(config.get('dropout', 0.0))}",
      f"MaskTransformer.output_stride = {int(config['common_stride'])}",
  ]


def normalization_lines(model_dir: str) -> List[str]:
  """The input normalisation: the folder's preprocessor mean / std, else ImageNet's gin."""
  path = os.path.join(model_dir, PREPROCESSOR_FILE)
  if not os.path.isfile(path):
    return [f"# {PREPROCESSOR_FILE} absent: transformers' Mask2FormerImageProcessor "
            "default (ImageNet).", f"include '{IMAGENET_GIN}'"]
  processor = _read_json(path, "the preprocessor config")
  mean, std = processor.get("image_mean"), processor.get("image_std")
  if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3):
    _fail(f"{path}: image_mean / image_std must be 3 numbers each, got {mean!r}, {std!r}.")
  return [f"# From {PREPROCESSOR_FILE}.",
          f"InputNormalization.mean = {tuple(float(m) for m in mean)}",
          f"InputNormalization.std = {tuple(float(s) for s in std)}"]


def gin_text(model_dir: str, config: dict) -> str:
  """``model.gin``: the header, the normalisation and every binding of the model."""
  header = [
      "# Mask2Former imported from a Hugging Face save_pretrained folder by",
      f"#   python -m deeplab_panoptic.tools.import_hf_mask2former --hf_model_dir={model_dir}",
      f"# (config.json of transformers {config.get('transformers_version', '?')}).",
      "# The weights are ckpt-0 beside this file: ExperimentConfig.init_checkpoint = <this",
      "# folder> (init_checkpoint_parts = ['all'] keeps the class head too).",
  ]
  lines = (header + [""] + normalization_lines(model_dir) + [""] + encoder_bindings(config)
           + [""] + head_bindings(config))
  return "\n".join(lines) + "\n"


def build_model(text: str, image_size: Tuple[int, int]):
  """A built ``MaskTransformer`` from ``model.gin``'s text (gin's config is replaced)."""
  import gin  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic import registry  # pylint: disable=g-import-not-at-top,unused-import
  from deeplab_panoptic.cli import recipes  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.modeling.meta_arch import MaskTransformer  # pylint: disable=g-import-not-at-top
  recipes.add_search_paths()   # the include of configs/models/...
  gin.clear_config()
  gin.parse_config(text)
  model = MaskTransformer()
  model(tf.zeros([1, image_size[0], image_size[1], 3]), training=False)
  return model


def _ignored_reason(name: str):
  for pattern, reason in IGNORED:
    if name.endswith(pattern) if pattern.startswith(".") else name.startswith(pattern):
      return reason
  return None


def assign_model(model, weights: Dict[str, np.ndarray]) -> Dict[str, object]:
  """Assigns every part of ``model``; raises on an array no part used (not ``IGNORED``).

  Returns:
    ``{"used": {part: number of arrays}, "ignored": {array name: reason}}``.
  """
  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.tools.hf_mask2former import encoders, pixel_decoder, transformer_decoder
  used = {
      "pixel_encoder": encoders.assign(model.pixel_encoder, weights, PREFIXES["encoder"]),
      "pixel_decoder": pixel_decoder.assign(model.pixel_decoder, weights,
                                            PREFIXES["pixel_decoder"]),
      "transformer_decoder": transformer_decoder.assign(
          model.transformer_decoder, weights, PREFIXES["transformer_decoder"],
          PREFIXES["class_predictor"]),
  }
  names = [n for part in used.values() for n in part]
  if len(names) != len(set(names)):
    _fail("an array was assigned to two parts; the mappings overlap.")
  rest = sorted(set(weights) - set(names))
  ignored = {n: _ignored_reason(n) for n in rest}
  unplaced = [n for n, reason in ignored.items() if reason is None]
  if unplaced:
    _fail(f"{len(unplaced)} arrays of the file have no place in the model, e.g. "
          f"{unplaced[:3]}.")
  return {"used": {k: len(v) for k, v in used.items()}, "ignored": ignored}


def import_model(model_dir: str, output_dir: str,
                 image_size: Tuple[int, int] = (64, 64)) -> Dict[str, object]:
  """Reads ``model_dir``, writes ``output_dir``'s checkpoint, gin and report.

  Args:
    model_dir: a ``save_pretrained`` folder of ``Mask2FormerForUniversalSegmentation``.
    output_dir: where ``ckpt-0``, ``model.gin`` and ``import_report.json`` go.
    image_size: the dummy image the model is built on (any size).

  Returns:
    The report (also written as ``import_report.json``), with ``checkpoint``.

  Raises:
    ValueError: one line naming the missing file, unsupported option or array.
  """
  config = read_config(model_dir)
  paths = weight_files(model_dir)
  text = gin_text(model_dir, config)       # every config check before TensorFlow starts
  from deeplab_panoptic.tools.import_deeplab2 import write_imported_checkpoint  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.utils import files  # pylint: disable=g-import-not-at-top
  weights = read_weights(paths)
  model = build_model(text, image_size)
  report = assign_model(model, weights)
  os.makedirs(output_dir, exist_ok=True)
  report["checkpoint"] = write_imported_checkpoint(model, output_dir)
  report["transformers_version"] = config.get("transformers_version")
  files.write_text_atomic(os.path.join(output_dir, "model.gin"), text)
  files.write_json_atomic(os.path.join(output_dir, "import_report.json"), report)
  return report


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  del argv
  f = flags.FLAGS
  try:
    report = import_model(f.hf_model_dir, f.output_dir)
  except ValueError as e:
    raise SystemExit(str(e)) from None   # the one line, not the whole usage text
  print("arrays used:", ", ".join(f"{k} {v}" for k, v in report["used"].items()))
  reasons = {}
  for name, reason in report["ignored"].items():
    reasons.setdefault(reason, []).append(name)
  for reason, names in reasons.items():
    print(f"ignored {len(names)} ({reason}): {', '.join(names[:2])}"
          + (", ..." if len(names) > 2 else ""))
  print("wrote", report["checkpoint"], "and", os.path.join(f.output_dir, "model.gin"))


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
  flags.DEFINE_string("hf_model_dir", None, "A save_pretrained folder of transformers' "
                      "Mask2FormerForUniversalSegmentation (config.json + model.safetensors).")
  flags.DEFINE_string("output_dir", None, "Where ckpt-0, model.gin and import_report.json "
                      "are written.")
  flags.mark_flags_as_required(["hf_model_dir", "output_dir"])
  app.run(main)
