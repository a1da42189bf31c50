"""The `train` section of `params.yaml` as a typed config (`TrainParams`), with the model
architecture it implies (`EmbeddingConfig`).

Validation only: no torch import beyond the backbone spec check, no training.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator, model_validator

from visionpipes.core.config import ConfigModel, Field
from visionpipes.retail.embedding.config import EmbeddingConfig, Pooling, check_backbone

#: Metric-learning losses (see `training.losses`).
LOSSES = ("proxy_anchor", "multi_similarity", "arcface")
AUGMENTATIONS = ("strong", "light", "none")


class TrainParams(ConfigModel):
    """Everything `train_embedding` needs (the `train` section of `params.yaml`).

    Attributes:
        backbone, width_multiplier, dimension, image_size, pooling: the model (see `EmbeddingConfig`).
        loss: 'proxy_anchor', 'multi_similarity' or 'arcface'.
        loss_options: keyword arguments of the loss (its paper's values when empty; see `training.losses`).
        epochs: training epochs.
        products_per_batch: P, products in a batch.
        views_per_product: K, views of each product in a batch (batch size = P x K).
        lr: AdamW learning rate of the backbone and head.
        loss_lr_multiplier: learning-rate factor of the loss's own parameters (proxies, class weights).
        weight_decay: AdamW weight decay.
        warmup_epochs: linear warm-up before the cosine decay.
        augment: 'strong', 'light' or 'none'.
        val_views: views per product held out of training to measure Recall@1 (0: none).
        seed: random seed.
        pretrained: a local checkpoint seeding the backbone (never downloaded), or None.
        accelerator: Lightning accelerator ('auto', 'cpu', 'gpu').
        devices: devices (processes) per machine: 'auto', a count or a list of GPU ids (see
            `core.training.TrainConfig`); with `strategy: ddp` and N > 1 devices, training is DDP.
        strategy: Lightning strategy ('auto', 'ddp', ...). Under DDP each rank trains its own whole
            P×K batches (`training.data.PKBatchSampler`): the global batch is ranks x P x K.
        num_nodes: machines for multi-node DDP (launch with `torchrun --nnodes`).
        precision: Lightning precision; 'auto' is bf16-mixed where the hardware computes bf16
            natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX: ~1.7x faster training
            here), else 32-true.
        num_workers: data-loader worker processes.
        progress: show progress bars.
        logger: 'dvclive', 'csv' or 'none' (see `core.training.TrainConfig`).
        plan: the summary of the `vp-retail plan` this training resolved its `auto` keys from
            (`core.plan.Plan.summary()`: planned, overridden and effective values, hardware,
            fingerprint hash); set by `vp-retail train --plan`, recorded in the model and the deployed
            model, not written in params.yaml. `image_size`, `dimension`, `products_per_batch`,
            `views_per_product`, `epochs` and `num_workers` may be `auto` in params.yaml
            (`retail.planning.PLANNED_KEYS`); `--plan` replaces them before validation.
    """

    backbone: str | dict[str, Any] = "resnet18"
    width_multiplier: float = Field(0.5, ge=0.05, le=4)
    dimension: int = Field(128, ge=2)
    image_size: int = Field(96, ge=32, le=1024)
    pooling: Pooling = "gem"
    loss: Literal["proxy_anchor", "multi_similarity", "arcface"] = "arcface"
    loss_options: dict[str, float] = Field(default_factory=dict)
    epochs: int = Field(70, ge=1)
    products_per_batch: int = Field(16, ge=1)
    views_per_product: int = Field(4, ge=1)
    lr: float = Field(2e-3, gt=0)
    loss_lr_multiplier: float = Field(5.0, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    augment: Literal["strong", "light", "none"] = "strong"
    val_views: int = Field(1, ge=0)
    seed: int = 0
    pretrained: str | None = None
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    num_nodes: int = Field(1, ge=1)
    precision: str = "auto"
    num_workers: int = Field(0, ge=0)
    progress: bool = True
    logger: str = "dvclive"
    plan: dict[str, Any] | None = None

    @field_validator("backbone")
    @classmethod
    def _backbone(cls, value: Any) -> Any:
        return check_backbone(value, inline=False)

    @model_validator(mode="after")
    def _pairs_for_multi_similarity(self) -> TrainParams:
        if self.loss == "multi_similarity" and self.views_per_product < 2:
            raise ValueError("multi_similarity needs views_per_product >= 2 (positive pairs in a batch)")
        return self

    def embedding_config(self) -> EmbeddingConfig:
        """The architecture; a backbone spec file is read here and recorded inline.

        Raises:
            UserError: if the backbone spec file is missing or invalid.
        """
        from visionpipes.core.config import parse_config

        return parse_config(
            EmbeddingConfig,
            {
                "backbone": self.backbone,
                "width_multiplier": self.width_multiplier,
                "dimension": self.dimension,
                "image_size": self.image_size,
                "pooling": self.pooling,
            },
            source="train params",
        )
