r"""Writes the golden fixture of the torchvision-named ResNet importer.

Run in a separate virtualenv that has the reference (never a dependency of the
package or of its tests):

    python3 -m venv /tmp/refvenv_timm
    /tmp/refvenv_timm/bin/pip install timm==1.0.31 safetensors numpy
    /tmp/refvenv_timm/bin/python tools/golden/resnet_golden.py \
      --timm_version=1.0.31 --output_dir=tests/fixtures/resnet_timm

timm's ``ResNet`` keeps torchvision's names and layout (``conv1``, ``bn1``,
``layer{1..4}.{j}.conv{1,2,3}`` / ``bn{1,2,3}``, ``downsample.0`` / ``.1``, ``fc``;
symmetric padding, the stride on the 3x3 conv), which is what ImageNet ResNet
checkpoints (torchvision's, timm's, detectron2's converted ``R-50.pkl``) hold;
unlike torchvision's it takes any stage widths, so the fixture stays tiny. The
model (``CONFIG``: bottleneck stages of 1, 2, 1, 1 blocks, inner widths 4, 6, 8, 10,
outputs 16, 24, 32, 40, a 64-wide stem, a 7-class head) gets seeded random weights and
batch-norm statistics, and ``--output_dir`` gets:

* ``model.safetensors``: its state dict (torchvision / timm names);
* ``golden.npz``: ``image`` ``[1, 61, 77, 3]`` in [-1, 1] and ``stage1`` ...
  ``stage4`` ``[1, h, w, c]``: the outputs of ``layer1`` ... ``layer4`` (NHWC) on
  that image ImageNet-normalised (``(image + 1) / 2 - mean) / std``);
* ``metadata.json``: the timm and torch versions, ``CONFIG``, the mean / std.

Every draw is seeded: the same versions give the same files.
"""

import argparse
import json
import os

import numpy as np
import torch

CONFIG = dict(layers=(1, 2, 1, 1), channels=(4, 6, 8, 10), num_classes=7)
# timm's plain stem is 64 wide whatever the stages' widths (torchvision's too).
STEM_WIDTH = 64
IMAGE_SIZE = (61, 77)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NOISE = 0.05


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--timm_version", required=True)
  parser.add_argument("--output_dir", required=True)
  args = parser.parse_args()
  import timm  # pylint: disable=g-import-not-at-top
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  from timm.models.resnet import Bottleneck, ResNet  # pylint: disable=g-import-not-at-top
  if timm.__version__ != args.timm_version:
    raise SystemExit(f"--timm_version={args.timm_version} but timm {timm.__version__} "
                     "is installed.")
  torch.manual_seed(0)
  model = ResNet(Bottleneck, **CONFIG).eval()
  generator = torch.Generator().manual_seed(5)
  with torch.no_grad():
    for key, tensor in model.state_dict().items():
      if not tensor.is_floating_point():
        continue   # num_batches_tracked
      if key.endswith("running_var"):
        tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
      else:
        tensor.add_(torch.randn(tensor.shape, generator=generator) * NOISE)
  rng = np.random.default_rng(6)
  image = rng.uniform(-1, 1, size=(1,) + IMAGE_SIZE + (3,)).astype(np.float32)
  pixel_values = (((image + 1) / 2 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD))
  pixel_values = pixel_values.astype(np.float32)
  arrays = {"image": image}
  with torch.no_grad():
    x = torch.from_numpy(pixel_values).permute(0, 3, 1, 2).contiguous()
    x = model.maxpool(model.act1(model.bn1(model.conv1(x))))
    for i, layer in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
      x = layer(x)
      arrays[f"stage{i + 1}"] = x.permute(0, 2, 3, 1).numpy().astype(np.float32)
  os.makedirs(args.output_dir, exist_ok=True)
  save_file({k: v.contiguous() for k, v in model.state_dict().items()},
            os.path.join(args.output_dir, "model.safetensors"))
  np.savez_compressed(os.path.join(args.output_dir, "golden.npz"), **arrays)
  metadata = {"timm_version": timm.__version__, "torch_version": torch.__version__,
              "reference_class": "timm.models.resnet.ResNet(Bottleneck, ...)",
              "config": CONFIG, "stem_width": STEM_WIDTH, "image_size": list(IMAGE_SIZE),
              "noise": NOISE,
              "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}
  with open(os.path.join(args.output_dir, "metadata.json"), "w") as f:
    json.dump(metadata, f, indent=1, sort_keys=True)
  print({k: (v.shape, float(np.abs(v).max())) for k, v in arrays.items()})


if __name__ == "__main__":
  main()
