"""The application layer: the study lifecycle (written once) and the commands that drive it.

It sits above ``ingest`` and ``postprocess`` and composes them; they import only the core
(``oncostream`` contracts, settings, errors, study), never this package nor each other.
"""
