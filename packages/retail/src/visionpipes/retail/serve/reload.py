"""A running server switches to a new deployment (new model and/or rebuilt index) without losing the
writes it acknowledged: `POST /admin/reload` (`vp-retail reload`).

The new deployment is a finished deploy folder beside the served one (`vp-retail deploy --out
<served>.next`). The reload:

1. opens it (its model from its own manifest and `model.json`, checksums verified; its index locked):
   anything wrong refuses the reload (422) and the old deployment goes on serving, untouched;
2. pauses writes (they wait; reads go on against the old deployment);
3. replays the live changes of the old deployment into the new one: every product added or replaced
   through the API (its stored uploaded photos re-embedded with the NEW model, copied into the new
   uploads folder) and every deletion, by id; each lands in the new journal, fsynced (replay is
   idempotent: replace by id, delete by id);
4. swaps the two folders in one `renameat2(RENAME_EXCHANGE)` (the served path now holds the new
   deployment, the new one's path the old), reopens the new index at the served path under the lock it
   already holds, and switches the server to it in memory; writes resume;
5. closes the old deployment once the reads still using it are done and moves it aside to
   `<served>.previous-<time>`, journal included (a way back: reload it the same way), so that the next
   deploy can use the same `<served>.next` name.

A crash (kill -9) before step 4's exchange restarts on the old deployment with every acknowledged
write (the new folder holds a partial, re-playable replay); after it, on the new deployment with every
write replayed. `VP_RETAIL_RELOAD_FAULT=after-replay|after-swap` kills the process at those points (tests).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from visionpipes.core.errors import UserError
from visionpipes.core.image import read_image
from visionpipes.retail.embedding.embedders import load_embedder
from visionpipes.retail.index.manifest import fsync_path
from visionpipes.retail.index.records import ProductRecord
from visionpipes.retail.serve.deployment import INDEX_DIR, find_index_dir, manifest_model
from visionpipes.retail.serve.maintenance import WriteGate
from visionpipes.retail.serve.served import Served, ServedDeployment, open_served
from visionpipes.retail.serve.uploads import UPLOAD_PREFIX, resolve_image

#: Test-only fault injection: kill the server with SIGKILL `after-replay` (before the swap) or `after-swap`.
FAULT_ENV = "VP_RETAIL_RELOAD_FAULT"
#: Products re-embedded per model run during a replay.
REPLAY_BATCH = 16


class ReloadRequest(BaseModel):
    deployment: str = Field(
        description="the new deploy folder: a sibling of the served folder (absolute, or relative to their parent)"
    )


def _fault(point: str) -> None:
    if os.environ.get(FAULT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def exchange_paths(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`).

    Raises:
        UserError: where the system cannot (another OS, an old kernel or a filesystem without it).
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        renameat2 = None
    at_fdcwd, rename_exchange = -100, 2
    if (
        renameat2 is not None
        and renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    ):
        return
    err = ctypes.get_errno() if renameat2 is not None else 0
    raise UserError(
        f"cannot swap {a} and {b} atomically here ({os.strerror(err) if err else 'no renameat2'}): "
        "stop the server and deploy in its place instead."
    )


def target_folder(served_root: Path, deployment: str) -> Path:
    """The new deployment's folder, checked: it exists, is not the served one, and is its sibling
    (one filesystem, so the swap is atomic; and a token holder cannot point the server anywhere else).

    Raises:
        UserError: on any of these.
    """
    parent = served_root.resolve().parent
    path = Path(deployment)
    target = (path if path.is_absolute() else parent / path).resolve()
    if target == served_root.resolve():
        raise UserError(f"{deployment} is the deployment being served; deploy the new one beside it.")
    if target.parent != parent:
        raise UserError(
            f"new deployment {target} must be beside the served one (in {parent}), e.g. "
            f"vp-retail deploy --out {parent / (served_root.name + '.next')}."
        )
    if not target.is_dir():
        raise UserError(f"new deployment {target} does not exist.")
    return target


def _copy_upload(src: Path, folder: Path) -> None:
    """Copy an uploaded photo into `folder` under its (content-hash) name, fsynced; kept if already there."""
    folder.mkdir(exist_ok=True)
    target = folder / src.name
    if target.exists():
        return
    tmp = folder / f".{src.name}.tmp"
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout)
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(tmp, target)


def replay_live_changes(old: Served, new: Served) -> dict[str, int]:
    """Apply the old deployment's live changes (API adds/replaces, deletions) to the new one.

    Products are re-embedded from their stored photos with the new deployment's model and added with
    `replace`; deletions are applied (and remembered) by id. Durable when it returns.

    Raises:
        UserError: if a live product's photo is missing (nothing is swapped then).
    """
    puts, deleted = old.index.live_changes(UPLOAD_PREFIX)
    views = 0
    for start in range(0, len(puts), REPLAY_BATCH):
        records, pixels, counts = [], [], []
        for pid in puts[start : start + REPLAY_BATCH]:
            product = old.index.get(pid)
            paths = old.index.view_paths(pid)
            if product is None or not paths:
                continue
            for path in paths:
                file = resolve_image(path, catalog_root=old.images_root, uploads=old.uploads)
                if file is None:
                    raise UserError(
                        f"product {pid!r}: its photo {path!r} is missing from {old.uploads}, so the new model cannot "
                        "embed it; restore the photo (or delete the product), then reload again."
                    )
                pixels.append(read_image(file, name=f"photo {file} of product {pid!r}"))
                if path.startswith(UPLOAD_PREFIX):
                    _copy_upload(file, new.uploads)
            records.append(ProductRecord(pid, product.title, product.category, product.metadata, list(paths)))
            counts.append(len(paths))
        if not records:
            continue
        if new.uploads.is_dir():
            fsync_path(new.uploads)
        vectors = new.embed(pixels)
        split, offset = [], 0
        for n in counts:
            split.append(vectors[offset : offset + n])
            offset += n
        new.index.add_many(records, split, replace=True)
        views += len(pixels)
    gone = new.index.delete_many(deleted, remember_all=True) if deleted else []
    return {
        "products_replayed": len(puts),
        "views_reembedded": views,
        "deletions_replayed": len(deleted),
        "deleted_in_new": len(gone),
    }


class Reloader:
    """Switches a server's deployment (see the module docstring); one reload at a time."""

    def __init__(self, served: ServedDeployment, gate: WriteGate) -> None:
        self.served = served
        self.gate = gate
        self._busy = threading.Lock()
        self.last: dict[str, Any] | None = None

    def reload(self, deployment: str) -> dict[str, Any]:
        """Reload from the deploy folder `deployment` (see `target_folder`).

        Raises:
            UserError: if it is unusable (nothing changes); RuntimeError if a reload is already running.
        """
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("a reload is already running")
        try:
            return self._reload(deployment)
        finally:
            self._busy.release()

    def _reload(self, deployment: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        old = self.served.current
        root = old.root
        target = target_folder(root, deployment)
        index_dir = find_index_dir(target)
        inside = old.index_dir.resolve() != root.resolve()  # serving a deploy folder (index/ inside)
        if inside != (index_dir.resolve() != target):
            kind = f"a deploy folder holding {INDEX_DIR}/" if inside else "an index directory"
            raise UserError(f"new deployment {target} must be {kind}, like the served {root}.")
        embedder = load_embedder(manifest_model(index_dir), threads=self.served.threads)
        new = open_served(target, index_dir, embedder, settings=self.served.settings)
        open_new: Served | None = new  # closed here if the reload stops before the switch
        try:
            with self.gate.paused():
                t_pause = time.perf_counter()
                replayed = replay_live_changes(old, new)
                _fault("after-replay")
                lock = new.index.detach_lock()
                open_new = None
                # The old journal leaves WAL mode, so that no -wal/-shm file of it is named (and deleted)
                # by path once its folder has moved; reads of the old deployment go on meanwhile.
                old.index.freeze()
                try:
                    exchange_paths(target, root)
                except BaseException:
                    lock.release()
                    raise
                fsync_path(root.resolve().parent)
                _fault("after-swap")
                served_index = root / index_dir.relative_to(target)
                try:
                    new = open_served(root, served_index, embedder, settings=self.served.settings, lock=lock)
                except BaseException:
                    exchange_paths(target, root)  # put the old deployment back where it was
                    fsync_path(root.resolve().parent)
                    raise
                self.served.swap(new)
                paused = time.perf_counter() - t_pause
        finally:
            if open_new is not None:
                open_new.index.close()
        drained = self.served.drain(old)
        old.index.close()
        # The old deployment (its journal included: a way back) moves aside, freeing the new one's name
        # for the next `vp-retail deploy --out <served>.next`.
        previous = root.resolve().parent / f"{root.resolve().name}.previous-{time.strftime('%Y%m%d-%H%M%S')}"
        if previous.exists():
            previous = previous.with_name(
                f"{previous.name}-{os.getpid()}-{int(time.time() * 1000) % 1000:03d}"
            )
        os.replace(target, previous)
        fsync_path(previous.parent)
        self.last = {
            "deployment": str(root),
            "previous_deployment": str(previous),
            "model_version": new.index.model_version,
            "previous_model_version": old.index.model_version,
            **replayed,
            "products": len(new.index),
            "writes_paused_seconds": round(paused, 3),
            "seconds": round(time.perf_counter() - t0, 3),
            "old_closed_after_reads": drained,
        }
        return self.last


def add_reload_route(app: FastAPI, *, served: ServedDeployment, gate: WriteGate) -> None:
    """`POST /admin/reload` (token-protected like every `/admin` route)."""
    reloader = Reloader(served, gate)
    app.state.reloader = reloader

    @app.post("/admin/reload")
    def reload(request: ReloadRequest) -> dict[str, Any]:
        """Switch to a new deploy folder beside the served one, replaying the live adds, replaces and
        deletes into it (re-embedded with its model). Needs the API token."""
        try:
            return reloader.reload(request.deployment)
        except RuntimeError as err:
            raise HTTPException(409, str(err)) from None
