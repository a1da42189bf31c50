"""The Medical Segmentation Decathlon's official task layout: `dataset.json`, NIfTI volumes, label/region
mapping, the integrity check and the synthetic sample generator.

Formats only: file I/O with numpy, nibabel and scipy; nothing here imports torch, MONAI or training code.
"""
