"""Triton python-backend models of the CPU realisation (`oncostream models build --target cpu`).

They only run inside Triton's python-backend stub (they import `triton_python_backend_utils`) and
call the same step functions as the embedded backend (ingest/steps/, ingest/preprocess/), so both
realisations compute the same numbers.
"""
