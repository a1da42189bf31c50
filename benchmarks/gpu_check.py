"""GPU check of the core glue, run on a lent CUDA machine (never in CI): every backbone preset
takes a training step on CUDA in fp32 and bf16 autocast (channels-last), timed against
torchvision's twin in the same run, and `visionpipes.core.training.fit` trains, checkpoints and
resumes on the GPU.

    PYTHONPATH=packages/core/src python3 benchmarks/gpu_check.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

from visionpipes.core.backbones import build_backbone, list_backbones

TWINS = {
    "resnet18": torchvision.models.resnet18,
    "resnet50": torchvision.models.resnet50,
    "resnext50_32x4d": torchvision.models.resnext50_32x4d,
    "mobilenet_v2": torchvision.models.mobilenet_v2,
}


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, classes: int = 10) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_channels[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)[-1].mean((2, 3)))


def step_time(model: nn.Module, batch: int, size: int, dtype: torch.dtype | None, repeats: int) -> tuple[float, bool]:
    model = model.cuda().to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device="cuda").to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device="cuda")
    times, finite = [], True
    for i in range(repeats + 3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            out = model(x)
            out = out if out.shape[-1] == 10 else out[:, :10]
            loss = nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        finite &= bool(torch.isfinite(loss))
        if i >= 3:
            times.append(time.perf_counter() - t)
    return statistics.median(times), finite


def check_fit(out_dir: Path) -> dict:
    import lightning

    from visionpipes.core.training import TrainConfig, fit

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = Classifier(build_backbone("resnet18"), 4)

        def training_step(self, batch, _):
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss, on_epoch=True, on_step=False)
            return loss

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_acc", (self.net(x).argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, 32, 32, generator=g)
    quads = torch.stack([x[:, :, :16, :16].mean((1, 2, 3)), x[:, :, :16, 16:].mean((1, 2, 3)),
                         x[:, :, 16:, :16].mean((1, 2, 3)), x[:, :, 16:, 16:].mean((1, 2, 3))], 1)
    y = quads.argmax(1)
    ds = torch.utils.data.TensorDataset
    train = torch.utils.data.DataLoader(ds(x[:448], y[:448]), batch_size=64, shuffle=True)
    val = torch.utils.data.DataLoader(ds(x[448:], y[448:]), batch_size=64)
    cfg = dict(max_epochs=4, accelerator="gpu", devices=1, precision="bf16-mixed", monitor="val_acc",
               progress=False, logger="csv")
    first = fit(Module(), train, val, config=TrainConfig(**cfg), out_dir=out_dir)
    second = fit(Module(), train, val, config=TrainConfig(**{**cfg, "max_epochs": 8}), out_dir=out_dir)
    return {
        "first": {"epochs": first.epochs, "val_acc": first.metrics.get("val_acc"), "seconds": first.seconds},
        "resumed": {"from": str(second.resumed_from), "epochs": second.epochs, "val_acc": second.metrics.get("val_acc")},
        "best_checkpoint_exists": bool(second.best_checkpoint and second.best_checkpoint.is_file()),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU", file=sys.stderr)
        return 1
    torch.backends.cudnn.benchmark = True
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
              "batch": args.batch, "size": args.size, "presets": {}}
    for name in list_backbones():
        row = {}
        for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            ours, finite = step_time(Classifier(build_backbone(name)), args.batch, args.size, dtype, args.repeats)
            row[f"{label}_step_ms"] = round(ours * 1e3, 2)
            row[f"{label}_finite"] = finite
            if name in TWINS:
                theirs, _ = step_time(TWINS[name](num_classes=10), args.batch, args.size, dtype, args.repeats)
                row[f"{label}_torchvision_ms"] = round(theirs * 1e3, 2)
                row[f"{label}_ratio"] = round(ours / theirs, 3)
        row["bf16_speedup"] = round(row["fp32_step_ms"] / row["bf16_step_ms"], 2)
        result["presets"][name] = row
        print(name, row, flush=True)
        torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as tmp:
        result["fit"] = check_fit(Path(tmp))
    print(json.dumps(result["fit"], indent=1))
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
