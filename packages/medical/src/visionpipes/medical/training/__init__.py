"""Training of the medical domain: settings, MONAI data pipeline, the LightningModule and its fit driver,
evaluation (Dice, HD95, overlay figure) and deployment (ONNX / TorchScript export, model card).

May import the runtime and the MSD formats; nothing below it (runtime, msd) imports this package.
"""
