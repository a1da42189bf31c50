"""Lane-marking segmentation, one module per responsibility: `decode` (output layout -> official lane
PNG), `model` (the network, its config, save/load), `runtime` (prediction, ONNX export and runtime),
`data` (training pairs and dataset), `train` (the LightningModule and `train_lanes`).
"""
