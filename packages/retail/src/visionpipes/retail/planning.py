"""`vp-retail plan`: the retail training settings that follow from the catalog and the hardware
(issue #13 part 1).

A **fingerprint** of a catalog (a `catalog.csv` folder or an image-folder layout, as `load_catalog`
reads it): products, images per product (distribution and histogram), the training views per product
once `train.val_views` are held out, categories, held-out queries, and image sizes read from the file
headers only (PIL reads the header, not the pixels) of an evenly spaced sample of at most
`sample_images` images. A 100,000-photo catalog costs reading its CSV and 1,000 headers.

The **plan** (keys of the `train` section; `auto` there takes them, an explicit value wins and is
recorded in `Plan.overridden`):

- `train.image_size`: the median short side of the images, a multiple of 32 (upscaling adds nothing),
  at least 64, at most what the device affords: on CPU 96 px at 2 cores (the demo's measured budget),
  growing with sqrt(cores/2) up to 160; on CUDA 224 (the ImageNet resolution of pretrained backbones).
- `train.dimension`: 128 below 2,000 products, 256 below 20,000, else 512 (the sizes the product
  retrieval literature reports on Stanford Online Products, 11k training products, and In-Shop).
- `train.views_per_product` (K): 4 (the usual P x K sampling), at most the 5th percentile of the
  training views per product (products with fewer views repeat views in a batch), at least 2.
- `train.products_per_batch` (P): at most the training products. CPU: 8 per core (16 at 2 cores, the
  demo's). CUDA: the memory rule of ultralytics' auto-batch (`mem(b) = fixed + b * per_image` within
  60 % of the memory, see `visionpipes.driving.planning`) with the backbone's saved training
  activations measured on this CPU with `torch.autograd.graph.saved_tensors_hooks` (resnet18 at
  width 0.5: 2.0 MiB per 96-px image in fp32; scaled by pixels and width, x 0.5 for AMP, x 2 for
  gradients and allocator slack), then at most 128 (a P x K batch of 512, the large end of metric
  learning batches).
- `train.epochs`: image presentations / training views, between 10 and 200. Presentations: 31,500 per
  CPU core (70 epochs of the 900-view demo catalog on 2 cores), 2,000,000 on CUDA (an estimate: about
  an hour of one data-centre GPU for resnet18 at 224 px).
- `train.num_workers`: 0 on 2 cores (loading in-process is cheaper there), else min(cores - 1, 8);
  on CUDA min(cores / GPUs, 8).

Reads files only; never imports torch.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.core.plan import Plan

__all__ = ["PLANNED_KEYS", "fingerprint_catalog", "make_plan", "plan_values", "resolve_train_section"]

#: The keys of the `train` section that may be `auto`.
PLANNED_KEYS: tuple[str, ...] = (
    "image_size",
    "dimension",
    "products_per_batch",
    "views_per_product",
    "epochs",
    "num_workers",
)
#: Saved training activations (MiB, fp32) of one 96-px image through resnet18 at width 0.5, measured here.
MIB_PER_IMAGE_96 = 2.0
FIXED_GIB, MEMORY_FRACTION, AMP_FACTOR, SLACK_FACTOR = 1.0, 0.6, 0.5, 2.0
PRESENTATIONS_PER_CPU_CORE, PRESENTATIONS_CUDA = 31_500, 2_000_000
MAX_P, MAX_K = 128, 4


def _evenly(items: list[Any], n: int) -> list[Any]:
    if len(items) <= n:
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def _stats(values: list[int]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {}
    out = {"min": float(arr.min()), "mean": round(float(arr.mean()), 3), "max": float(arr.max())}
    out |= {f"p{q}": float(np.percentile(arr, q)) for q in (5, 50, 95)}
    return out


def fingerprint_catalog(
    catalog_dir: str | os.PathLike, *, val_views: int = 1, sample_images: int = 1000
) -> dict[str, Any]:
    """The statistics the plan is made from (see the module docstring).

    Raises:
        UserError: if the folder is missing, is not a catalog, has fewer than 2 products, or a sampled
            image is unreadable (naming the file).
    """
    from PIL import Image, UnidentifiedImageError

    from visionpipes.retail.catalog import QUERIES_CSV, load_catalog

    path = Path(catalog_dir)
    if not path.exists():
        raise UserError(f"catalog {path} does not exist.")
    catalog = load_catalog(path)
    if len(catalog) < 2:
        raise UserError(f"catalog {path} has {len(catalog)} usable product(s); a plan needs at least 2.")
    views = [len(p.views) for p in catalog.products.values()]
    # training views once `val_views` are held out of products that have more than that (split_views)
    train_views = [n - val_views if n > val_views else n for n in views]
    sizes: Counter[str] = Counter()
    short: list[int] = []
    sample = _evenly([v.path for _, v in catalog.views()], sample_images)
    for image in sample:
        try:
            with Image.open(image) as img:  # header only
                w, h = img.size
        except (UnidentifiedImageError, OSError) as err:
            raise UserError(f"image {image} is not a readable image ({err}).") from None
        sizes[f"{w}x{h}"] += 1
        short.append(min(w, h))
    queries = Path(catalog.root) / QUERIES_CSV
    histogram = Counter(views)
    return {
        "products": len(catalog),
        "images": catalog.num_views,
        "categories": len(catalog.categories()),
        "queries_csv": queries.is_file(),
        "images_per_product": _stats(views),
        "images_per_product_histogram": {str(k): histogram[k] for k in sorted(histogram)},
        "val_views": val_views,
        "train_views_per_product": _stats(train_views),
        "train_views": int(sum(train_views)),
        "image_sizes": dict(sizes.most_common(20)),
        "image_short_side": _stats(short),
        "skipped_rows": len(catalog.problems),
        "sampled": {
            "image_headers": len(sample),
            "note": f"image sizes from the headers of at most {sample_images} images (evenly spaced); "
            "counts from every catalog row",
        },
    }


def _floor32(x: float) -> int:
    return max(32, int(x // 32) * 32)


def plan_values(
    fingerprint: dict[str, Any], hardware: Any, *, width_multiplier: float = 0.5
) -> tuple[dict[str, Any], dict[str, str]]:
    """`(values, reasons)` of the retail plan (dotted `train.*` keys) on `hardware`."""
    cuda = hardware.device == "cuda"
    cores = max(1, int(hardware.cpu_cores))
    gpus = max(1, int(getattr(hardware, "gpus", 1) or 1))
    memory = float(hardware.memory_gb)
    products = int(fingerprint["products"])
    train_views = int(fingerprint["train_views"])
    values: dict[str, Any] = {}
    reasons: dict[str, str] = {}

    median_short = fingerprint["image_short_side"].get("p50", 224)
    cap = 224 if cuda else min(160, max(96, _floor32(96 * math.sqrt(cores / 2))))
    values["train.image_size"] = max(64, min(_floor32(median_short), cap))
    reasons["train.image_size"] = (
        f"median short side {median_short:g} px; the {'GPU' if cuda else f'{cores}-core CPU'} affords {cap}"
    )

    values["train.dimension"] = 128 if products < 2000 else 256 if products < 20000 else 512
    reasons["train.dimension"] = f"{products} products: 128 below 2,000, 256 below 20,000, else 512"

    p5 = fingerprint["train_views_per_product"].get("p5", MAX_K)
    k = max(2, min(MAX_K, int(p5)))
    values["train.views_per_product"] = k
    reasons["train.views_per_product"] = (
        f"K: {MAX_K}, at most the 5th percentile ({p5:g}) of training views per product, at least 2"
    )

    if cuda:
        per_image = (
            MIB_PER_IMAGE_96
            * (values["train.image_size"] / 96) ** 2
            * (width_multiplier / 0.5)
            * AMP_FACTOR
            * SLACK_FACTOR
            / 1024
        )
        batch = max(k, int((memory * MEMORY_FRACTION - FIXED_GIB) / per_image))
        p = min(batch // k, MAX_P, products)
        reasons["train.products_per_batch"] = (
            f"P: {FIXED_GIB:g} GiB + P x K x {per_image * 1024:.2f} MiB <= {MEMORY_FRACTION:.0%} of {memory:g} GB, "
            f"at most {MAX_P} and the {products} products"
        )
    else:
        p = min(8 * cores, products)
        reasons["train.products_per_batch"] = f"P: 8 x {cores} cores, at most the {products} products"
    values["train.products_per_batch"] = max(1, p)

    presentations = PRESENTATIONS_CUDA * gpus if cuda else PRESENTATIONS_PER_CPU_CORE * cores
    values["train.epochs"] = int(min(200, max(10, round(presentations / max(train_views, 1)))))
    reasons["train.epochs"] = (
        f"{presentations:,} image presentations / {train_views:,} training views (10..200)"
    )

    values["train.num_workers"] = min(cores // gpus, 8) if cuda else (0 if cores <= 2 else min(cores - 1, 8))
    reasons["train.num_workers"] = "in-process on 2 cores, else min(cores - 1, 8); CUDA: min(cores / GPUs, 8)"
    return values, reasons


def make_plan(
    catalog_dir: str | os.PathLike,
    hardware: Any,
    *,
    params: dict[str, Any] | None = None,
    sample_images: int = 1000,
) -> Plan:
    """Fingerprint the catalog and plan for `hardware`; `params` (the whole params.yaml) gives
    `train.val_views` and `train.width_multiplier` and records the planned keys it sets explicitly."""
    train = (params or {}).get("train") or {}
    val_views = train.get("val_views", 1)
    width = train.get("width_multiplier", 0.5)
    if not isinstance(val_views, int) or val_views < 0:
        raise UserError(f"train.val_views must be an integer >= 0, got {val_views!r}.")
    if not isinstance(width, (int, float)) or width <= 0:
        raise UserError(f"train.width_multiplier must be a number > 0, got {width!r}.")
    fingerprint = fingerprint_catalog(catalog_dir, val_views=val_views, sample_images=sample_images)
    values, reasons = plan_values(fingerprint, hardware, width_multiplier=float(width))
    return Plan.make(
        "retail", values, hardware=hardware, fingerprint=fingerprint, reasons=reasons, params=params
    )


def resolve_train_section(
    section: dict[str, Any], plan_path: str | os.PathLike | None, *, source: str
) -> tuple[dict[str, Any], Plan | None]:
    """The `train` section with its `auto` planned keys taken from the plan file, and the plan.

    Raises:
        UserError: if a planned key is `auto` and no plan is given, or the plan file is bad.
    """
    from visionpipes.core.plan import read_plan, resolve_auto

    plan = read_plan(plan_path, domain="retail") if plan_path else None
    resolved, _ = resolve_auto(section, plan, prefix="train", keys=PLANNED_KEYS, source=source)
    return resolved, plan
