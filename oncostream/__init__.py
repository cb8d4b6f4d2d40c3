"""oncostream: streaming AI inference for cancer-screening programs."""

__version__ = "0.1.0"
