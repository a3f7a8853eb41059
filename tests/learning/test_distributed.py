"""Data-parallel training over torch.distributed: two CPU processes (gloo)."""

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from implicit_geom.learning import NeuralImplicitManifold
from implicit_geom.learning.distributed import (
    DistContext,
    DistributedTrainer,
    context,
    make_trainer,
)
from implicit_geom.manifolds.neural import NetworkImplicitManifold
from implicit_geom.learning.trainer import Trainer

FAST = dict(hidden=(16, 16), epochs=30, batch_size=300, n_negatives=64, buffer_size=256,
            langevin_steps=3, progress=False, seed=0)

CLI_FAST = ["--n-samples", "400", "--mdf-epochs", "30", "--ebm-iter", "20", "--n-eval", "20",
            "--no-progress"]


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _circle(n=600):
    gen = torch.Generator().manual_seed(3)
    angle = 2 * torch.pi * torch.rand(n, generator=gen, dtype=torch.float64)
    return torch.stack([angle.cos(), angle.sin()], -1)


def _worker(rank, world, port, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from implicit_geom.learning.distributed import init_distributed, shutdown_distributed

    ctx, _ = init_distributed("cpu")
    try:
        model = NeuralImplicitManifold(2, **FAST).fit(_circle())
        trainer = model._trainer
        torch.save({"weights": [p.detach().clone() for p in model.net.parameters()],
                    "buffer": model._sampler.buffer.clone(),
                    "history": trainer.history, "kind": type(trainer).__name__},
                   os.path.join(folder, f"rank{rank}.pt"))
        model.save(os.path.join(folder, "model.ckpt"))
        # Resume on both ranks from the one checkpoint rank 0 wrote.
        again = NeuralImplicitManifold.load(os.path.join(folder, "model.ckpt"), progress=False)
        again.fit(_circle(), epochs=3, resume=True)
        torch.save({"epoch": again._trainer.epoch,
                    "weights": [p.detach().clone() for p in again.net.parameters()]},
                   os.path.join(folder, f"resumed{rank}.pt"))
        # A constrained EBM by PCD on the unit circle: sharded replay buffer.
        from implicit_geom.manifolds import ImplicitSphere
        from implicit_geom.models import ConstrainedEBM

        ebm = ConstrainedEBM(ImplicitSphere(1), method="pcd", n_iter=8, n_mcmc_steps=2,
                             batch_size=32, buffer_size=64, step_size=0.3, seed=0)
        ebm.fit(_circle())
        torch.save({"weights": [p.detach().clone() for p in ebm.energy_net.parameters()],
                    "buffer": ebm.buffer_, "history": ebm.history_},
                   os.path.join(folder, f"ebm{rank}.pt"))
        # What `torchrun ... implicit-geom fit two_circles --out DIR` runs on
        # each rank (last: main() leaves the process group when done).
        from implicit_geom.cli import main

        assert main(["fit", "two_circles", "--out", os.path.join(folder, "cli"),
                     *CLI_FAST]) == 0
    finally:
        shutdown_distributed()


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("ddp"))
    # fork: the children inherit the imported library (spawn would re-import
    # torch and geomstats in each, several seconds on a loaded machine).
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(2, _free_port(), folder), nprocs=2, join=True,
                       start_method=method)
    return folder


def test_two_processes_train_one_model(two_process_run):
    # Catches a missing gradient all-reduce (each rank sees other batches, so
    # un-synchronised weights drift apart), unsharded chains (both ranks would
    # run the same negatives), and a trainer that is not the distributed one.
    r0 = torch.load(os.path.join(two_process_run, "rank0.pt"), weights_only=True)
    r1 = torch.load(os.path.join(two_process_run, "rank1.pt"), weights_only=True)
    assert r0["kind"] == r1["kind"] == "DistributedTrainer"
    for a, b in zip(r0["weights"], r1["weights"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert r0["buffer"].shape == r1["buffer"].shape == (128, 2)  # 256 chains, half each
    assert not torch.allclose(r0["buffer"], r1["buffer"])
    assert r0["history"] == r1["history"]  # terms averaged over ranks


def test_two_processes_agree_with_one(two_process_run):
    # Same settings in one process: both learn the unit circle, to comparable
    # accuracy and loss (the global batch and learning rate are the same; only
    # the random streams differ). Catches a loss or gradient scaled by the
    # number of ranks (e.g. summed instead of averaged).
    single = NeuralImplicitManifold(2, **FAST).fit(_circle())
    r0 = torch.load(os.path.join(two_process_run, "rank0.pt"), weights_only=True)
    # Rank 0's weights with the single fit's standardisation, as the zero set
    # of a given network (an unfitted NeuralImplicitManifold refuses geometry).
    net = copy.deepcopy(single.net)
    with torch.no_grad():
        for p, w in zip(net.parameters(), r0["weights"]):
            p.copy_(w)
    dist2 = NetworkImplicitManifold(net, 2)
    test = _circle(200) * 1.0
    for model in (single, dist2):
        radius = model.projection(test * 1.2).norm(dim=-1)
        assert float((radius - 1).abs().median()) < 0.05
    loss1, loss2 = single.history_["loss"][-1], r0["history"]["loss"][-1]
    assert 0.5 < loss2 / loss1 < 2.0


def test_checkpoint_written_once_and_resumable(two_process_run):
    # Rank 0 wrote one checkpoint holding every rank's chains; both ranks
    # resumed from it, continued the schedule and stayed identical.
    files = sorted(os.listdir(two_process_run))
    assert [f for f in files if f.startswith("model")] == ["model.ckpt"]
    model = NeuralImplicitManifold.load(os.path.join(two_process_run, "model.ckpt"))
    assert model._sampler.buffer.shape == (256, 2)
    a = torch.load(os.path.join(two_process_run, "resumed0.pt"), weights_only=True)
    b = torch.load(os.path.join(two_process_run, "resumed1.pt"), weights_only=True)
    assert a["epoch"] == b["epoch"] == FAST["epochs"] + 3
    for x, y in zip(a["weights"], b["weights"]):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_single_process_context():
    # Without a process group everything is rank 0 of 1 and the plain Trainer is used.
    ctx = context()
    assert ctx == DistContext() and ctx.is_main and not ctx.active
    assert ctx.seed(5) == 5 and ctx.shard_size(7) == 7
    x = torch.arange(6.0)
    assert ctx.all_gather(x) is x
    trainer = make_trainer([torch.nn.Parameter(torch.zeros(2))])
    assert type(trainer) is Trainer and not isinstance(trainer, DistributedTrainer)


def test_shards_cover_everything_once():
    # Catches shard sizes that drop or duplicate items when n % world != 0.
    x = torch.arange(11)
    parts = [DistContext(r, 3).shard(x) for r in range(3)]
    assert torch.equal(torch.cat(parts), x)
    assert [DistContext(r, 3).shard_size(11) for r in range(3)] == [len(p) for p in parts]
    assert len({DistContext(r, 3).seed(0) for r in range(3)}) == 3
    assert not dist.is_initialized()


def test_two_processes_train_one_energy_model(two_process_run):
    # PCD across ranks: identical energies (averaged gradients), every rank
    # holding all 64 chains after training (32 advanced by each, with its own
    # noise), the chain diagnostics averaged into one history.
    a = torch.load(os.path.join(two_process_run, "ebm0.pt"), weights_only=True)
    b = torch.load(os.path.join(two_process_run, "ebm1.pt"), weights_only=True)
    for x, y in zip(a["weights"], b["weights"]):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert a["buffer"].shape == (64, 2)
    torch.testing.assert_close(a["buffer"], b["buffer"], rtol=0, atol=0)
    assert not torch.allclose(a["buffer"][:32], a["buffer"][32:])
    assert a["history"] == b["history"] and "chain_rejected" in a["history"]


def test_cli_fit_on_two_processes(two_process_run):
    # The torchrun path of `implicit-geom fit`: one model folder written (by
    # rank 0; rank 1's scratch copy gone, no temporary left), both ranks'
    # training in one history, the evaluation samples drawn half by each rank
    # (10 + 10, distinct streams) and all on M. Catches a rank writing the
    # folder twice or racing rank 0 for it, and ranks drawing the same chains
    # (with one seed both halves would be identical).
    import json

    import numpy as np

    out = os.path.join(two_process_run, "cli")
    assert sorted(f for f in os.listdir(two_process_run) if "cli" in f) == ["cli"]
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["samples"] == {"n": 20, "seed": 0, "processes": 2}
    samples = np.load(os.path.join(out, "samples.npy"))
    assert samples.shape == (20, 2)
    gaps = np.linalg.norm(samples[:10, None] - samples[None, 10:], axis=-1)
    assert gaps.min() > 1e-6
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["max_abs_F_samples"] <= 1e-9 and metrics["test_dist_median"] < 0.05
    history = json.load(open(os.path.join(out, "history.json")))
    assert len(history["manifold"]["loss"]) == 30 and len(history["EBM"]["loss"]) == 20
