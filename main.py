"""Thin entry point: ``python main.py --gin_file=... --mode=... --model_dir=...``."""

from deeplab_panoptic.main import run

if __name__ == "__main__":
  run()
