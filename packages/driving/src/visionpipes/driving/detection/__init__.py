"""BDD100K object detection, one module per responsibility: `train` (ultralytics YOLO training and
validation), `predict` (the eager `.pt` on image files), `export` (ONNX with the parity check),
`quantize` (int8), `runtime` (onnxruntime detector: letterbox, decoding, NMS).
"""
