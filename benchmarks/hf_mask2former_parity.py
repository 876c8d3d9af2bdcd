"""Full-size Hugging Face Mask2Former -> our recipe's model: the logits side by side.

The committed fixtures (tests/fixtures/hf_mask2former) are tiny; this checks the
same chain at the published sizes. Step 1, in the reference virtualenv (see
tools/golden/hf_mask2former_golden.py; hundreds of MB, not committed):

  /tmp/refvenv/bin/python tools/golden/hf_mask2former_golden.py \
      --transformers_version=5.25.0 --output_dir=/tmp/m2f_small --full_size_dir=/tmp/m2f_full

writes transformers' default ``Mask2FormerConfig`` (hidden 256, 6 pixel-decoder
layers, 9 decoder layers, 100 queries, 133 classes) with a Swin-S and a ResNet-50
backbone, random weights, and their logits on a 128 x 128 image. Step 2:

  python benchmarks/hf_mask2former_parity.py \
      --hf_model_dir=/tmp/m2f_full/full_configs/swin_s \
      --recipe_model=configs/models/mask2former_swin_s.gin --num_classes=133

imports the folder (``tools.import_hf_mask2former``), builds the model of the
recipe's model gin (not the imported ``model.gin``: the recipes must load the
checkpoint as it is), restores it with ``init_checkpoint`` and prints the largest
difference of the class and mask logits, final and auxiliary, from transformers'.
"""

import argparse
import os
import tempfile

import numpy as np


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--hf_model_dir", required=True)
  parser.add_argument("--recipe_model", required=True, help="A configs/models/*.gin file.")
  parser.add_argument("--num_classes", type=int, required=True)
  args = parser.parse_args()
  import gin  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic import common, registry  # pylint: disable=g-import-not-at-top,unused-import
  from deeplab_panoptic.cli import recipes  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.modeling.meta_arch import MaskTransformer  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.tools import import_hf_mask2former  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.training import init_checkpoint  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as output_dir:
    report = import_hf_mask2former.import_model(args.hf_model_dir, output_dir)
    print("arrays used:", report["used"], "ignored:", len(report["ignored"]))
    gin.clear_config()
    recipes.add_search_paths()
    gin.parse_config_files_and_bindings([args.recipe_model],
                                        [f"NUM_CLASSES = {args.num_classes}"])
    model = MaskTransformer()
    model(tf.zeros([1, 64, 64, 3]), training=False)
    init_checkpoint.initialize_from_checkpoint(model, output_dir)
  with np.load(os.path.join(args.hf_model_dir, "golden.npz")) as data:
    golden = {k: data[k] for k in data.files}
  out = model(tf.constant(golden["image"]), training=False)
  predictions = [(f"aux {i}", p) for i, p in enumerate(out[common.AUX_OUTPUTS])]
  predictions.append(("final", out))
  for i, (name, prediction) in enumerate(predictions):
    last = i == len(predictions) - 1
    for key, ours in (("class", common.PRED_CLASS_LOGITS), ("mask", common.PRED_MASK_LOGITS)):
      want = golden[f"{key}_logits"] if last else golden[f"aux_{key}_logits"][i]
      diff = np.abs(prediction[ours].numpy() - want).max()
      print(f"{name:>6} {key:5s} max |diff| {diff:.2e}  (max |logit| {np.abs(want).max():.2f})")


if __name__ == "__main__":
  main()
