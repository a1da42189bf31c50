"""visionpipes.core: the architectural blocks of modern CNNs, the backbone builder, and the
training / export glue the domain packages share.

Importing this package is cheap; heavy modules (torch, lightning, onnx) load on first use.
"""

__version__ = "0.1.0"
