"""Errors raised by ingest; the root classes live in oncostream.errors so every stage shares them."""

from oncostream.errors import RejectedInstance, UnsupportedTransferSyntax

__all__ = ["RejectedInstance", "UnsupportedTransferSyntax"]
