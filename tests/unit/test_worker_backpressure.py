"""Which partitions keep flowing at the in-flight bound (oncostream.app.worker.completing_partitions)."""

from oncostream.app.worker import completing_partitions


def test_only_partitions_whose_oldest_unfinished_study_is_assembling_keep_flowing():
    assembling = {("t", 0): 10, ("t", 1): 40, ("t", 2): 7}
    assembled = {("t", 1): 12, ("t", 2): 30, ("t", 3): 5}
    # t0: only an assembling study; t1: an assembled study (offset 12) comes before the one assembling at
    # 40, so reading on there only starts new studies; t2: the assembling study is the oldest; t3: nothing
    # assembling
    assert completing_partitions(assembling, assembled) == {("t", 0), ("t", 2)}


def test_nothing_assembling_means_nothing_flows_at_the_bound():
    assert completing_partitions({}, {("t", 0): 3}) == set()
