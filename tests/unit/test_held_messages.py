"""The worker's held records (HeldMessages): beyond the memory budget a record waits in the claim-check store,
its dead-letter copy carries a claim check to the same bytes, and the object goes with the commit that covers
its published study."""

from __future__ import annotations

from ingest.kafka_source import ClaimCheckResolver, KafkaMessage, instance_bytes
from oncostream.app.worker import HeldMessages
from oncostream.claim_store import DirectoryClaimStore
from oncostream.contracts import CONTENT_TYPE_CLAIM_CHECK, CONTENT_TYPE_DICOM


def record(offset: int, size: int) -> KafkaMessage:
    return KafkaMessage(data=bytes([offset % 251]) * size, origin=f"t/0/{offset}", topic="t", partition=0,
                        offset=offset, headers={"content-type": CONTENT_TYPE_DICOM, "trace-id": "x"},
                        key=b"study", timestamp_ms=1000 + offset)


def test_records_beyond_the_budget_wait_in_the_claim_store_and_resolve_to_the_same_bytes(tmp_path):
    resolver = ClaimCheckResolver(1 << 20, DirectoryClaimStore(tmp_path / "claims"))
    held = HeldMessages(budget_bytes=2500, resolver=resolver)
    originals = {o: record(o, 1000) for o in range(4)}
    for offset, message in originals.items():
        held.hold(("t", 0, offset), message)
    assert held.spilled == 2 and held.inline_bytes == 2000
    for offset, original in originals.items():
        kept = held[("t", 0, offset)]
        assert (kept.topic, kept.partition, kept.offset, kept.key, kept.timestamp_ms) == ("t", 0, offset, b"study",
                                                                                          1000 + offset)
        assert kept.headers["trace-id"] == "x"
        assert instance_bytes(kept, resolver) == original.data, "a spilled record still resolves to its bytes"
    assert held[("t", 0, 3)].headers["content-type"] == CONTENT_TYPE_CLAIM_CHECK
    assert len(list((tmp_path / "claims").iterdir())) == 2

    # released records free the budget; a committed, published study's spilled objects are deleted
    for offset in range(4):
        held.pop(("t", 0, offset))
    assert held.inline_bytes == 0 and len(held) == 0
    resolver.committed({("t", 0): 4}, published=[("t", 0, o) for o in range(4)])
    assert not list((tmp_path / "claims").iterdir())


def test_keep_forgets_what_the_predicate_refuses_and_frees_its_budget(tmp_path):
    held = HeldMessages(budget_bytes=10_000, resolver=ClaimCheckResolver(1 << 20, DirectoryClaimStore(tmp_path)))
    for offset in range(3):
        held.hold(("t", 0, offset), record(offset, 100))
    held.keep(lambda source: source[2] >= 2)
    assert len(held) == 1 and held.inline_bytes == 100 and held.spilled == 0
