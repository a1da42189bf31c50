"""Runtime of the medical domain: the networks named by the config, loading a trained checkpoint or a
deployed folder (ONNX / TorchScript), and whole-volume prediction by sliding windows.

Never imports training code (Lightning, DVCLive, Optuna, `visionpipes.medical.training`): a predictor
loads without the training stack (see importlinter/medical.ini).
"""
