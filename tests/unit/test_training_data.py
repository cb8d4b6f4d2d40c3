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


def _draws(draw_fn, seeds, *args):
    return [(s, draw_fn(np.random.default_rng([s, *args[:1]]), *args[1:])) for s in seeds]


def test_vendor_randomised_mammography_examples_keep_the_canonical_input_unless_the_pitch_changes():
    """Training sees vendor re-expressions; every one but a new pitch is undone exactly by the
    canonical frame, and the targets move with the image (training/mammo_data.py)."""
    from oncostream.synth.vendors import draw_mammo_vendor
    from training.mammo_data import exam_examples

    draws = dict(_draws(draw_mammo_vendor, range(40), 0xD0A1))
    exact = next(s for s, d in draws.items() if d.pitch_factor is None and d.mirror_columns and d.monochrome1
                 and d.margins_mm is not None and exam_examples(s, "small")["lesion"].any())
    plain, randomised = exam_examples(exact, "small"), exam_examples(exact, "small", randomise=True)
    # up to rounding: 16-bit rescaling and float16 storage move a value by at most a few 1e-4
    assert np.abs(plain["images"].astype(np.float32) - randomised["images"]).max() < 1e-3
    for name in set(plain) - {"images"}:
        assert np.array_equal(plain[name], randomised[name]), name
    pitched = next(s for s, d in draws.items() if d.pitch_factor is not None and d.pitch_factor < 0.9
                   and exam_examples(s, "small")["lesion"].sum() >= 10)
    plain, randomised = exam_examples(pitched, "small"), exam_examples(pitched, "small", randomise=True)
    difference = np.abs(plain["images"].astype(np.float32) - randomised["images"])
    assert 0 < difference.mean() < 0.01
    assert abs(int(randomised["lesion"].sum()) - int(plain["lesion"].sum())) <= 0.25 * plain["lesion"].sum()


def test_vendor_randomised_ct_reconstruction_keeps_nodules_where_they_are():
    """Thicker slices: the averaged volume, its spacing and origin place every nodule's voxels at the
    same patient position; a smooth kernel lowers the noise (training/ldct_data.py)."""
    from oncostream.synth.ldct import make_ldct_phantom
    from oncostream.synth.vendors import CtVendorDraw
    from training.ldct_data import _Reconstruction, nodule_index

    phantom = make_ldct_phantom(3, size="small")
    thick = _Reconstruction.of(phantom, CtVendorDraw(slice_factor=2, kernel_mm=-0.8))
    assert thick.spacing_mm[0] == 2 * phantom.spacing_mm[0]
    for label, nodule in enumerate(phantom.truth.nodules, start=1):
        z, y, x = np.round(nodule_index(thick, nodule.center_mm)).astype(int)
        assert thick.nodule_mask(label)[z, y, x] > 0.4
    noise = phantom.hu_low - phantom.hu_clean
    assert np.std(thick.hu_low - thick.hu_clean) < 0.8 * np.std(noise)
