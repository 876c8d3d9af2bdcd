r"""Writes golden fixtures from deeplab2 for the checkpoint importer's test.

    git clone https://github.com/google-research/deeplab2 /tmp/src/deeplab2
    python tools/golden/deeplab2_golden.py --deeplab2_path=/tmp/src/deeplab2 \
      --output_dir=tests/fixtures/deeplab2

(``--deeplab2_commit=<hash>`` when the checkout is not a git work tree.) For each
small configuration in ``CONFIGS`` (a tiny kMaX-DeepLab with deeplab2's ResNet-50
blocks, a tiny MaX-DeepLab-S) it builds deeplab2's own model
(``model/kmax_deeplab.KMaXDeepLab``, ``model/deeplab.DeepLab``) from deeplab2's
COCO config with the widths and depths given there, gives every variable a
random value (zero-initialised gammas included, so that no mapping error can hide
behind a default; batch-norm statistics set by ``calibrate_batch_norms``), saves
it with ``tf.train.Checkpoint(**model.checkpoint_items)`` as deeplab2's trainer
does, runs the model in inference mode on a fixed random image and writes
``<name>.npz``:

* ``ckpt/<key>``: every variable of that checkpoint, keyed by its checkpoint name
  (``encoder/_stem/_conv/kernel/.ATTRIBUTES/VARIABLE_VALUE``, ...), float32;
* ``image``: the input, ``[1, H, W, 3]`` float32 in [0, 255] (deeplab2 maps it to
  [-1, 1] itself);
* ``out/<deeplab2 output key>``: the raw outputs (``transformer_class_logits``,
  ``pixel_space_mask_logits``, ``pixel_space_normalized_feature``, and the
  auxiliary ``semantic_logits``), float32;
* ``metadata``: JSON with the deeplab2 commit, the TF and tf_keras versions, the
  configuration (its ``CONFIGS`` entry and deeplab2's resulting model options)
  and the variable count.

With the same checkout and TF build the output is byte-identical (every draw is
seeded). deeplab2 is only run here, never copied: it needs TF 2.x with Keras 2
(``TF_USE_LEGACY_KERAS=1`` with ``tf_keras`` installed; this script sets it) and
its protos compiled (``protoc`` is run on ``<deeplab2_path>/*.proto`` when the
``*_pb2.py`` files are missing). The run-time changes made to deeplab2 (``_patch_kmax``,
``_patch_max_deeplab``, and the post-processor dropped in ``build_model``) set
widths and depths that deeplab2 hard-codes, nothing else.
"""

import argparse
import functools
import glob
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

CHECKPOINT_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# Keys of a tf.train.Checkpoint that hold no model weight.
_NON_VARIABLE_KEYS = ("_CHECKPOINTABLE_OBJECT_GRAPH",)

# The small configurations. ``textproto`` is deeplab2's own COCO config, the rest
# overrides it; every field is read by ``_config`` / ``_patch_deeplab2``.
CONFIGS = {
    "kmax_r50_tiny": {
        "meta_architecture": "kmax",
        "textproto": "configs/coco/kmax_deeplab/kmax_meta_r50_os32.textproto",
        "input_size": 65,
        # A seed with which every k-means layer assigns pixels to 5-6 centres
        # (its argmax exercised), the closest top-2 margin 5.7e-4.
        "seed": 22,
        # deeplab2 axial_resnet.get_model('resnet50', ...) kwargs.
        # Stem x0.5 (32 wide): at x0.25 it would be as wide as stage 2's output,
        # where deeplab2's first block takes a strided identity shortcut (ours a
        # 1x1 projection, the only case in which the two differ).
        "encoder": {"num_blocks": [1, 2, 1, 1], "width_multiplier": 0.0625,
                    "stem_width_multiplier": 0.5},
        # deeplab2 pixel_decoder/kmax.KMaXPixelDecoder (strides 32, 16, 8, 4).
        "pixel_decoder": {"dims": [32, 16, 16, 8], "num_blocks": [1, 2, 1, 1],
                          "block_type": ["axial", "axial", "bottleneck", "bottleneck"]},
        # deeplab2 transformer_decoder/kmax: layers per stride 32, 16, 8; the
        # cluster-centre width (deeplab2: 256) and the kMaX layers' dual-path
        # width 128 * transformer_expansion (bottleneck x2, key x1, value x2).
        "transformer_decoder": {"num_blocks": [1, 1, 1], "num_mask_slots": 16,
                                "center_dim": 64, "transformer_expansion": 0.25,
                                "feed_forward_network_channels": 64},
        "head": {"num_classes_with_void": 9, "pixel_space_output": 16,
                 "pixel_space_head": 32, "semantic_head": 16, "aspp": 16,
                 "decoder": 16, "low_level_project": [16, 8]},
    },
    "max_s_tiny": {
        "meta_architecture": "max_deeplab",
        "textproto": "configs/coco/max_deeplab/max_deeplab_s_os16_res641_100k.textproto",
        "input_size": 65,
        "seed": 20,
        # deeplab2 axial_resnet_instances.get_model('max_deeplab_s', ...) kwargs.
        "encoder": {"num_blocks": [1, 1, 2, 2], "width_multiplier": 0.0625,
                    "stem_width_multiplier": 0.25, "num_mask_slots": 16,
                    "max_num_mask_slots": 16, "memory_channels": 64,
                    "base_transformer_expansion": 0.125,
                    "global_feed_forward_network_channels": 64,
                    "feed_forward_network_channels": 64},
        "head": {"num_classes_with_void": 9, "pixel_space_output": 16,
                 "pixel_space_head": 32, "semantic_head": 16, "aspp": 16,
                 "decoder": 16, "low_level_project": [16, 8]},
    },
}


def _prepare_deeplab2(path: str) -> str:
  """Makes ``import deeplab2`` load the checkout at ``path``; returns its commit.

  deeplab2 imports itself as the package ``deeplab2``: a link of that name in a
  scratch directory on ``sys.path`` points to the checkout, whatever its name.
  """
  path = os.path.abspath(path)
  if not os.path.isfile(os.path.join(path, "config.proto")):
    raise SystemExit(f"--deeplab2_path={path} is not a deeplab2 checkout (no config.proto).")
  if not os.path.isfile(os.path.join(path, "config_pb2.py")):
    # deeplab2's compile.sh step: protoc deeplab2/*.proto --python_out=.
    root = tempfile.mkdtemp(prefix="deeplab2_protos_")
    os.symlink(path, os.path.join(root, "deeplab2"))
    protos = sorted(os.path.relpath(p, root)
                    for p in glob.glob(os.path.join(root, "deeplab2", "*.proto")))
    subprocess.run(["protoc", *protos, "--python_out=."], cwd=root, check=True)
  scratch = tempfile.mkdtemp(prefix="deeplab2_import_")
  os.symlink(path, os.path.join(scratch, "deeplab2"))
  sys.path.insert(0, scratch)
  try:
    commit = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
  except (subprocess.CalledProcessError, FileNotFoundError):
    commit = ""
  return commit


def _config(spec: dict, deeplab2_path: str):
  """deeplab2's ExperimentOptions: its COCO textproto with ``spec``'s head sizes."""
  from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
  from deeplab2 import config_pb2  # pylint: disable=g-import-not-at-top
  with open(os.path.join(deeplab2_path, spec["textproto"])) as f:
    config = text_format.Parse(f.read(), config_pb2.ExperimentOptions())
  head = spec["head"]
  size = spec["input_size"]
  del config.train_dataset_options.crop_size[:]
  config.train_dataset_options.crop_size.extend([size, size])
  del config.eval_dataset_options.crop_size[:]
  config.eval_dataset_options.crop_size.extend([size, size])
  config.model_options.decoder.aspp_channels = head["aspp"]
  config.model_options.decoder.decoder_channels = head["decoder"]
  options = config.model_options.max_deeplab
  options.pixel_space_head.output_channels = head["pixel_space_output"]
  options.pixel_space_head.head_channels = head["pixel_space_head"]
  options.auxiliary_semantic_head.output_channels = head["num_classes_with_void"]
  options.auxiliary_semantic_head.head_channels = head["semantic_head"]
  for low_level, channels in zip(options.auxiliary_low_level, head["low_level_project"]):
    low_level.channels_project = channels
  config.model_options.backbone.drop_path_keep_prob = 1.0
  return config


class _Patches:
  """Run-time replacements of deeplab2 module attributes, undone by ``undo``."""

  def __init__(self):
    self._saved = []

  def set(self, owner, name, value):
    self._saved.append((owner, name, getattr(owner, name)))
    setattr(owner, name, value)

  def undo(self):
    for owner, name, value in reversed(self._saved):
      setattr(owner, name, value)
    self._saved = []


def _patch_kmax(patches: _Patches, spec: dict):
  """kMaX: the widths and depths deeplab2's kmax_deeplab.py hard-codes."""
  # pylint: disable=g-import-not-at-top
  from deeplab2.model import builder
  from deeplab2.model.pixel_decoder import kmax as kmax_pixel_decoder
  from deeplab2.model.pixel_encoder import axial_resnet
  from deeplab2.model.transformer_decoder import kmax as kmax_transformer
  # pylint: enable=g-import-not-at-top
  enc, dec, tra = spec["encoder"], spec["pixel_decoder"], spec["transformer_decoder"]

  def encoder(pixel_encoder_name, drop_path_keep_prob, input_shape, norm_layer,
              pretrained_weights_path=None):
    del pretrained_weights_path
    return axial_resnet.get_model(pixel_encoder_name, input_shape=input_shape,
                                  bn_layer=norm_layer,
                                  drop_path_keep_prob=drop_path_keep_prob, **enc)

  def pixel_decoder(norm_layer, high_resolution_output_stride=4):
    del high_resolution_output_stride
    return kmax_pixel_decoder.KMaXPixelDecoder(
        name="kmax_pixel_decoder", norm_layer=norm_layer, dims=tuple(dec["dims"]),
        num_blocks=tuple(dec["num_blocks"]), block_type=tuple(dec["block_type"]))

  def transformer_decoder(norm_layer, num_mask_slots, transformer_decoder_drop_path_keep_prob,
                          auxiliary_predictor_func=None):
    # Drop path is training-only; off, so that calibrate_batch_norms is deterministic.
    del num_mask_slots, transformer_decoder_drop_path_keep_prob
    return kmax_transformer.KMaXTransformerDecoder(
        name="kmax_transformer_decoder", auxiliary_predictor_func=auxiliary_predictor_func,
        norm_layer=norm_layer, num_mask_slots=tra["num_mask_slots"],
        transformer_decoder_drop_path_keep_prob=1.0,
        num_blocks=tuple(tra["num_blocks"]))

  patches.set(builder, "create_kmax_meta_pixel_encoder", encoder)
  patches.set(builder, "create_kmax_meta_pixel_decoder", pixel_decoder)
  patches.set(builder, "create_kmax_meta_transformer_decoder", transformer_decoder)
  block = kmax_transformer.transformer_decoder_block
  layer_config = dict(block.keywords["dual_path_transformer_layer_config"],
                      feed_forward_network_channels=tra["feed_forward_network_channels"])
  patches.set(kmax_transformer, "transformer_decoder_block", functools.partial(
      block, transformer_expansion=tra["transformer_expansion"],
      dual_path_transformer_layer_config=layer_config))
  _patch_kmax_center_width(patches, kmax_transformer, tra["center_dim"])


def _patch_kmax_center_width(patches: _Patches, kmax_transformer, width: int):
  """deeplab2's cluster centres and their class / mask projections are 256 wide."""
  decoder_cls = kmax_transformer.KMaXTransformerDecoder
  add_weight = decoder_cls.add_weight

  def narrow_add_weight(self, *args, **kwargs):
    if kwargs.get("name") == "cluster_centers":
      kwargs["shape"] = tuple(kwargs["shape"][:-1]) + (width,)
    return add_weight(self, *args, **kwargs)

  convolutions = kmax_transformer.convolutions

  class NarrowConvolutions:  # the module, with the two projections narrowed
    def __getattr__(self, name):
      return getattr(convolutions, name)

    @staticmethod
    def Conv1D(output_channels, name, *args, **kwargs):  # pylint: disable=invalid-name
      if name in ("class_embedding_projection", "mask_embedding_projection"):
        output_channels = width
      return convolutions.Conv1D(output_channels, name, *args, **kwargs)

  patches.set(decoder_cls, "add_weight", narrow_add_weight)
  patches.set(kmax_transformer, "convolutions", NarrowConvolutions())


def _patch_max_deeplab(patches: _Patches, spec: dict):
  """MaX-DeepLab: deeplab2's builder passes only the backbone options to the encoder."""
  # pylint: disable=g-import-not-at-top
  from deeplab2.model import builder
  from deeplab2.model.encoder import axial_resnet_instances
  # pylint: enable=g-import-not-at-top
  enc = dict(spec["encoder"])
  ffn = enc.pop("feed_forward_network_channels")
  get_model = axial_resnet_instances.get_model

  def tiny_get_model(name, **kwargs):
    group = dict(kwargs.pop("block_group_config", {}))
    group["dual_path_transformer_layer_config"] = {"feed_forward_network_channels": ffn}
    kwargs.pop("width_multiplier", None)
    kwargs.pop("stem_width_multiplier", None)
    return get_model(name, block_group_config=group, **enc, **kwargs)

  patches.set(axial_resnet_instances, "get_model", tiny_get_model)
  del builder


def build_model(spec: dict, deeplab2_path: str):
  """deeplab2's model for ``spec``, built on the input size, post-processor off."""
  # pylint: disable=g-import-not-at-top
  from deeplab2.data import dataset
  from deeplab2.model import deeplab
  from deeplab2.model import kmax_deeplab
  # pylint: enable=g-import-not-at-top
  config = _config(spec, deeplab2_path)
  descriptor = dataset.MAP_NAME_TO_DATASET_INFO["coco_panoptic"]
  patches = _Patches()
  try:
    if spec["meta_architecture"] == "kmax":
      _patch_kmax(patches, spec)
      model = kmax_deeplab.KMaXDeepLab(config, descriptor)
    else:
      _patch_max_deeplab(patches, spec)
      model = deeplab.DeepLab(config, descriptor)
    size = spec["input_size"]
    model._post_processor = lambda result: {}  # pylint: disable=protected-access
    model(tf.zeros([1, size, size, 3]), training=False)
  finally:
    patches.undo()
  return model, config


def randomise(variables, seed: int):
  """Random values for every variable, each kind in a range that keeps a deep
  random net's activations of order one (and batch-norm gamma far from beta)."""
  rng = np.random.RandomState(seed)
  for v in variables:
    name, shape = v.name.split(":")[0], tuple(v.shape)
    leaf = name.split("/")[-1]
    if leaf in ("gamma", "moving_variance"):
      value = rng.uniform(0.5, 1.5, shape)
    elif leaf in ("beta", "moving_mean", "bias"):
      value = rng.uniform(-0.5, 0.5, shape)
    elif "kernel" in leaf and len(shape) >= 2:
      fan_in = int(np.prod(shape[:-1])) if "depthwise" not in leaf else int(np.prod(shape[:2]))
      value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    else:  # cluster centres, memory, relative position embeddings, layer scale
      value = rng.normal(0.0, 1.0, shape)
    v.assign(value.astype(np.float32))


def calibrate_batch_norms(model, image: np.ndarray, seed: int) -> int:
  """Moving statistics that keep every batch norm's output of order one on ``image``.

  Random moving statistics leave a deep net unnormalised (its logits reach 1e4,
  where 1e-4 is no test). In one inference pass every batch norm, when first
  called, measures the mean square ``m2`` of its actual input over all its
  elements and takes ``m2 * U(0.7, 1.4)`` per channel as its moving variance and
  ``sqrt(m2) * U(-0.2, 0.2)`` as its moving mean, before it normalises; later
  layers see the earlier ones' outputs. One scale per layer, no centring on the
  input's own means: either would amplify the rounding differences between two
  implementations (near-constant channels blown up, means cancelled) until 1e-4
  is below the noise. The random per-channel factors make a mapping that mixes
  statistics up change the outputs. Returns the number of batch norms.
  """
  # deeplab2's COCO configs use SyncBatchNormalization, no BatchNormalization subclass.
  norms = [m for m in model.submodules
           if isinstance(m, (tf.keras.layers.BatchNormalization,
                             tf.keras.layers.experimental.SyncBatchNormalization))]
  rng = np.random.RandomState(seed)
  done = set()

  def hook(norm, call):
    def calibrated_call(x, *args, **kwargs):
      if id(norm) not in done:
        done.add(id(norm))
        m2 = float(tf.reduce_mean(tf.square(x)))
        shape = tuple(norm.moving_mean.shape)
        norm.moving_mean.assign(
            (np.sqrt(m2) * rng.uniform(-0.2, 0.2, shape)).astype(np.float32))
        norm.moving_variance.assign((m2 * rng.uniform(0.7, 1.4, shape)).astype(np.float32))
      return call(x, *args, **kwargs)
    return calibrated_call

  for norm in norms:
    norm.call = hook(norm, norm.call)
  try:
    model(tf.constant(image), training=False)
  finally:
    for norm in norms:
      del norm.call  # the instance attribute; the class method again
  missed = [n.name for n in norms if id(n) not in done]
  if missed:
    raise RuntimeError(f"batch norms never called on the input: {missed}")
  return len(norms)


def run(name: str, spec: dict, deeplab2_path: str, commit: str, output_dir: str) -> str:
  """Builds, randomises, saves and runs one configuration; returns the .npz path."""
  import tf_keras  # pylint: disable=g-import-not-at-top
  model, config = build_model(spec, deeplab2_path)
  checkpoint = tf.train.Checkpoint(**model.checkpoint_items)
  randomise(model.variables, spec["seed"])
  size = spec["input_size"]
  rng = np.random.RandomState(spec["seed"] + 1000)
  image = rng.uniform(0.0, 255.0, [1, size, size, 3]).astype(np.float32)
  num_norms = calibrate_batch_norms(model, image, spec["seed"] + 2000)
  outputs = model(tf.constant(image), training=False)
  with tempfile.TemporaryDirectory() as tmp:
    prefix = checkpoint.write(os.path.join(tmp, "ckpt"))
    reader = tf.train.load_checkpoint(prefix)
    keys = sorted(k for k in reader.get_variable_to_shape_map()
                  if not k.startswith(_NON_VARIABLE_KEYS))
    arrays = {f"ckpt/{k}": reader.get_tensor(k) for k in keys}
  for key, value in outputs.items():
    if isinstance(value, tf.Tensor) and value.dtype.is_floating:
      arrays[f"out/{key}"] = value.numpy().astype(np.float32)
  from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
  metadata = {
      "name": name, "reference": "https://github.com/google-research/deeplab2",
      "deeplab2_commit": commit, "tensorflow": tf.__version__,
      "tf_keras": tf_keras.__version__, "config": spec,
      "deeplab2_model_options": text_format.MessageToString(config.model_options),
      "num_checkpoint_variables": len(keys), "num_batch_norms": num_norms,
      "num_checkpoint_values": int(sum(arrays[f"ckpt/{k}"].size for k in keys)),
      "generator": "tools/golden/deeplab2_golden.py",
  }
  os.makedirs(output_dir, exist_ok=True)
  path = os.path.join(output_dir, f"{name}.npz")
  np.savez_compressed(path, image=image, metadata=np.array(json.dumps(metadata, indent=1)),
                      **arrays)
  return path


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--deeplab2_path", required=True, help="a deeplab2 checkout")
  parser.add_argument("--output_dir", default="tests/fixtures/deeplab2")
  parser.add_argument("--deeplab2_commit", default="",
                      help="the checkout's commit, when it is not a git work tree")
  parser.add_argument("--configs", nargs="*", default=sorted(CONFIGS), choices=sorted(CONFIGS))
  args = parser.parse_args(argv)
  commit = _prepare_deeplab2(args.deeplab2_path) or args.deeplab2_commit
  if not commit:
    raise SystemExit("No deeplab2 commit: --deeplab2_path is not a git work tree; pass "
                     "--deeplab2_commit.")
  for name in args.configs:
    path = run(name, CONFIGS[name], args.deeplab2_path, commit, args.output_dir)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
  main()
