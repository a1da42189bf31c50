"""Deployment of a trained embedding model: ONNX export with the parity check, batch embedding of the
catalog with that ONNX model, the FAISS index + SQLite catalog + manifest that `vp-retail serve` loads,
a check of the deployed index on the held-out queries, and a model card.

The deploy folder (written beside its target, then swapped with the old one in one atomic
`renameat2(RENAME_EXCHANGE)`, so never half-written and never absent; refused while a server has the
old one open, or while its journal holds live changes unless they are explicitly discarded)::

    model.onnx      the embedding model (input `image` (n, 3, S, S), output `embedding` (n, dimension))
    model.json      `core.artifact` record: model.onnx with its sha256, the configuration, version and parity
    index/          the `ProductIndex` directory; its manifest names ../model.onnx and the catalog root
    deploy.json     counts, timings and the deployed index's Recall@K on the held-out queries
    MODEL_CARD.md   what the model is, how it was trained and measured, and its limits

It trains nothing and serves nothing.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from visionpipes.core.artifact import file_entry, file_version, read_metrics, write_record
from visionpipes.core.config import ConfigModel, Field
from visionpipes.core.errors import UserError
from visionpipes.core.io import write_json
from visionpipes.retail.catalog import load_catalog, read_queries
from visionpipes.retail.embedding.batch import embed_catalog, embed_queries
from visionpipes.retail.embedding.config import EmbeddingConfig
from visionpipes.retail.embedding.embedders import MODEL_ONNX, OnnxEmbedder
from visionpipes.retail.embedding.model_folder import DOMAIN, MODEL_CONFIG, load_model
from visionpipes.retail.embedding.preprocess import normalize_batch, read_view
from visionpipes.retail.index.catalog_store import CatalogStore
from visionpipes.retail.index.faiss_index import SearchSettings, build_faiss_index, min_training_vectors
from visionpipes.retail.index.manifest import MANIFEST_NAME, fsync_path, read_manifest
from visionpipes.retail.index.product_index import ProductIndex
from visionpipes.retail.index.records import catalog_records
from visionpipes.retail.index.snapshot import DirectoryLock
from visionpipes.retail.serve.deployment import INDEX_DIR
from visionpipes.retail.training.model_card import model_card


class DeployParams(ConfigModel):
    """The `deploy` section of `params.yaml`.

    Attributes:
        factory: FAISS `index_factory` string ('Flat', 'IVF64,Flat', 'IVF64,PQ16', 'HNSW32', ...).
        backend: the vector store: 'faiss' (in the server's process) or 'milvus' (milvus-lite inside the
            index folder, or the Milvus server `milvus_uri`; see `visionpipes.retail.index.milvus_index`).
        milvus_index: the Milvus index type ('HNSW', 'HNSW,M=32', 'IVF_FLAT,nlist=256', 'FLAT').
        milvus_uri: a Milvus server (default `$MILVUS_URI`, else milvus-lite); its token is read from
            `$MILVUS_TOKEN` when the index is built and served, never from params (they are committed).
        nprobe: IVF lists searched per query.
        ef_search: HNSW candidate-list size.
        parity_atol: absolute tolerance of the ONNX parity check (plus the same relative tolerance).
        batch_size: images per ONNX run when embedding the catalog.
        check_queries: search the deployed index with the catalog's queries.csv, if it has one.
    """

    factory: str = Field("Flat", min_length=1)
    backend: Literal["faiss", "milvus"] = "faiss"
    milvus_index: str = Field("HNSW", min_length=1)
    milvus_uri: str | None = None
    nprobe: int = Field(16, ge=1)
    ef_search: int = Field(64, ge=1)
    parity_atol: float = Field(1e-4, gt=0)
    batch_size: int = Field(64, ge=1)
    check_queries: bool = True

    @property
    def index_factory(self) -> str:
        """What the index is built with: the FAISS factory string, or the Milvus index type."""
        return self.milvus_index if self.backend == "milvus" else self.factory

    def search_settings(self) -> SearchSettings:
        """The index's query-time settings."""
        return SearchSettings(nprobe=self.nprobe, ef_search=self.ef_search)


def export_model(model: torch.nn.Module, config: EmbeddingConfig, sample: np.ndarray, path: Path, *, atol: float) -> Any:
    """Export `model` to ONNX (dynamic batch) and check it against the eager model on `sample`
    ((n, S, S, 3) uint8 catalog images). Returns the `ExportReport`.

    Raises:
        UserError: if the ONNX model's embeddings differ beyond tolerance (nothing is written).
    """
    from visionpipes.core.export import ExportParityError, export_onnx

    x = torch.from_numpy(normalize_batch(sample))
    try:
        return export_onnx(
            model,
            x,
            path,
            input_names=["image"],
            output_names=["embedding"],
            dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}},
            atol=atol,
            rtol=atol,
        )
    except ExportParityError as err:
        raise UserError(f"ONNX export of the {config.backbone} embedding model failed its parity check: {err}") from None


def deploy_model(
    model_dir: str | os.PathLike,
    catalog_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    params: DeployParams,
    *,
    eval_metrics: str | os.PathLike | None = None,
    progress: bool = True,
    discard_live_changes: bool = False,
) -> dict[str, Any]:
    """Export, embed the catalog with the ONNX model, build the index and write the deploy folder.

    Args:
        model_dir: a trained model folder (`vp-retail train`).
        catalog_path: the catalog to index.
        out_dir: the deploy folder to write (replaced if it exists).
        params: index and export settings.
        eval_metrics: the `metrics.json` of `vp-retail evaluate`, quoted in the model card.
        progress: show the embedding progress bar.
        discard_live_changes: replace a deployment whose journal holds products added or deleted
            through the API (they are lost); otherwise such a deployment is refused.

    Returns:
        The deploy summary (also written to `deploy.json`).

    Raises:
        UserError: on a bad model, catalog, factory string, or a failed parity check; if the deploy
            folder's index is open in a server; if its journal holds live changes (see `discard_live_changes`).
    """
    start = time.perf_counter()
    model, config, meta = load_model(model_dir)
    catalog = load_catalog(catalog_path)
    out = Path(out_dir)
    if out.parent and not out.parent.is_dir():
        raise UserError(f"folder {out.parent} for the deploy output does not exist.")
    # Fail on a bad factory string, or one the catalog is too small to train, before the long work.
    if params.backend == "milvus":
        from visionpipes.retail.index.milvus_index import parse_factory

        parse_factory(params.milvus_index)
    need = 0 if params.backend == "milvus" else min_training_vectors(build_faiss_index(params.factory, config.dimension)[0])
    if need > catalog.num_views:
        raise UserError(
            f"index factory {params.factory!r} needs at least {need} vectors to train, the catalog has "
            f"{catalog.num_views} images: use a smaller IVF/PQ setting or 'Flat'."
        )
    _check_replaceable(out, discard_live_changes).release()  # refuse early, before the long work
    sample_views = [v.path for _, v in catalog.views()[:8]]
    sample = np.stack([read_view(p, config.image_size) for p in sample_views])
    final_index = (out / INDEX_DIR).resolve()
    plan = (meta.get("training", {}).get("params") or {}).get("plan")  # `vp-retail train --plan`
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        t0 = time.perf_counter()
        report = export_model(model, config, sample, tmp / MODEL_ONNX, atol=params.parity_atol)
        export_seconds = time.perf_counter() - t0
        version = file_version(tmp / MODEL_ONNX)
        parity = {"max_abs_diff": report.max_abs_diff, "max_rel_diff": report.max_rel_diff,
                  "atol": report.atol, "rtol": report.rtol, "exporter": report.exporter, "opset": report.opset}
        record = write_record(
            tmp,
            domain=DOMAIN,
            files={"onnx": file_entry(tmp, MODEL_ONNX, max_abs_diff=report.max_abs_diff)},
            config=config.to_dict(),
            version=version,
            format="onnx",
            input={"name": "image", "shape": ["batch", 3, config.image_size, config.image_size],
                   "preprocessing": "RGB, bilinear resize to image_size x image_size, /255, ImageNet mean/std"},
            output={"name": "embedding", "shape": ["batch", config.dimension], "normalised": "L2"},
            parity=parity,
            trained_model_version=meta.get("version"),
            training=meta.get("training", {}),
            **({"plan": plan} if plan else {}),
        )
        embedder = OnnxEmbedder(tmp / MODEL_ONNX, image_size=config.image_size, model_version=version,
                                batch_size=params.batch_size)
        embedded = embed_catalog(embedder, catalog, progress=progress, batch_size=params.batch_size)
        records, vectors = catalog_records(catalog, embedded.labels, embedded.relpaths, embedded.vectors)
        if not records:
            raise UserError(f"catalog {catalog.source} has no readable image to index.")
        extra = {
            "model": f"../{MODEL_ONNX}",
            "model_config": f"../{MODEL_CONFIG}",
            "image_size": config.image_size,
            "catalog_root": os.path.relpath(Path(catalog.root).resolve(), final_index),
            "catalog_root_absolute": str(Path(catalog.root).resolve()),
        }
        t0 = time.perf_counter()
        index = ProductIndex.build(
            tmp / INDEX_DIR,
            records,
            vectors,
            dimension=config.dimension,
            factory=params.index_factory,
            model_version=version,
            settings=params.search_settings(),
            extra=extra,
            backend=params.backend,
            milvus_uri=params.milvus_uri,
        )
        index_seconds = time.perf_counter() - t0
        check: dict[str, Any] = {}
        queries_csv = Path(catalog.root) / "queries.csv"
        if params.check_queries and queries_csv.is_file():
            check = _check_deployed(index, embedder, queries_csv, progress=progress)
        stats = index.stats()
        index.close()
        skipped = [str(p) for p in (*catalog.problems, *embedded.problems)]
        summary = {
            "products": stats["products"],
            "vectors": stats["vectors"],
            "factory": params.index_factory,
            "backend": stats["backend"],
            "vector_store": stats["device"],
            "dimension": config.dimension,
            "model_version": version,
            "parity_max_abs_diff": report.max_abs_diff,
            "export_seconds": round(export_seconds, 2),
            "embed_seconds": round(embedded.seconds, 2),
            "embed_images_per_second": round(len(embedded.labels) / max(embedded.seconds, 1e-9), 1),
            "index_seconds": round(index_seconds, 2),
            "deployed_index": check,
            "skipped_rows": skipped,
        }
        metrics = read_metrics(eval_metrics, producer="vp-retail evaluate")
        card = model_card(config, record, summary, metrics, factory=params.index_factory, parity_atol=params.parity_atol)
        if params.backend == "milvus":
            card.section("Vector store", bullets=[
                f"Milvus (`backend: milvus`, {stats['device']}), index type `{params.index_factory}`, inner product "
                "on L2-normalised vectors; categories filtered inside Milvus. Recall@10 against exact search "
                ">= 0.99 on 8,000 random 128-d vectors (tests/retail/test_milvus_backend.py).",
                "The SQLite catalog and journal stay the source of truth; the collection is reconciled with "
                "them on every open.",
            ])
        if plan:
            card.section(
                "Plan (`vp-retail plan`: settings from the catalog and the hardware)",
                table=(
                    ["key", "planned", "used"],
                    [
                        [f"`{k}`", str(v), str(plan.get("effective", {}).get(k, v)) + (" (params)" if k in plan.get("overridden", {}) else "")]
                        for k, v in plan.get("values", {}).items()
                    ],
                ),
            )
            hw = plan.get("hardware", {})
            card.lines += [
                f"Planned for {hw.get('device', '?')} with {hw.get('memory_gb', '?')} GB and {hw.get('cpu_cores', '?')} cores"
                f"{'' if hw.get('probed', True) else ' (given, not probed)'}; catalog fingerprint sha256 "
                f"`{str(plan.get('fingerprint_sha256', ''))[:16]}`.",
                "",
            ]
        card.write(tmp)
        summary["seconds"] = round(time.perf_counter() - start, 2)
        write_json(tmp / "deploy.json", summary)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp made it 0700
        fsync_path(tmp)
        _swap_into_place(tmp, out, discard_live_changes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the new folder on failure, the old one after the swap
    return summary


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_replaceable(out: Path, discard_live_changes: bool) -> _NoLock | DirectoryLock:
    """The lock of `out`'s index (held: no server can open it until released), after checking that
    `out` may be replaced.

    Raises:
        UserError: if a server has the index open, or its journal holds live changes not discarded.
    """
    index_dir = out / INDEX_DIR
    if not (index_dir / MANIFEST_NAME).is_file():
        return _NoLock()
    try:
        lock = DirectoryLock(index_dir)
    except UserError:
        raise UserError(
            f"deploy folder {out} is being served (its index is open in another process, e.g. vp-retail serve): "
            "stop that server, then deploy again; the server's live adds and deletes stay in its journal."
        ) from None
    try:
        manifest = read_manifest(index_dir)
        changes = 0
        if (index_dir / manifest.journal).is_file():
            store = CatalogStore(
                index_dir / manifest.files["catalog"].path, index_dir / manifest.journal, dimension=manifest.dimension
            )
            changes = store.journal_size()
            store.close()
    except BaseException:
        lock.release()
        raise
    if changes and not discard_live_changes:
        lock.release()
        raise UserError(
            f"the index of deploy folder {out} holds {changes} live change(s) (products added or deleted through "
            "the API) that a new deployment would drop: keep them (do not redeploy), or pass "
            "--discard-live-changes to replace it anyway."
        )
    return lock


class _NoLock:
    def release(self) -> None:
        pass


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_into_place(new: Path, out: Path, discard_live_changes: bool) -> None:
    """Put the finished deploy folder `new` at `out`: an atomic exchange with the old one (left at
    `new`, deleted by the caller), holding the old index's lock so that no server opens it meanwhile."""
    lock = _check_replaceable(out, discard_live_changes)
    try:
        if not out.exists():
            os.replace(new, out)
        elif not _exchange(new, out):
            # No RENAME_EXCHANGE (an old kernel or filesystem): two renames; a crash between them
            # leaves the old deployment at <out>.previous (move it back by hand).
            previous = out.with_name(out.name + ".previous")
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(out, previous)
            os.replace(new, out)
            os.replace(previous, new)
        fsync_path(out.parent)
    finally:
        lock.release()


def _check_deployed(index: ProductIndex, embedder: OnnxEmbedder, queries_csv: Path, *, progress: bool) -> dict[str, Any]:
    """Recall@1/5/10 of the deployed index (the search path the API uses) on the held-out queries."""
    queries = read_queries(queries_csv)
    embedded = embed_queries(embedder, queries, progress=progress)
    if not len(embedded.labels):
        return {}
    hits = index.search(embedded.vectors, k=10)
    found = [[h.product_id for h in row] for row in hits]
    out = {
        f"recall_at_{k}": round(float(np.mean([t in f[:k] for t, f in zip(embedded.labels, found)])), 5)
        for k in (1, 5, 10)
    }
    out["queries"] = len(embedded.labels)
    return out
