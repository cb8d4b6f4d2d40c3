"""Preprocessing as DALI pipeline definitions (CPU with ``device_id=None``, unchanged on a GPU), each
with a numpy realisation that training uses and the unit tests hold equal: ``ldct``, ``mammo``.

Nothing here imports DALI at import time, so the training environment (no DALI) can import it."""
