"""Multi-process training on the CPU (gloo) with Caffe's P2PSync semantics: gradients summed over
ranks and scaled by 1/#ranks, each rank reading its round-robin share of the records. Two ranks of
batch B must follow the same weights as one process with iter_size 2 (same samples, same
augmentation draws), and rank 0's statistics blobs are the ones every rank keeps."""
import os
import sys

import pytest
import torch
import torch.multiprocessing as mp

from scratchdet.engine import distributed as D

sys.path.insert(0, os.path.dirname(__file__))
import test_train_loop as loop  # noqa: E402  (the stand-in net and its data)


def _rank_main(rank, solver, out_dir):
    for name, mod in loop._fake_modules().items():
        sys.modules[name] = mod
    from scratchdet.engine.train import Trainer
    dist = D.Dist(rank, 2, "cpu")
    D.init_group(dist)
    try:
        t = Trainer(solver, dist=dist, quiet=True, workers=0)
        res = t.solve()
        torch.save({"status": res.status, "params": [p.tensor.detach() for p in t.sgd.params]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        t.close()
    finally:
        D.close_group()


def test_two_ranks_match_one_process_with_iter_size_two(loop_standin, tmp_path, lmdb_path):
    solver = loop.make_solver(tmp_path, lmdb_path, iter_size=1, test_interval=0, snapshot=0,
                              snapshot_after_train=False, max_iter=5, display=0)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(D.free_port())
    mp.start_processes(_rank_main, args=(str(solver), str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(r["status"] == "done" for r in ranks)
    single = loop.trainer(solver, iter_size_factor=2)
    single.solve()
    single.close()
    w, b, stat = (p.tensor.detach() for p in single.sgd.params)
    for r in ranks:
        rw, rb, rstat = r["params"]
        torch.testing.assert_close(rw, w, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rb, b, rtol=1e-5, atol=1e-6)
    # the statistic blob is per rank during the forward pass, then rank 0's is broadcast
    assert torch.equal(ranks[0]["params"][2], ranks[1]["params"][2])
    assert not torch.equal(ranks[0]["params"][2], stat)


@pytest.fixture
def loop_standin(monkeypatch):
    for name, mod in loop._fake_modules().items():
        monkeypatch.setitem(sys.modules, name, mod)


@pytest.fixture(scope="module")
def lmdb_path(tmp_path_factory):
    return loop.lmdb_path.__wrapped__(tmp_path_factory)
