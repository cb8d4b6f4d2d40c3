"""The Kafka source against a real broker: a partition paused while its records were in line and then
resumed is read again (kafka-python 3.0.x parks such records and could leave them parked for good:
docs/pitfalls.md; ingest/kafka_source.py _release_parked_fetches), a partition paused before a rebalance
that gives it back to the same member flows again when resumed, and records larger than the small
fetch-ahead size arrive whole."""

from __future__ import annotations

import threading
import time

import pytest

from ingest.kafka_source import KafkaSource

pytestmark = pytest.mark.integration

PER_PARTITION = 30


def _two_full_partitions(kafka_topics_factory):
    """A 2-partition topic with PER_PARTITION small records on each partition."""
    from kafka import KafkaProducer

    topics = kafka_topics_factory(2)
    producer = KafkaProducer(bootstrap_servers=topics.bootstrap)
    for partition in (0, 1):
        for k in range(PER_PARTITION):
            producer.send(topics.dicom, value=b"x" * 100, partition=partition, key=f"{partition}-{k}".encode())
    producer.flush()
    producer.close()
    return topics


def test_a_partition_paused_mid_read_and_resumed_delivers_the_rest(kafka_topics_factory):
    topics = _two_full_partitions(kafka_topics_factory)

    source = KafkaSource(topics.bootstrap, topics.dicom, topics.group, max_poll_records=5)
    seen = {0: 0, 1: 0}
    paused = None
    deadline = time.monotonic() + 60
    try:
        # read until one partition is part-read in line while the other is not finished: pause it there
        while paused is None:
            assert time.monotonic() < deadline, seen
            messages = source.poll(timeout_s=0.5)
            for m in messages:
                seen[m.partition] += 1
            last = {m.partition for m in messages}
            if len(last) == 1:
                (line,) = last
                other = 1 - line
                if seen[line] < PER_PARTITION and seen[other] < PER_PARTITION:
                    paused = line
        source.pause_only({(topics.dicom, paused)})
        while seen[1 - paused] < PER_PARTITION:  # the other drains to its end while this one is paused
            assert time.monotonic() < deadline, seen
            for m in source.poll(timeout_s=0.5):
                assert m.partition != paused, "a paused partition delivered records"
                seen[m.partition] += 1
        for _ in range(3):  # the drained record set settles in line
            assert not source.poll(timeout_s=0.2)
        source.resume()
        resumed = time.monotonic() + 20
        while seen[paused] < PER_PARTITION and time.monotonic() < resumed:
            for m in source.poll(timeout_s=0.5):
                seen[m.partition] += 1
        assert seen == {0: PER_PARTITION, 1: PER_PARTITION}, f"paused partition {paused}: {seen}"
    finally:
        source.close()


def test_a_partition_paused_before_a_rebalance_and_assigned_back_flows_when_resumed(kafka_topics_factory):
    """kafka-python 3.x keeps the paused flag of a partition assigned back to the same member; the source
    must not believe it unpaused (a worker's backpressure then never resumed it: docs/pitfalls.md)."""
    topics = _two_full_partitions(kafka_topics_factory)

    first = KafkaSource(topics.bootstrap, topics.dicom, topics.group, max_poll_records=5)
    offsets: dict[int, set[int]] = {0: set(), 1: set()}
    stop = threading.Event()
    second_thread = None
    deadline = time.monotonic() + 60
    try:
        while len(first.assignment()) < 2:  # both partitions are this member's
            assert time.monotonic() < deadline, "no assignment"
            for m in first.poll(timeout_s=0.5):
                offsets[m.partition].add(m.offset)
        first.pause()  # backpressure, as a worker at its in-flight bound
        second = KafkaSource(topics.bootstrap, topics.dicom, topics.group, max_poll_records=5)

        def poll_second():
            try:
                while not stop.is_set():
                    second.poll(timeout_s=0.2)
            finally:
                second.close()

        second_thread = threading.Thread(target=poll_second, daemon=True)
        second_thread.start()
        while len(first.assignment()) != 1:  # the rebalance gives this member one of its partitions back
            assert time.monotonic() < deadline, "no rebalance"
            for m in first.poll(timeout_s=0.5):  # none before the rebalance: both are paused
                offsets[m.partition].add(m.offset)
        (kept,) = first.assignment()
        # the source's view of what is paused is kafka-python's
        assert first.paused == {(tp.topic, tp.partition) for tp in first._consumer.paused()}
        first.resume()
        while len(offsets[kept[1]]) < PER_PARTITION and time.monotonic() < deadline:
            for m in first.poll(timeout_s=0.5):
                assert (m.topic, m.partition) == kept
                offsets[m.partition].add(m.offset)
        assert offsets[kept[1]] == set(range(PER_PARTITION)), f"kept partition {kept}: {sorted(offsets[kept[1]])}"
    finally:
        stop.set()
        if second_thread is not None:
            second_thread.join(timeout=30)
        first.close()


def test_records_larger_than_the_fetch_size_arrive_whole(kafka_topics_factory):
    """The consumer fetches a few MiB ahead per partition; an instance up to the topics' 64 MiB still
    arrives whole (the broker returns a first record batch above the fetch size)."""
    import os

    from kafka import KafkaProducer

    from ingest.kafka_source import _FETCH_PARTITION_BYTES, _FETCH_REQUEST_BYTES

    topics = kafka_topics_factory(1)
    sizes = [100_000, 5 * _FETCH_REQUEST_BYTES // 2, 200_000, 2 * _FETCH_PARTITION_BYTES + 1, 50_000]
    producer = KafkaProducer(bootstrap_servers=topics.bootstrap, max_request_size=64 * 1024 * 1024)
    for k, size in enumerate(sizes):
        producer.send(topics.dicom, value=os.urandom(size), partition=0, key=str(k).encode())
    producer.flush()
    producer.close()
    source = KafkaSource(topics.bootstrap, topics.dicom, topics.group)
    received: list[int] = []
    deadline = time.monotonic() + 60
    try:
        while len(received) < len(sizes) and time.monotonic() < deadline:
            received += [len(m.data) for m in source.poll(timeout_s=0.5)]
    finally:
        source.close()
    assert received == sizes
