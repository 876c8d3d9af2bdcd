"""Packaging for deeplab_panoptic."""

import setuptools

INSTALL_REQUIRES = [
    "tensorflow==2.20.*",
    "tf-keras==2.20.*",
    "tf-models-official==2.20.*",
    "gin-config>=0.5.0,<0.6",
    "absl-py>=1.4,<3",
    "numpy>=1.26,<3",
    "scipy>=1.11,<2",
    "pycocotools>=2.0.7,<3",
    "Pillow>=10,<14",
    "cityscapesscripts==2.3.0",
]

setuptools.setup(
    name="deeplab_panoptic",
    version="0.1.0",
    description=("End-to-end panoptic segmentation with mask transformers "
                 "(MaX-DeepLab, CMT-DeepLab, kMaX-DeepLab/ReMaX, "
                 "Panoptic SegFormer) in TensorFlow."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["deeplab_panoptic", "deeplab_panoptic.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": ["pytest>=8,<10"]},
    entry_points={"console_scripts": ["deeplab-panoptic=deeplab_panoptic.main:run"]},
)
