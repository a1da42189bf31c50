"""The P×K training sampler under DDP: two real processes (`torchrun`, gloo over loopback) each get
whole P products × K views batches, different ones, from one shared draw per epoch; in one process
the batches are `MPerClassSampler`'s passes over every product, cut P products at a time.

This file is also the worker script: `torchrun ... tests/retail/test_ddp.py OUT` runs `_worker`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from visionpipes.retail.training.data import pk_sampler

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")
#: 6 products with 2..5 views; P=2, K=2: 5 batches of 4 per epoch in one process, 3 per rank on 2.
LABELS = [0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 4, 4, 5, 5, 5, 5]
P, K, EPOCHS = 2, 2, 2


def _batches(out: Path) -> None:
    """Worker: iterate the training loader of each epoch as Lightning does (set_epoch, then iterate)."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    np.random.seed(rank)  # noqa: NPY002 - the ranks' global generators differ; the draw must not
    sampler = pk_sampler(LABELS, P, K, seed=0)
    loader = torch.utils.data.DataLoader(
        range(len(LABELS)), batch_size=sampler.batch_size, sampler=sampler, drop_last=True
    )
    epochs = []
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        epochs.append([b.tolist() for b in loader])
    (out / f"rank{rank}.json").write_text(json.dumps({"len": len(loader), "epochs": epochs}))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two torchrun processes importing torch + Lightning: 20-50 s on 2 shared cores
def test_pk_batches_are_shared_out_whole_between_two_ranks(tmp_path: Path) -> None:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [
        str(TORCHRUN), "--nnodes", "1", "--nproc_per_node=2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        __file__, str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    single = pk_sampler(LABELS, P, K)
    assert len(single) // single.batch_size == 5
    for rank in ranks:
        assert rank["len"] == 3  # ceil(5 batches / 2 ranks), the same on both (DDP needs equal steps)
        for epoch in rank["epochs"]:
            assert len(epoch) == 3
            for batch in epoch:  # a whole P×K batch: P products, K views of each
                labels = [LABELS[i] for i in batch]
                assert len(set(labels)) == P and all(labels.count(v) == K for v in set(labels)), labels
    # the ranks train different batches (not the same data twice) ...
    for e in range(EPOCHS):
        assert ranks[0]["epochs"][e] != ranks[1]["epochs"][e]
    # ... of an epoch drawn afresh each epoch
    assert ranks[0]["epochs"][0] != ranks[0]["epochs"][1]


def test_one_process_cuts_mperclasssampler_passes_into_batches() -> None:
    """In one process the batches are consecutive passes of `MPerClassSampler(batch_size=None)` (every
    product once, K views each) cut P products at a time, carried over from epoch to epoch: 3 epochs
    of 5 batches x 2 products are exactly 5 passes over the 6 products."""
    from visionpipes.retail.training.losses import metric_learning

    MPerClassSampler = metric_learning().samplers.MPerClassSampler
    np.random.seed(3)  # noqa: NPY002 - MPerClassSampler draws from numpy's global generator
    sampler = pk_sampler(LABELS, P, K)
    ours = [i for _ in range(3) for i in sampler]
    np.random.seed(3)  # noqa: NPY002
    one_pass = MPerClassSampler(LABELS, m=K, batch_size=None, length_before_new_iter=K * 6)
    theirs = [int(i) for _ in range(5) for i in one_pass]
    assert ours == theirs and len(ours) == 3 * 5 * P * K


def test_every_product_comes_once_per_pass_also_at_the_seams() -> None:
    """7 products, P = 3: passes do not end on a batch boundary; a product already in the batch waits.
    Every batch holds P distinct products x K views, and after every batch the products' visit counts
    differ by at most 2 (independent random batches drift apart: by 8 to 16 over these 60 batches,
    20 seeds of the per-batch `MPerClassSampler`)."""
    labels = [p for p in range(7) for _ in range(3 + p % 3)]
    np.random.seed(0)  # noqa: NPY002
    sampler = pk_sampler(labels, 3, 2)
    counts = dict.fromkeys(range(7), 0)
    for _ in range(15):  # 15 epochs x 4 batches (27 views // 6)
        flat = list(sampler)
        assert len(flat) == sampler.batches * sampler.batch_size == 4 * 6
        for b in range(0, len(flat), 6):
            batch = [labels[i] for i in flat[b : b + 6]]
            assert len(set(batch)) == 3 and all(batch.count(v) == 2 for v in set(batch)), batch
            for v in set(batch):
                counts[v] += 1
            assert max(counts.values()) - min(counts.values()) <= 2, counts


if __name__ == "__main__":
    _batches(Path(sys.argv[1]))
