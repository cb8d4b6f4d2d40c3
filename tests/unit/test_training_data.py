"""Labels the LDCT training replays from the nodule draw instead of storing (training/ldct_data.py)."""

import numpy as np

from oncostream.synth.ldct import MARGINS, draw_nodule_specs
from training.ldct_data import DENSE_SEEDS, TRAIN_SEEDS, enriched_specs, training_margins


def test_margins_follow_the_enriched_draw_and_refuse_a_mismatched_item():
    seed = next(s for s in range(100) if len(enriched_specs(s)) >= 3)
    specs = enriched_specs(seed)
    diameters = np.array([s["diameter_mm"] for s in specs], np.float32)
    margins = training_margins(seed, diameters)
    assert [MARGINS[m] for m in margins] == [s["margin"] for s in specs]
    # an item cached from another draw (different diameters or count) gets no margin labels
    assert (training_margins(seed, diameters + 1.0) == -1).all()
    assert (training_margins(seed, diameters[:-1]) == -1).all()


def test_dense_seeds_carry_up_to_eight_nodules_and_the_others_keep_their_two_draws():
    dense = [len(enriched_specs(s)) for s in DENSE_SEEDS]
    others = [len(enriched_specs(s)) for s in list(range(DENSE_SEEDS.start)) + list(TRAIN_SEEDS["small"])]
    assert max(dense) == 8 and np.mean(dense) > 1.5 * np.mean(others)
    assert max(others) == 5
    # the two-draw seeds keep the draw their cached items were built from
    seed = DENSE_SEEDS.start - 1
    rng = np.random.default_rng([seed, 0x7EA1])
    assert enriched_specs(seed) == (draw_nodule_specs(rng) + draw_nodule_specs(rng))[:5]
