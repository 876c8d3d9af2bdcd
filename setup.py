"""Packaging: the metadata is in pyproject.toml; this file only ships the gin files.

The recipes (``experiments/**.gin``) and the building blocks they include
(``configs/**.gin``) live at the top of the repository, beside the package. A
built wheel carries them as package data under ``deeplab_panoptic/gin_files/``,
where ``deeplab_panoptic.cli.recipes`` finds them, so that an installed package
runs ``--gin_file=coco/kmax_r50_1281_150k`` from any folder. An editable install
reads them from the checkout instead.
"""

import glob
import os
import shutil

import setuptools
from setuptools.command.build_py import build_py

GIN_FOLDERS = ("experiments", "configs")
PACKAGE_DATA_DIR = os.path.join("deeplab_panoptic", "gin_files")


class BuildPyWithGinFiles(build_py):
  """build_py that also copies experiments/ and configs/ into the package."""

  def run(self):
    super().run()
    if getattr(self, "editable_mode", False):
      return  # The checkout's own files are read.
    # A reused build/ folder must not keep a recipe deleted since.
    shutil.rmtree(os.path.join(self.build_lib, PACKAGE_DATA_DIR), ignore_errors=True)
    for folder in GIN_FOLDERS:
      for path in sorted(glob.glob(os.path.join(folder, "**", "*.gin"), recursive=True)):
        target = os.path.join(self.build_lib, PACKAGE_DATA_DIR, path)
        self.mkpath(os.path.dirname(target))
        self.copy_file(path, target)


if __name__ == "__main__":  # pip's build backend runs this file as __main__
  setuptools.setup(cmdclass={"build_py": BuildPyWithGinFiles})
