"""visionpipes.core.nas: the architecture search over the core block library — the proxy task
(`proxy`), how a candidate is trained and measured (`training`), the search space (`space`), the
Optuna driver (`study`), its outputs (`outputs`, `results`) and the comparison with the presets
(`evaluate`).

Only `study` imports Optuna (the `visionpipes-core[nas]` extra); the network library (layers,
blocks, backbones, heads) never imports this package. No names are re-exported here.
"""
