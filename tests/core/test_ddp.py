"""Multi-process training through `visionpipes.core.training.fit`: two real processes started by
`torchrun` (gloo over loopback, CPU) train a small model for a few SGD steps; the ranks end with the
same weights, and loss and weights match one process on the same global batch.

This file is also the worker script: `torchrun ... tests/core/test_ddp.py OUT` runs `_worker`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")
SAMPLES, GLOBAL_BATCH, STEPS, RANKS = 64, 16, 4, 2


def _module() -> object:
    """A small MLP without BatchNorm or dropout trained by plain SGD (no momentum), logging each
    step's loss; seeded, so every process builds the same initial weights."""
    import lightning

    class Regressor(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
            self.losses: list[float] = []

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.losses.append(float(loss.detach()))
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.0)

    return Regressor()


def _loader(batch_size: int, *, distributed: bool) -> torch.utils.data.DataLoader:
    """Deterministic data. Under DDP Lightning gives each rank a shuffled `DistributedSampler`
    (seed `TrainConfig.seed` = 0): rank r takes positions r, r+2, ... of the epoch's permutation, so the
    two rank batches of step j are positions 16j..16j+15. The one-process reference walks the same
    permutation (that sampler with one replica), so both runs see the same global batches."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(SAMPLES, 8, generator=g)
    y = x.sum(dim=1, keepdim=True).sin()
    data = torch.utils.data.TensorDataset(x, y)
    if distributed:
        return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
    return torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=sampler)


def _run(out: Path, *, devices: int, strategy: str) -> None:
    """Train through `fit` and write this rank's weights and per-step losses to `out`."""
    from visionpipes.core.training import TrainConfig, fit

    config = TrainConfig(
        max_epochs=1,
        max_steps=STEPS,
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        logger="none",
        progress=False,
    )
    module = _module()
    loader = _loader(GLOBAL_BATCH // devices, distributed=devices > 1)
    result = fit(module, loader, config=config, out_dir=out / "run", resume=False)
    rank = result.global_rank
    torch.save({k: v.detach().clone() for k, v in module.state_dict().items()}, out / f"rank{rank}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps({"losses": module.losses, "world_size": result.world_size}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two torchrun processes importing torch + Lightning: 20-50 s on 2 shared cores
def test_two_rank_ddp_matches_one_process(tmp_path: Path) -> None:
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    ddp.mkdir()
    single.mkdir()
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    command = [
        str(TORCHRUN), "--nnodes", "1", f"--nproc_per_node={RANKS}",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        __file__, str(ddp),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    _run(single, devices=1, strategy="auto")

    ranks = [torch.load(ddp / f"rank{r}.pt") for r in range(RANKS)]
    logs = [json.loads((ddp / f"rank{r}.json").read_text()) for r in range(RANKS)]
    reference = torch.load(single / "rank0.pt")
    reference_losses = json.loads((single / "rank0.json").read_text())["losses"]
    assert [log["world_size"] for log in logs] == [RANKS] * RANKS
    assert all(len(log["losses"]) == STEPS for log in logs) and len(reference_losses) == STEPS

    initial = _module().state_dict()
    assert any(not torch.allclose(initial[k], reference[k]) for k in initial), "training changed nothing"
    for key in reference:
        # the ranks hold the same weights: gradients were all-reduced at every step
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        # and the weights of one process on the same global batch
        torch.testing.assert_close(ranks[0][key], reference[key], rtol=1e-5, atol=1e-6, msg=key)
    # each step's loss over the global batch (the mean of the two equal rank halves) is the one-process loss
    global_losses = [sum(step) / RANKS for step in zip(*(log["losses"] for log in logs))]
    assert global_losses == pytest.approx(reference_losses, rel=1e-5, abs=1e-7)
    # and the ranks saw different halves of the batch (the data was sharded, not repeated)
    assert logs[0]["losses"] != pytest.approx(logs[1]["losses"])


if __name__ == "__main__":
    _run(Path(sys.argv[1]), devices=int(os.environ["WORLD_SIZE"]), strategy="ddp")
