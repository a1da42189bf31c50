"""The YOLOP-style multi-task network: one core backbone, an FPN/PAN + ASPP neck and three heads
(ultralytics detection, lane lines, drivable area), its joint loss and its one-graph ONNX export.
No training loop, data reading or runtime decoding lives here (the coordinator wires those in).
"""
