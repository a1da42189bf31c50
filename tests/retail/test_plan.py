"""`vp-retail plan`: the catalog fingerprint against direct computation, the plans for a 2-core CPU and
an 80 GB GPU, `auto` resolution with explicit overrides recorded, the plan in a deployed model, and
one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionpipes.core.errors import UserError
from visionpipes.core.hardware import Hardware
from visionpipes.core.plan import read_plan, write_plan
from visionpipes.retail import cli
from visionpipes.retail.planning import (
    PLANNED_KEYS,
    fingerprint_catalog,
    make_plan,
    plan_values,
    resolve_train_section,
)

VIEWS = {"p0": 2, "p1": 3, "p2": 5, "p3": 5, "p4": 8}  # images per product
CPU = Hardware(device="cpu", memory_gb=4.0, cpu_cores=2, gpus=0, probed=False)
GPU = Hardware(device="cuda", memory_gb=80.0, cpu_cores=16, gpus=1, probed=False)


def _median_short_32(sizes: list[tuple[int, int]]) -> int:
    return int(np.percentile([min(w, h) for w, h in sizes], 50) // 32 * 32)


def _catalog(root: Path) -> tuple[Path, list[tuple[int, int]]]:
    (root / "images").mkdir(parents=True)
    rows, sizes = ["product_id,image,title"], []
    for i, (pid, n) in enumerate(VIEWS.items()):
        for v in range(n):
            size = (160 + 32 * (v % 3), 120 + 16 * i)
            Image.new("RGB", size, (i * 40, v * 20, 90)).save(root / "images" / f"{pid}_{v}.png")
            rows.append(f"{pid},images/{pid}_{v}.png,product {pid}")
            sizes.append(size)
    (root / "catalog.csv").write_text("\n".join(rows) + "\n")
    return root, sizes


def test_fingerprint_against_direct_computation(tmp_path: Path) -> None:
    root, sizes = _catalog(tmp_path / "cat")
    fp = fingerprint_catalog(root, val_views=1)
    counts = list(VIEWS.values())
    assert (fp["products"], fp["images"]) == (5, sum(counts))
    assert fp["images_per_product"]["min"] == 2 and fp["images_per_product"]["p50"] == np.percentile(
        counts, 50
    )
    assert fp["images_per_product_histogram"] == {"2": 1, "3": 1, "5": 2, "8": 1}
    train = [n - 1 for n in counts]  # one view of each product held out (every product has > 1)
    assert fp["train_views"] == sum(train) and fp["train_views_per_product"]["p5"] == pytest.approx(
        np.percentile(train, 5)
    )
    short = [min(w, h) for w, h in sizes]
    assert fp["image_short_side"]["p50"] == pytest.approx(np.percentile(short, 50))
    assert sum(fp["image_sizes"].values()) == len(sizes) and fp["sampled"]["image_headers"] == len(sizes)
    assert fp["image_sizes"][f"{sizes[0][0]}x{sizes[0][1]}"] == sizes.count(sizes[0])
    small = fingerprint_catalog(root, val_views=1, sample_images=4)
    assert small["sampled"]["image_headers"] == 4 and "at most 4 images" in small["sampled"]["note"]


def test_cpu_and_gpu_plans_differ_as_expected(tmp_path: Path) -> None:
    root, sizes = _catalog(tmp_path / "cat")
    cpu, gpu = make_plan(root, CPU).values, make_plan(root, GPU).values
    assert set(cpu) == set(gpu) == {f"train.{k}" for k in PLANNED_KEYS}
    assert cpu["train.image_size"] == 96  # the 2-core CPU's cap
    assert (
        gpu["train.image_size"] == _median_short_32(sizes) > cpu["train.image_size"]
    )  # the images' median short side
    # K: the 5th percentile of the training views (1, 2, 4, 4, 7) is below 2, so 2
    assert cpu["train.views_per_product"] == gpu["train.views_per_product"] == 2
    assert cpu["train.products_per_batch"] == gpu["train.products_per_batch"] == 5  # bounded by the products
    assert cpu["train.dimension"] == 128 and gpu["train.epochs"] >= cpu["train.epochs"]
    assert (cpu["train.num_workers"], gpu["train.num_workers"]) == (0, 8)
    # a large catalog: P grows with the GPU's memory, the dimension with the products
    fp = fingerprint_catalog(root)
    fp |= {"products": 5_000, "train_views": 40_000}
    fp["train_views_per_product"] = {"p5": 6.0}
    big_cpu, _ = plan_values(fp, CPU)
    big_gpu, _ = plan_values(fp, GPU)
    assert (big_cpu["train.products_per_batch"], big_gpu["train.products_per_batch"]) == (16, 128)
    assert big_cpu["train.views_per_product"] == 4 and big_gpu["train.dimension"] == 256
    # epochs: image presentations / training views, at least 10
    assert (big_cpu["train.epochs"], big_gpu["train.epochs"]) == (10, 2_000_000 // 40_000)
    small_gpu, _ = plan_values(fp, Hardware(device="cuda", memory_gb=2.0, cpu_cores=16, gpus=1, probed=False))
    assert small_gpu["train.products_per_batch"] < big_gpu["train.products_per_batch"]


def test_auto_resolution_and_overrides(tmp_path: Path) -> None:
    root, sizes = _catalog(tmp_path / "cat")
    params = {"train": {"image_size": "auto", "dimension": 64, "epochs": "auto", "val_views": 1}}
    plan = make_plan(root, GPU, params=params)
    assert set(plan.overridden) == {"train.dimension"} and plan.overridden["train.dimension"]["params"] == 64
    path = write_plan(tmp_path / "plan.json", plan)
    section, got = resolve_train_section(params["train"], path, source="p:train")
    assert section["image_size"] == plan.values["train.image_size"] and section["dimension"] == 64
    assert got is not None and section["epochs"] == plan.values["train.epochs"]
    from visionpipes.retail.training.params import TrainParams

    assert TrainParams.from_params(
        section | {"plan": got.summary()}, source="p"
    ).image_size == _median_short_32(sizes)
    with pytest.raises(UserError, match="key 'image_size' is auto but no plan was given"):
        resolve_train_section(params["train"], None, source="p:train")
    with pytest.raises(UserError, match="is a 'retail' plan, not a 'driving' one"):
        read_plan(path, domain="driving")


def _main(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    return int(exc.value.code or 0)


def test_cli_plan_and_bad_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, sizes = _catalog(tmp_path / "cat")
    params = tmp_path / "params.yaml"
    params.write_text("plan:\n  device: cuda\n  memory_gb: 80\ntrain:\n  image_size: 96\n  dimension: auto\n")
    out = tmp_path / "plan.json"
    assert _main(["plan", str(root), "--out", str(out), "--params", str(params), "--cpu-cores", "16"]) == 0
    printed = json.loads(capsys.readouterr().out)
    plan = read_plan(out, domain="retail")
    assert plan.hardware["device"] == "cuda" and plan.hardware["memory_gb"] == 80.0
    assert plan.overridden == {"train.image_size": {"planned": _median_short_32(sizes), "params": 96}}
    assert printed["effective"]["train.image_size"] == 96
    for argv, message in (
        (["plan", str(tmp_path / "nope"), "--out", str(out)], "does not exist"),
        (["plan", str(root), "--out", str(out), "--memory-gb", "-1"], "memory_gb must be > 0"),
    ):
        assert _main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_plan_recorded_in_the_deployed_model(tmp_path: Path) -> None:
    import torch

    from visionpipes.core.artifact import read_record
    from visionpipes.retail.embedding.config import EmbeddingConfig
    from visionpipes.retail.embedding.model_folder import save_model
    from visionpipes.retail.embedding.network import EmbeddingNet
    from visionpipes.retail.training.deploy import DeployParams, deploy_model

    root, _ = _catalog(tmp_path / "cat")
    plan = make_plan(root, GPU, params={"train": {"dimension": 32}}).summary()
    torch.manual_seed(0)
    config = EmbeddingConfig(
        backbone="resnet18", width_multiplier=0.25, dimension=32, image_size=64, pooling="avg"
    )
    save_model(
        tmp_path / "model",
        EmbeddingNet.from_config(config).eval(),
        config,
        {"training": {"params": {"plan": plan}}},
    )
    deploy_model(
        tmp_path / "model",
        root,
        tmp_path / "deploy",
        DeployParams(factory="Flat", check_queries=False),
        progress=False,
    )
    record = read_record(tmp_path / "deploy", domain="retail")
    assert record["plan"]["fingerprint_sha256"] == plan["fingerprint_sha256"]
    assert record["plan"]["effective"]["train.dimension"] == 32
    card = (tmp_path / "deploy" / "MODEL_CARD.md").read_text()
    assert "| `train.dimension` | 128 | 32 (params) |" in card and "cuda with 80.0 GB and 16 cores" in card


def test_train_cli_resolves_auto_from_the_plan_and_records_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vp-retail plan` then `vp-retail train --plan` on a tiny catalog (1 epoch): the auto keys take the
    plan's values, and the model folder's record carries the plan."""
    from visionpipes.retail.embedding.model_folder import load_model
    from visionpipes.retail.synth import SynthConfig, write_catalog

    write_catalog(tmp_path / "cat", SynthConfig(products=6, views=3, queries=1, size=48, seed=1))
    params = tmp_path / "params.yaml"
    params.write_text(
        "plan:\n  device: cpu\n  cpu_cores: 2\n"
        "train:\n  width_multiplier: 0.25\n  dimension: auto\n  views_per_product: auto\n  image_size: 48\n"
        "  epochs: 1\n  products_per_batch: 3\n  val_views: 0\n  logger: none\n"
    )
    plan_json = tmp_path / "plan.json"
    assert _main(["plan", str(tmp_path / "cat"), "--out", str(plan_json), "--params", str(params)]) == 0
    plan = read_plan(plan_json, domain="retail")
    assert plan.values["train.views_per_product"] == 3  # 3 views each, none held out: K at most 3
    argv = [
        "train",
        "--catalog",
        str(tmp_path / "cat"),
        "--out",
        str(tmp_path / "model"),
        "--params",
        str(params),
    ]
    assert _main([*argv, "--no-progress", "--accelerator", "cpu"]) == 2  # auto without --plan
    assert "key 'dimension' is auto but no plan was given" in capsys.readouterr().err
    assert _main([*argv, "--no-progress", "--accelerator", "cpu", "--plan", str(plan_json)]) == 0
    _, config, meta = load_model(tmp_path / "model")
    assert config.dimension == plan.values["train.dimension"] == 128
    assert meta["training"]["params"]["views_per_product"] == 3 and meta["training"]["params"]["epochs"] == 1
    recorded = meta["training"]["params"]["plan"]
    assert recorded["fingerprint_sha256"] == plan.fingerprint_sha256
    assert recorded["overridden"]["train.epochs"] == {"planned": plan.values["train.epochs"], "params": 1}
