"""visionpipes.retail: visual product search with CNN embeddings and a FAISS index."""

__version__ = "0.1.0"
