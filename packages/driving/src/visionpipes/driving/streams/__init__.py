"""Multi-camera streaming, one module per idea: `cameras` (reader threads), `tracking` (ByteTrack/
BoT-SORT on the ONNX boxes, tracks as det JSON), `run` (the batching loop, outputs and report).
"""
