r"""Writes the golden fixtures of the Hugging Face Mask2Former importer.

Run in a separate virtualenv that has the reference (never a dependency of the
package or of its tests):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 transformers==5.25.0 safetensors numpy scipy
    /tmp/refvenv/bin/python tools/golden/hf_mask2former_golden.py \
      --transformers_version=5.25.0 --output_dir=tests/fixtures/hf_mask2former

(scipy only because transformers' ``Mask2FormerLoss``, which the model builds,
asks for it.) For each configuration in ``CONFIGS`` (``swin``: a ``SwinConfig``
backbone; ``resnet``: a ``ResNetConfig`` bottleneck backbone), it builds
transformers' ``Mask2FormerForUniversalSegmentation`` with tiny widths and
depths (hidden width 32: the pixel decoder's GroupNorms have 32 groups), moves
every parameter and batch-norm statistic off its initial value with seeded noise
(so that no mapping error hides behind a constant: LayerNorm / BatchNorm scales
of one, zero biases, zero sampling offsets, unit running variances), and writes
to ``--output_dir/<name>/``:

* ``config.json`` and ``model.safetensors``: ``save_pretrained``'s folder, what
  ``python -m deeplab_panoptic.tools.import_hf_mask2former`` reads;
* ``golden.npz``:
  - ``image`` ``[1, H, W, 3]`` float32 in [-1, 1] (the library's input range);
  - ``pixel_values`` ``[1, H, W, 3]``: what the model was given (NHWC here, NCHW
    in the model): ``((image + 1) / 2 - mean) / std`` with ImageNet's mean / std,
    as ``Mask2FormerImageProcessor`` normalises;
  - ``class_logits`` ``[1, Q, C + 1]``: ``class_queries_logits``;
  - ``mask_logits`` ``[1, H / 4, W / 4, Q]``: ``masks_queries_logits`` (NHWQ,
    our ``PRED_MASK_LOGITS`` layout);
  - ``aux_class_logits`` ``[L, 1, Q, C + 1]`` and ``aux_mask_logits``
    ``[L, 1, H / 4, W / 4, Q]``: ``auxiliary_logits`` (the prediction before the
    first decoder layer and after every layer but the last, in order);
  - ``encoder_stage1`` ... ``encoder_stage4`` ``[1, h, w, c]``: the backbone's
    ``feature_maps`` on ``pixel_values``;
  - ``odd_image`` ``[1, 61, 77, 3]`` in [-1, 1] and ``odd_encoder_stage1`` ...
    ``odd_encoder_stage4``: the backbone alone on a size no stride divides (its
    normalised ``pixel_values``), which exercises every conv's and pool's padding;
* ``metadata.json``: the transformers and torch versions, the configuration, the
  sizes, the mean / std, and the reference's parameter count.

It also writes ``--output_dir/full_configs/{swin_s,r50}/config.json``: transformers'
default ``Mask2FormerConfig`` (what the hub's ``facebook/mask2former-*`` COCO
panoptic checkpoints use: hidden width 256, 10 decoder predictions, 100 queries,
133 classes) with a Swin-S (window 7) or a ResNet-50 backbone, without weights:
what the importer must turn into the recipes' model
(``configs/models/mask2former_{swin_s,r50}.gin``).

Every draw is seeded: the same versions give the same files.
"""

import argparse
import json
import os

import numpy as np
import torch

IMAGE_SIZE = (64, 96)
ODD_IMAGE_SIZE = (61, 77)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STAGES = ["stage1", "stage2", "stage3", "stage4"]
HEAD = dict(feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=48,
            encoder_layers=2, decoder_layers=5, num_attention_heads=4, dim_feedforward=40,
            num_queries=6, output_auxiliary_logits=True)
CONFIGS = {
    "swin": dict(backbone="swin", num_labels=5,
                 backbone_kwargs=dict(embed_dim=4, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2],
                                      window_size=4, drop_path_rate=0.0, image_size=64)),
    "resnet": dict(backbone="resnet", num_labels=4,
                   backbone_kwargs=dict(embedding_size=8, hidden_sizes=[16, 24, 32, 40],
                                        depths=[1, 2, 1, 1], layer_type="bottleneck")),
}
NOISE = 0.05


def build(name):
  """The reference model of ``CONFIGS[name]``, in eval mode, weights perturbed."""
  from transformers import (Mask2FormerConfig, Mask2FormerForUniversalSegmentation,  # pylint: disable=g-import-not-at-top
                            ResNetConfig, SwinConfig)
  spec = CONFIGS[name]
  backbone_class = SwinConfig if spec["backbone"] == "swin" else ResNetConfig
  backbone = backbone_class(out_features=STAGES, **spec["backbone_kwargs"])
  config = Mask2FormerConfig(backbone_config=backbone, num_labels=spec["num_labels"], **HEAD)
  torch.manual_seed(0)
  model = Mask2FormerForUniversalSegmentation(config).eval()
  generator = torch.Generator().manual_seed(1 + len(name))
  with torch.no_grad():
    for key, tensor in model.state_dict().items():
      if not tensor.is_floating_point():
        continue   # num_batches_tracked
      noise = torch.randn(tensor.shape, generator=generator) * NOISE
      if key.endswith("running_var"):
        tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
      else:
        tensor.add_(noise)
  return model


def _nchw(image):
  return torch.from_numpy(image).permute(0, 3, 1, 2).contiguous()


def _nhwc(tensor):
  return tensor.permute(0, 2, 3, 1).numpy().astype(np.float32)


def normalise(image):
  """``[-1, 1]`` NHWC -> ImageNet-normalised NHWC float32."""
  return (((image + 1.0) / 2.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
          ).astype(np.float32)


def reference_outputs(model, seed):
  """The arrays of ``golden.npz`` (see the module docstring)."""
  rng = np.random.default_rng(seed)
  image = rng.uniform(-1, 1, size=(1,) + IMAGE_SIZE + (3,)).astype(np.float32)
  odd = rng.uniform(-1, 1, size=(1,) + ODD_IMAGE_SIZE + (3,)).astype(np.float32)
  pixel_values = normalise(image)
  with torch.no_grad():
    out = model(_nchw(pixel_values))
    encoder = model.model.pixel_level_module.encoder
    features = encoder(_nchw(pixel_values)).feature_maps
    odd_features = encoder(_nchw(normalise(odd))).feature_maps
  arrays = {"image": image, "pixel_values": pixel_values, "odd_image": odd,
            "class_logits": out.class_queries_logits.numpy().astype(np.float32),
            # [B, Q, h, w] -> [B, h, w, Q], as [B, C, H, W] -> [B, H, W, C].
            "mask_logits": _nhwc(out.masks_queries_logits)}
  aux = out.auxiliary_logits
  arrays["aux_class_logits"] = np.stack([a["class_queries_logits"].numpy() for a in aux])
  arrays["aux_mask_logits"] = np.stack([_nhwc(a["masks_queries_logits"]) for a in aux])
  for stage, feature, odd_feature in zip(STAGES, features, odd_features):
    arrays[f"encoder_{stage}"] = _nhwc(feature)
    arrays[f"odd_encoder_{stage}"] = _nhwc(odd_feature)
  return {k: v.astype(np.float32) for k, v in arrays.items()}


def write(name, output_dir, versions):
  """``output_dir/name/``: the folder, ``golden.npz`` and ``metadata.json``."""
  model = build(name)
  arrays = reference_outputs(model, seed=10 + len(name))
  folder = os.path.join(output_dir, name)
  os.makedirs(folder, exist_ok=True)
  model.save_pretrained(folder)
  np.savez_compressed(os.path.join(folder, "golden.npz"), **arrays)
  metadata = dict(versions, reference_class="Mask2FormerForUniversalSegmentation",
                  config=CONFIGS[name], head=HEAD, image_size=list(IMAGE_SIZE),
                  odd_image_size=list(ODD_IMAGE_SIZE), image_mean=list(IMAGENET_MEAN),
                  image_std=list(IMAGENET_STD), noise=NOISE,
                  reference_params=sum(p.numel() for p in model.parameters()))
  with open(os.path.join(folder, "metadata.json"), "w") as f:
    json.dump(metadata, f, indent=1, sort_keys=True)
  print(name, {k: (v.shape, float(np.abs(v).max())) for k, v in arrays.items()})


FULL_CONFIGS = {
    "swin_s": ("swin", dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24],
                            window_size=7, drop_path_rate=0.3)),
    "r50": ("resnet", dict(depths=[3, 4, 6, 3])),
}
COCO_PANOPTIC_CLASSES = 133


def write_full_configs(output_dir):
  """``output_dir/full_configs/<name>/config.json`` (see the module docstring)."""
  from transformers import Mask2FormerConfig, ResNetConfig, SwinConfig  # pylint: disable=g-import-not-at-top
  for name, (kind, kwargs) in FULL_CONFIGS.items():
    backbone_class = SwinConfig if kind == "swin" else ResNetConfig
    config = Mask2FormerConfig(backbone_config=backbone_class(out_features=STAGES, **kwargs),
                               num_labels=COCO_PANOPTIC_CLASSES)
    config.save_pretrained(os.path.join(output_dir, "full_configs", name))


def write_full_size(output_dir, versions):
  """``output_dir/<name>/``: full-size random models of ``FULL_CONFIGS`` with their
  folder and ``golden.npz`` (as ``write``; a 128 x 128 image), for
  ``benchmarks/hf_mask2former_parity.py``. Hundreds of MB: never committed."""
  from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation  # pylint: disable=g-import-not-at-top
  global IMAGE_SIZE, ODD_IMAGE_SIZE  # pylint: disable=global-statement
  IMAGE_SIZE, ODD_IMAGE_SIZE = (128, 128), (65, 65)
  write_full_configs(output_dir)
  for name in FULL_CONFIGS:
    folder = os.path.join(output_dir, "full_configs", name)
    config = Mask2FormerConfig.from_pretrained(folder)
    config.output_auxiliary_logits = True
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
      for key, tensor in model.state_dict().items():
        if key.endswith("running_var"):
          tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
        elif tensor.is_floating_point():
          tensor.add_(torch.randn(tensor.shape, generator=generator) * NOISE)
    arrays = reference_outputs(model, seed=20)
    model.save_pretrained(folder)
    np.savez_compressed(os.path.join(folder, "golden.npz"), **arrays)
    with open(os.path.join(folder, "metadata.json"), "w") as f:
      json.dump(dict(versions, image_size=list(IMAGE_SIZE)), f)
    print(name, {k: float(np.abs(v).max()) for k, v in arrays.items() if "logits" in k})


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--transformers_version", required=True,
                      help="The transformers version that must be installed.")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--full_size_dir", default=None,
                      help="Also write full-size random models there (not a fixture).")
  args = parser.parse_args()
  import transformers  # pylint: disable=g-import-not-at-top
  if transformers.__version__ != args.transformers_version:
    raise SystemExit(f"--transformers_version={args.transformers_version} but "
                     f"transformers {transformers.__version__} is installed.")
  versions = {"transformers_version": transformers.__version__,
              "torch_version": torch.__version__}
  for name in CONFIGS:
    write(name, args.output_dir, versions)
  write_full_configs(args.output_dir)
  if args.full_size_dir:
    write_full_size(args.full_size_dir, versions)


if __name__ == "__main__":
  main()
