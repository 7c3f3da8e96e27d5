"""Splitting a batch across torchrun ranks: every input once, balanced by size, one device each."""

from __future__ import annotations

import pytest
import torch

from realtime.batch.distributed import Ranks, gather, rank_device, ranks_from_env, shard


def test_ranks_from_torchrun_variables():
    assert ranks_from_env({}) == Ranks(0, 1, 0)
    assert ranks_from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == Ranks(5, 8, 1)
    assert ranks_from_env({"RANK": "3", "WORLD_SIZE": "4"}).local_rank == 3
    for bad in ({"RANK": "4", "WORLD_SIZE": "4"}, {"WORLD_SIZE": "0"}, {"RANK": "x"}):
        with pytest.raises(ValueError, match="RANK"):
            ranks_from_env(bad)
    assert Ranks(1, 2, 1).label == "rank 1/2" and Ranks().label == ""


def test_shard_gives_every_item_to_exactly_one_rank_balanced_by_size():
    items = [f"v{i}" for i in range(7)]
    sizes = [700, 100, 100, 100, 300, 300, 100]
    shares = [shard(items, sizes, Ranks(r, 3, r)) for r in range(3)]
    # Largest first onto the least loaded rank: 700 | 300+100+100 | 300+100+100 (ties: lower).
    assert shares == [["v0"], ["v1", "v3", "v4"], ["v2", "v5", "v6"]]
    assert sorted(sum(shares, [])) == sorted(items)
    assert [sum(sizes[items.index(v)] for v in share) for share in shares] == [700, 500, 500]
    # More ranks than inputs: the extra ranks get nothing; one rank gets everything in order.
    assert [shard(["a", "b"], [1, 1], Ranks(r, 4, r)) for r in range(4)] == [["a"], ["b"], [], []]
    assert shard(items, sizes, Ranks()) == items
    with pytest.raises(ValueError, match="7 items but 6 sizes"):
        shard(items, sizes[:-1], Ranks())


def test_rank_device_one_gpu_per_local_rank(monkeypatch):
    one = Ranks()
    assert rank_device("auto", one) == "auto" and rank_device("cuda", one) == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rank_device("auto", Ranks(3, 4, 1)) == "cpu"
    assert rank_device("cpu", Ranks(3, 4, 1)) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rank_device("auto", Ranks(3, 4, 1)) == "cuda:1"
    assert rank_device("cuda", Ranks(2, 4, 0)) == "cuda:0"
    assert rank_device("cuda:1", Ranks(2, 4, 0)) == "cuda:1"  # an explicit index is kept
    with pytest.raises(ValueError, match="LOCAL_RANK 2 but this machine has 2 CUDA"):
        rank_device("auto", Ranks(2, 4, 2))


def test_gather_alone_is_the_report_itself():
    assert gather({"a": 1}, Ranks()) == [{"a": 1}]
