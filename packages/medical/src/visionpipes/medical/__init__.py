"""visionpipes.medical: Medical Segmentation Decathlon tumour segmentation with MONAI."""

__version__ = "0.1.0"
