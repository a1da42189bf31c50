"""visionpipes.driving: BDD100K detection, lane segmentation, official metrics and camera streams."""

__version__ = "0.1.0"
