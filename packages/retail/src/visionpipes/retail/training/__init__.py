"""Training of the retail embedding model and what follows it (training side): parameters, batch
augmentation, P×K data, `pytorch-metric-learning` losses, the Lightning module, evaluation, plots,
deployment and the model card. May import runtime and formats; nothing imports it but the CLI.
"""
