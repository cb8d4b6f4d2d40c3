"""`make models`: retrain every reference model with fixed seeds and export it to model_repository/.

LDCT (training/ldct_train.py: phantom cache, denoiser, detector, segmenter, calibration, export),
then mammography (training/mammo_train.py: density and the randomised classifier), then the served
classifier ensemble of that classifier and the committed 2026-11-29 one (training/mammo_ensemble.py).
Each prints its own wall time; the Makefile prints the total.
"""

from __future__ import annotations

import sys

from training import ldct_train, mammo_ensemble, mammo_train


def main() -> int:
    ldct_rc = ldct_train.main([])
    mammo_rc = mammo_train.main([]) or mammo_ensemble.main([])
    return ldct_rc or mammo_rc


if __name__ == "__main__":
    sys.exit(main())
