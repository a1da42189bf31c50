"""MONAI transforms that an exported MONAI Bundle's `configs/inference.json` names by dotted path, for the one
step MONAI has no stock transform for: region channels (TC/WT/ET or one per label) back into the task's
label map, exactly as `vp-medical predict` decodes them (`msd.regions.regions_to_labels`).

Runtime only: it decodes arrays; it loads no model and never imports training code.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from visionpipes.medical.msd.regions import Region, regions_to_labels


class RegionsToLabelsd(MapTransform):
    """Region probabilities `(R, *spatial)` -> label map `(1, *spatial)` (uint8), metadata kept.

    Args:
        keys: the keys to decode (e.g. `"pred"`).
        regions: `[[name, [label values]], ...]` in channel order (a model description's `regions`).
        threshold: probability above which a voxel belongs to a region.

    Example (inference.json):
        `{"_target_": "visionpipes.medical.runtime.bundle_transforms.RegionsToLabelsd", "keys": "pred",
        "regions": [["TC", [2, 3]], ["WT", [1, 2, 3]], ["ET", [3]]], "threshold": 0.5}`
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        regions: Sequence[Sequence[Any]],
        threshold: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.regions = tuple(Region(str(name), frozenset(int(v) for v in values)) for name, values in regions)
        self.threshold = float(threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            labels = regions_to_labels(array, self.regions, threshold=self.threshold)[None]
            if isinstance(value, MetaTensor):
                d[key] = MetaTensor(torch.from_numpy(labels), meta=value.meta)
            else:
                d[key] = torch.from_numpy(labels)
        return d
