"""The KRaft cluster id handed to kafka-storage never starts with '-' (its parser would read an option)."""

import base64
import uuid

from oncostream.services import kafka


def test_a_uuid_encoding_to_a_leading_dash_is_drawn_again(monkeypatch):
    leading_dash = uuid.UUID(bytes=b"\xf8" + bytes(15))  # 0b111110.. -> '-' in URL-safe base64
    plain = uuid.UUID(bytes=bytes(range(16)))
    assert base64.urlsafe_b64encode(leading_dash.bytes).decode().startswith("-")
    draws = iter([leading_dash, leading_dash, plain])
    monkeypatch.setattr(kafka.uuid, "uuid4", lambda: next(draws))

    cluster_id = kafka.new_cluster_id()

    assert cluster_id == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert len(cluster_id) == 22
