"""Image → embedding (runtime): the model's configuration and network, the shared preprocessing,
the torch and ONNX embedders, the trained-model folder and batch embedding of catalogs.

Nothing here trains; the training stack (`visionpipes.retail.training`) builds on these modules.
"""
