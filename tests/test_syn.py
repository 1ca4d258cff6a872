"""End-to-end SyN: identical for every thread count, same answer as DIPY."""

import weakref

import dipy.align.imwarp as dipy_imwarp
import numpy as np
import pytest
from conftest import load_pair
from dipy.align.metrics import CCMetric as DipyCCMetric

import fastsyn

LEVELS = {3: [6, 4, 2], 2: [20, 10, 5]}


def ncc(a, b, mask):
    a = a[mask] - a[mask].mean()
    b = b[mask] - b[mask].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def mean_dice(fixed, warped):
    scores = []
    for label in np.unique(fixed):
        if label == 0:
            continue
        f, w = fixed == label, warped == label
        scores.append(2 * np.logical_and(f, w).sum() / (f.sum() + w.sum()))
    return float(np.mean(scores))


def register(pair, registration_class, metric, **kwargs):
    dim = pair["static"].ndim
    sdr = registration_class(metric, level_iters=LEVELS[dim], **kwargs)
    mapping = sdr.optimize(pair["static"], pair["moving"],
                           static_grid2world=pair["static_affine"],
                           moving_grid2world=pair["moving_affine"])
    return sdr, mapping


def quality(pair, mapping):
    mask = pair["static_mask"].astype(bool)
    warped = mapping.transform(pair["moving"])
    labels = mapping.transform(pair["moving_labels"], interpolation="nearest")
    return ncc(pair["static"], warped, mask), mean_dice(pair["static_labels"], labels)


@pytest.mark.parametrize("name", ["pair3d", "pair2d"])
def test_threads_give_identical_fields(name):
    pair = load_pair(name)
    dim = pair["static"].ndim
    maps = [register(pair, fastsyn.SymmetricDiffeomorphicRegistration,
                     fastsyn.CCMetric(dim), num_threads=t)[1] for t in (1, 2)]
    assert np.array_equal(maps[0].forward, maps[1].forward)
    assert np.array_equal(maps[0].backward, maps[1].backward)


def test_scratch_is_released_before_the_final_composition(monkeypatch):
    # The final map's composition allocates two new fields: the iterations'
    # scratch (the step buffer, which is also the inversions' workspace) must
    # be gone by then, or it adds a field to the run's peak memory.
    pair = load_pair("pair3d")
    sdr = fastsyn.SymmetricDiffeomorphicRegistration(fastsyn.MIMetric(3), level_iters=LEVELS[3],
                                                     num_threads=2)
    released = []
    compose = fastsyn.imwarp.DiffeomorphicMap.warp_endomorphism

    def spy(self, phi):
        released.append((getattr(sdr, "_step_buffer", None) is None,
                         getattr(sdr, "_inversion_workspace", None) is None))
        return compose(self, phi)

    monkeypatch.setattr(fastsyn.imwarp.DiffeomorphicMap, "warp_endomorphism", spy)
    sdr.optimize(pair["static"], pair["moving"], static_grid2world=pair["static_affine"],
                 moving_grid2world=pair["moving_affine"])
    assert released == [(True, True)]


def test_metric_holds_no_field_past_the_run():
    # MI's last iteration holds inverses of the two reference maps, which
    # share their fields. Once the run ends DIPY's optimizer replaces every
    # field with a copy: the metric must have let go of the originals by
    # then, or the four stay alive beside the copies (the peak at 1 mm).
    pair = load_pair("pair3d")
    originals = []

    def keep_weak_references(sdr, stage):
        if stage == fastsyn.imwarp.RegistrationStages.OPT_END:
            originals.extend(weakref.ref(getattr(getattr(sdr, name), field))
                             for name in ("static_to_ref", "moving_to_ref")
                             for field in ("forward", "backward"))

    sdr = fastsyn.SymmetricDiffeomorphicRegistration(
        fastsyn.MIMetric(3), level_iters=LEVELS[3], num_threads=2,
        callback=keep_weak_references)
    sdr.optimize(pair["static"], pair["moving"], static_grid2world=pair["static_affine"],
                 moving_grid2world=pair["moving_affine"])
    assert len(originals) == 4
    assert [ref() is None for ref in originals] == [True] * 4


def test_inversions_work_in_the_step_buffer():
    # One scratch field per run, not two: the inversions' workspace is the
    # step buffer, free once both steps are composed.
    pair = load_pair("pair3d")
    shared = []

    def check(sdr, stage):
        ws = getattr(sdr, "_inversion_workspace", None)
        if int(stage) == 7 and ws is not None:             # ITER_END
            shared.append(ws.q is sdr._step_buffer)

    for kwargs in ({}, dict(inversion_sweeps=0, fused_inversion=False)):
        shared.clear()
        sdr = fastsyn.SymmetricDiffeomorphicRegistration(
            fastsyn.MIMetric(3), level_iters=LEVELS[3], num_threads=2, callback=check, **kwargs)
        sdr.optimize(pair["static"], pair["moving"], static_grid2world=pair["static_affine"],
                     moving_grid2world=pair["moving_affine"])
        assert shared and all(shared)
    with pytest.raises(ValueError, match="q must be"):
        fastsyn.fields.InversionWorkspace((4, 5, 6, 3), np.float32,
                                          q=np.empty((4, 5, 6, 3), np.float64))


@pytest.mark.parametrize("name", ["pair3d", "pair2d"])
def test_matches_stock_dipy(name):
    pair = load_pair(name)
    dim = pair["static"].ndim
    sdr, ours = register(pair, fastsyn.SymmetricDiffeomorphicRegistration,
                         fastsyn.CCMetric(dim), num_threads=2)
    stock_sdr, stock = register(pair, dipy_imwarp.SymmetricDiffeomorphicRegistration,
                                DipyCCMetric(dim))
    assert isinstance(ours, dipy_imwarp.DiffeomorphicMap)
    # Same stopping decisions: as many iterations as DIPY, level by level.
    assert sdr.iterations_run == len(sdr.full_energy_profile)
    assert len(sdr.full_energy_profile) == len(stock_sdr.full_energy_profile)
    ncc_ours, dice_ours = quality(pair, ours)
    ncc_stock, dice_stock = quality(pair, stock)
    ncc_before = ncc(pair["static"], pair["moving"], pair["static_mask"].astype(bool))
    assert ncc_ours > ncc_before  # it registered something
    # The contract: final NCC and label Dice within 0.002 of DIPY.
    assert abs(ncc_ours - ncc_stock) <= 0.002
    assert abs(dice_ours - dice_stock) <= 0.002
    # Fields differ only by accumulated float32 rounding.
    assert np.abs(ours.forward - stock.forward).max() < 1e-2
    assert set(sdr.stage_times) >= {"warping", "metric", "smoothing", "update",
                                    "inversion", "other", "total"}
    # Every iteration stage was timed, and the timed stages (not the
    # remainder "other") account for most of the run.
    stages = ("warping", "metric", "smoothing", "update", "inversion")
    assert all(sdr.stage_times[s] > 0 for s in stages)
    assert sum(sdr.stage_times[s] for s in stages) > 0.5 * sdr.stage_times["total"]


def test_patch_dipy_routes_and_undoes():
    pair = load_pair("pair3d")
    _, fast = register(pair, fastsyn.SymmetricDiffeomorphicRegistration,
                       fastsyn.CCMetric(3), num_threads=2)
    _, stock = register(pair, dipy_imwarp.SymmetricDiffeomorphicRegistration,
                        DipyCCMetric(3))
    original_iterate = dipy_imwarp.SymmetricDiffeomorphicRegistration._iterate
    with fastsyn.patch_dipy(num_threads=2) as handle:
        assert handle.active and fastsyn.patch.is_patched()
        _, patched = register(pair, dipy_imwarp.SymmetricDiffeomorphicRegistration,
                              DipyCCMetric(3))
    assert np.array_equal(patched.forward, fast.forward)
    assert np.array_equal(patched.backward, fast.backward)
    assert dipy_imwarp.SymmetricDiffeomorphicRegistration._iterate is original_iterate
    assert not hasattr(dipy_imwarp.SymmetricDiffeomorphicRegistration, "num_threads")
    assert not fastsyn.patch.is_patched()
    _, again = register(pair, dipy_imwarp.SymmetricDiffeomorphicRegistration,
                        DipyCCMetric(3))
    assert np.array_equal(again.forward, stock.forward)


def test_patch_as_plain_call_and_transform():
    pair = load_pair("pair2d")
    handle = fastsyn.patch_dipy(num_threads=3)
    try:
        dmap = dipy_imwarp.DiffeomorphicMap(2, pair["static"].shape)
        dmap.allocate()
        dmap.forward[...] = 0.5
        dmap.backward[...] = -0.5
        warped = dmap.transform(pair["moving"])
    finally:
        handle.undo()
    handle.undo()  # undoing twice is harmless
    reference = dmap.transform(pair["moving"])
    np.testing.assert_allclose(warped, reference, rtol=0,
                               atol=16 * np.finfo(np.float32).eps * np.abs(reference).max())


def test_step_percentile_scales_the_step_to_a_robust_norm():
    from fastsyn.imwarp import _robust_step_norm, syn_setting

    rng = np.random.default_rng(5)
    step = rng.normal(0, 1, (9, 8, 7, 3)).astype(np.float32)
    step[4, 4, 4] = 1e3                                   # one outlier sets the maximum
    inv_spacing = np.array([0.5, 1.0, 2.0])
    inner = step[1:-1:2, 1:-1:2, 1:-1:2].astype(np.float64) * inv_spacing
    expected = np.sqrt(np.percentile((inner * inner).sum(-1), 99))
    assert _robust_step_norm(step, inv_spacing, 99) == pytest.approx(expected, rel=1e-12)
    assert _robust_step_norm(step, inv_spacing, 99) < 0.01 * np.abs(step).max()
    assert _robust_step_norm(np.zeros((2, 2, 2, 3), np.float32), inv_spacing, 99) == 0.0
    assert syn_setting(fastsyn.CCMetric, "step_percentile") == 100.0

    pair = load_pair("pair3d")
    fields = {}
    for percentile, threads in ((100, 2), (99, 1), (99, 2)):
        _, m = register(pair, fastsyn.SymmetricDiffeomorphicRegistration, fastsyn.MIMetric(3),
                        num_threads=threads, step_percentile=percentile)
        fields[percentile, threads] = m.forward
    assert np.array_equal(fields[99, 1], fields[99, 2])
    assert not np.array_equal(fields[99, 2], fields[100, 2])
    for bad, exc in ((49, ValueError), (100.5, ValueError), ("99", TypeError)):
        with pytest.raises(exc, match="step_percentile"):
            fastsyn.SymmetricDiffeomorphicRegistration(fastsyn.MIMetric(3), step_percentile=bad)


def test_moving_share_splits_each_step_between_the_sides():
    from fastsyn.imwarp import syn_setting

    assert syn_setting(fastsyn.CCMetric, "moving_share") == 0.5
    pair = load_pair("pair3d")
    sdrs = {}
    for share, threads in ((0.5, 2), (0.65, 1), (0.65, 2), (1.0, 2)):
        sdrs[share, threads] = register(pair, fastsyn.SymmetricDiffeomorphicRegistration,
                                        fastsyn.MIMetric(3), num_threads=threads,
                                        moving_share=share, coarse_moving_share=share)[0]
    maps = {k: s.static_to_moving for k, s in sdrs.items()}
    assert np.array_equal(maps[0.65, 1].forward, maps[0.65, 2].forward)
    assert not np.array_equal(maps[0.65, 2].forward, maps[0.5, 2].forward)
    # the moving image alone moves: the static side's half-way map stays the identity
    assert not np.any(sdrs[1.0, 2].static_to_ref.forward)
    assert np.any(sdrs[1.0, 2].moving_to_ref.forward)
    # 0.65 moves the moving side further than the static side
    def reach(sdr, side):
        return np.abs(getattr(sdr, side).forward).max()
    assert reach(sdrs[0.65, 2], "moving_to_ref") > reach(sdrs[0.65, 2], "static_to_ref")
    for bad, exc in ((-0.1, ValueError), (1.5, ValueError), ("0.5", TypeError), (True, TypeError)):
        with pytest.raises(exc, match="moving_share"):
            fastsyn.SymmetricDiffeomorphicRegistration(fastsyn.MIMetric(3), moving_share=bad)


def test_coarse_moving_share_moves_the_moving_image_alone_on_the_coarse_levels():
    from dipy.align.imwarp import RegistrationStages

    from fastsyn.imwarp import syn_setting

    assert syn_setting(fastsyn.CCMetric, "coarse_moving_share") is None
    pair = load_pair("pair3d")
    reach, forward_steps = [], []

    def watch(sdr, stage):
        if stage == RegistrationStages.ITER_END:
            reach.append((sdr.current_level, np.abs(sdr.static_to_ref.forward).max()))

    def run(threads, skip=True, callback=None, **kwargs):
        metric = fastsyn.MIMetric(3)
        if not skip:
            metric.energy_at_initialization = False  # every side's step computed
        compute_forward = metric.compute_forward

        def counted():
            forward_steps.append(skip)
            return compute_forward()
        metric.compute_forward = counted
        return register(pair, fastsyn.SymmetricDiffeomorphicRegistration, metric,
                        num_threads=threads, callback=callback, **kwargs)

    _, alone = run(2, callback=watch, coarse_moving_share=1.0)
    # the static side stays the identity on the coarse levels, then moves
    assert all(r == 0 for level, r in reach if level > 0)
    assert reach[-1][0] == 0 and reach[-1][1] > 0
    # ... and its step is not computed there: one per finest-level iteration
    finest = sum(1 for level, _ in reach if level == 0)
    assert forward_steps.count(True) == finest < len(reach)
    # skipping it is exactly the zero-length step it replaces, on any thread count
    _, computed = run(2, skip=False, coarse_moving_share=1.0)
    _, serial = run(1, coarse_moving_share=1.0)
    for other in (computed, serial):
        assert np.array_equal(alone.forward, other.forward)
        assert np.array_equal(alone.backward, other.backward)
    # None is MI's preference, the moving image alone on the coarse levels
    assert fastsyn.MIMetric.syn_defaults["coarse_moving_share"] == 1.0
    _, default = run(2)
    assert np.array_equal(default.forward, alone.forward)
    # moving_share's own value is one share on every level: the static side
    # moves on the coarse levels too
    reach.clear()
    share = fastsyn.MIMetric.syn_defaults["moving_share"]
    _, same = run(2, callback=watch, coarse_moving_share=share)
    assert any(r > 0 for level, r in reach if level > 0)
    assert not np.array_equal(same.forward, alone.forward)
    for bad, exc in ((-0.1, ValueError), (1.5, ValueError), ("1", TypeError)):
        with pytest.raises(exc, match="coarse_moving_share"):
            fastsyn.SymmetricDiffeomorphicRegistration(fastsyn.MIMetric(3),
                                                       coarse_moving_share=bad)
