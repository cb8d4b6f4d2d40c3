"""Labels the LDCT training replays from the nodule draw instead of storing (training/ldct_data.py)."""

import numpy as np

from oncostream.synth.ldct import MARGINS
from training.ldct_data import enriched_specs, training_margins


def test_margins_follow_the_enriched_draw_and_refuse_a_mismatched_item():
    seed = next(s for s in range(100) if len(enriched_specs(s)) >= 3)
    specs = enriched_specs(seed)
    diameters = np.array([s["diameter_mm"] for s in specs], np.float32)
    margins = training_margins(seed, diameters)
    assert [MARGINS[m] for m in margins] == [s["margin"] for s in specs]
    # an item cached from another draw (different diameters or count) gets no margin labels
    assert (training_margins(seed, diameters + 1.0) == -1).all()
    assert (training_margins(seed, diameters[:-1]) == -1).all()
