r"""Prints the parameter counts of transformers' Mask2Former for the published backbones.

Run in the reference virtualenv (never a dependency of the package or its tests):

    /tmp/refvenv/bin/python tools/golden/hf_mask2former_params.py --transformers_version=5.25.0

Builds ``Mask2FormerForUniversalSegmentation`` on the meta device (no memory, no
weights) for R50, R101 (``ResNetConfig``) and Swin-T/S/B/L (``SwinConfig``; window
7 for T/S, 12 for the ImageNet-22K 384 B/L), 133 classes (COCO panoptic), 100
queries (200 for Swin-L), and prints ``sum(p.numel())`` of the whole model and of
its backbone, pixel decoder, transformer module and class predictor: the
"transformers" column of docs/models/mask2former.md.
"""

import argparse

import torch

STAGES = ["stage1", "stage2", "stage3", "stage4"]
# ResNet depths (arXiv 1512.03385, Tab. 1); Swin variants (arXiv 2103.14030, Sec. 3.3).
RESNETS = {"r50": [3, 4, 6, 3], "r101": [3, 4, 23, 3]}
SWINS = {"swin_t": (96, [2, 2, 6, 2], [3, 6, 12, 24], 7),
         "swin_s": (96, [2, 2, 18, 2], [3, 6, 12, 24], 7),
         "swin_b": (128, [2, 2, 18, 2], [4, 8, 16, 32], 12),
         "swin_l": (192, [2, 2, 18, 2], [6, 12, 24, 48], 12)}
PARTS = ("model.pixel_level_module.encoder.", "model.pixel_level_module.decoder.",
         "model.transformer_module.", "class_predictor.")


def backbone_config(name: str):
  from transformers import ResNetConfig, SwinConfig  # pylint: disable=g-import-not-at-top
  if name in RESNETS:
    return ResNetConfig(depths=RESNETS[name], out_features=STAGES)
  embed_dim, depths, heads, window = SWINS[name]
  return SwinConfig(embed_dim=embed_dim, depths=depths, num_heads=heads,
                    window_size=window, out_features=STAGES)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--transformers_version", required=True,
                      help="The transformers version that must be installed.")
  args = parser.parse_args()
  import transformers  # pylint: disable=g-import-not-at-top
  if transformers.__version__ != args.transformers_version:
    raise SystemExit(f"--transformers_version={args.transformers_version} but "
                     f"transformers {transformers.__version__} is installed.")
  from transformers import (  # pylint: disable=g-import-not-at-top
      Mask2FormerConfig, Mask2FormerForUniversalSegmentation)
  print("| model | total | " + " | ".join(p.rstrip(".") for p in PARTS) + " |")
  for name in list(RESNETS) + list(SWINS):
    config = Mask2FormerConfig(backbone_config=backbone_config(name), num_labels=133,
                               num_queries=200 if name == "swin_l" else 100)
    with torch.device("meta"):
      model = Mask2FormerForUniversalSegmentation(config)
    named = list(model.named_parameters())
    parts = [sum(p.numel() for n, p in named if n.startswith(prefix)) for prefix in PARTS]
    print(f"| {name} | {sum(p.numel() for _, p in named):,} | "
          + " | ".join(f"{c:,}" for c in parts) + " |", flush=True)


if __name__ == "__main__":
  main()
