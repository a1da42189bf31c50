"""Deploy folder and the CLI verbs around it, with a small untrained model: ONNX parity and model card,
`embed` / `index` / `query`, a catalog row with a missing image (reported with its row, the rest
indexed), and a server that refuses to start on a corrupted index or a model of another dimension
or version (one sentence, exit 2, nothing served)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from visionpipes.retail.cli import main
from visionpipes.retail.embedding.config import EmbeddingConfig
from visionpipes.retail.embedding.model_folder import save_model
from visionpipes.retail.embedding.network import EmbeddingNet
from visionpipes.retail.index.product_index import ProductIndex
from visionpipes.retail.training.deploy import DeployParams, deploy_model


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def test_deploy_folder(deployed):
    deploy = deployed / "deploy"
    assert {p.name for p in deploy.iterdir()} >= {"model.onnx", "model.json", "index", "deploy.json", "MODEL_CARD.md"}
    summary = json.loads((deploy / "deploy.json").read_text())
    assert summary["products"] == 12 and summary["vectors"] == 24 and summary["parity_max_abs_diff"] < 1e-4
    # The deployed index answers the held-out queries through the API's search path.
    assert set(summary["deployed_index"]) == {"recall_at_1", "recall_at_5", "recall_at_10", "queries"}
    model = json.loads((deploy / "model.json").read_text())
    assert model["version"] == summary["model_version"] and model["config"]["dimension"] == 32
    card = (deploy / "MODEL_CARD.md").read_text()
    assert "## Intended use and limits" in card and "parity" in card and "Flat" in card
    with ProductIndex.open(deploy / "index", dimension=32, model_version=model["version"]) as index:
        assert index.manifest.extra["model"] == "../model.onnx"
        assert (deploy / "index" / index.manifest.extra["catalog_root"]).resolve() == (deployed / "catalog").resolve()


def test_embed_index_query_verbs(deployed, tmp_path, capsys):
    code, out, _ = run_cli(
        capsys, "embed", "--model", str(deployed / "deploy"), "--catalog", str(deployed / "catalog"),
        "--out", str(tmp_path / "emb.npz"), "--no-progress",
    )
    assert code == 0 and json.loads(out)["images"] == 24
    with np.load(tmp_path / "emb.npz") as data:
        assert data["vectors"].shape == (24, 32)
        assert np.allclose(np.linalg.norm(data["vectors"], axis=1), 1, atol=1e-5)
        version = str(data["model_version"])
    code, out, _ = run_cli(
        capsys, "index", "--embeddings", str(tmp_path / "emb.npz"), "--catalog", str(deployed / "catalog"),
        "--out", str(tmp_path / "idx"), "--factory", "HNSW16", "--model", str(deployed / "deploy" / "model.onnx"),
    )
    assert code == 0 and json.loads(out)["products"] == 12 and json.loads(out)["model_version"] == version
    photo = deployed / "catalog" / "images" / "P0005" / "0.png"
    code, out, _ = run_cli(capsys, "query", str(photo), "--index", str(tmp_path / "idx"), "--k", "3")
    results = json.loads(out)["results"]
    assert code == 0 and len(results) == 3 and results[0]["product_id"] == "P0005"
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)
    code, _, err = run_cli(capsys, "query", str(tmp_path / "nope.png"), "--index", str(tmp_path / "idx"))
    assert code == 2 and "does not exist" in err and "Traceback" not in err


def test_catalog_row_with_missing_image_is_reported_and_the_rest_indexed(deployed, tmp_path):
    catalog = tmp_path / "catalog"
    shutil.copytree(deployed / "catalog", catalog)
    lines = (catalog / "catalog.csv").read_text().splitlines()
    lines.insert(3, "P9999,images/P9999/0.png,ghost,circle,red,solid,A")  # becomes line 4
    (catalog / "catalog.csv").write_text("\n".join(lines) + "\n")
    summary = deploy_model(deployed / "model", catalog, tmp_path / "deploy", DeployParams(), progress=False)
    assert summary["products"] == 12 and summary["vectors"] == 24
    assert len(summary["skipped_rows"]) == 1
    assert "catalog.csv row 4: image images/P9999/0.png of product 'P9999' does not exist" in summary["skipped_rows"][0]


def test_serve_refuses_corrupted_index_and_mismatched_models(deployed, tmp_path, capsys):
    index = tmp_path / "deploy"
    shutil.copytree(deployed / "deploy", index)
    snapshot = next((index / "index").glob("snapshot-*/index.faiss"))
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snapshot.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "serve", "--index", str(index), "--port", "0")
    assert code == 2 and "does not match its manifest checksum (corrupted)" in err
    assert err.count("\n") == 1 and "Traceback" not in err and "serving" not in err

    # A model of another dimension, then one of the same dimension but other weights (another version).
    shutil.rmtree(index)
    shutil.copytree(deployed / "deploy", index)
    for dim, expected in ((16, "holds 32-d embeddings but the model produces 16-d"), (32, "was built with model")):
        torch.manual_seed(dim)
        config = EmbeddingConfig(backbone="resnet18", width_multiplier=0.25, dimension=dim, image_size=64, pooling="avg")
        save_model(tmp_path / f"m{dim}", EmbeddingNet.from_config(config).eval(), config, {})
        deploy_model(tmp_path / f"m{dim}", deployed / "catalog", tmp_path / f"d{dim}", DeployParams(check_queries=False), progress=False)
        code, _, err = run_cli(
            capsys, "serve", "--index", str(index), "--model", str(tmp_path / f"d{dim}" / "model.onnx"), "--port", "0"
        )
        assert code == 2 and expected in err and "Traceback" not in err
    # The refused starts left the index intact: it still opens and serves its own model.
    with ProductIndex.open(index / "index") as idx:
        assert len(idx) == 12


def test_cli_bad_input_is_one_sentence(deployed, tmp_path, capsys):
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 1\n  learning_rate: 0.1\n")
    cases = [
        (["train", "--catalog", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m")], "catalog"),
        (
            ["train", "--catalog", str(deployed / "catalog"), "--out", str(tmp_path / "m"), "--params", str(tmp_path / "params.yaml")],
            "params.yaml:train: unknown key 'learning_rate'",
        ),
        (["train", "--catalog", str(deployed / "catalog"), "--out", str(tmp_path / "m"), "--backbone", "vgg99"], "unknown backbone"),
        (["evaluate", "--model", str(tmp_path), "--catalog", str(deployed / "catalog"), "--out", str(tmp_path / "e")], "neither an .onnx"),
        (["deploy", "--model", str(deployed / "model"), "--catalog", str(deployed / "catalog"), "--out", str(tmp_path / "d"),
          "--factory", "IVF4096,Flat"], "needs at least 4096 vectors"),
        (["serve", "--index", str(tmp_path / "none")], "does not exist"),
        (["index", "--embeddings", str(deployed / "catalog" / "catalog.csv"), "--catalog", str(deployed / "catalog"),
          "--out", str(tmp_path / "i")], "not an embeddings .npz"),
    ]
    for argv, expected in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and expected in err and err.startswith("error: ") and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "d").exists() and not (tmp_path / "i").exists()
