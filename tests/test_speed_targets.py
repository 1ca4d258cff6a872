"""The speed command's grids and target ratios (no timing is asserted)."""

import numpy as np
import pytest

from fastsyn.bench.speed import grid_label, grid_pair, grid_shape, make_moved_pair, parse_grid, target_checks


@pytest.mark.parametrize("text, grid", [("128", 128), ("1mm", "1mm"), (" 2.5mm", "2.5mm")])
def test_parse_grid(text, grid):
    assert parse_grid(text) == grid


@pytest.mark.parametrize("text", ["0", "7", "-1mm", "0mm", "mm", "big", "1.5"])
def test_parse_grid_rejects(text):
    with pytest.raises(ValueError, match="speed grid"):
        parse_grid(text)


def test_resolution_grid_is_the_whole_template():
    """1 mm is nilearn's MNI152 grid, uncropped; the pair matches the label."""
    assert grid_shape("1mm") == (197, 233, 189)
    assert grid_label(32) == "32^3" and grid_label("8mm") == "8mm 25x29x24"
    static, moving, affine = grid_pair("8mm")
    assert static.shape == moving.shape == grid_shape("8mm")
    assert affine[0, 0] == 8.0
    static, _, affine = grid_pair(32)
    assert max(static.shape) == 32 and static.shape != (32, 32, 32)


def test_prealignment_rows_move_the_pair_they_are_given():
    """The speed run hands its SyN pair to the prealignment rows instead of
    building it again: the moved pair must be the one built from scratch."""
    built = grid_pair(32)
    for ours, fresh in zip(make_moved_pair(32, pair=built), make_moved_pair(32)):
        np.testing.assert_array_equal(ours, fresh)
    # the pair given is moved, not left as it came
    assert not np.array_equal(make_moved_pair(32, pair=built)[1], built[1])


def _row(case, impl, threads, seconds, peak=None):
    return {"case": case, "impl": impl, "threads": threads, "median_s": seconds,
            "min_s": seconds, "max_s": seconds, "peak_mem_mb": peak}


def test_target_checks():
    cc, mi = "SyN CC 128^3 levels 20/20/10", "SyN MI 128^3 levels 20/20/10"
    rows = [_row("compose 128^3 float32", "fastsyn", 2, 0.1),
            _row(cc, "dipy", 1, 20.0, 1000.0), _row(cc, "fastsyn", 1, 6.0, 400.0),
            _row(cc, "fastsyn", 2, 3.0, 1200.0), _row(cc, "greedy", 2, 4.0, 300.0),
            _row(mi, "fastsyn", 2, 5.0, 500.0), _row(mi, "greedy", 2, 4.0),
            _row(mi, "ants", 2, 20.0)]
    checks = {(c["case"], c["what"], c["baseline"]): c for c in target_checks({"rows": rows})}
    assert set(checks) == {(cc, "time", "greedy"), (cc, "peak memory", "dipy"),
                           (mi, "time", "greedy"), (mi, "time", "ants")}
    # the largest thread count is the one compared
    assert checks[(cc, "time", "greedy")]["ratio"] == pytest.approx(0.75)
    assert checks[(cc, "time", "greedy")]["met"] and checks[(cc, "time", "greedy")]["threads"] == 2
    assert checks[(cc, "peak memory", "dipy")]["ratio"] == pytest.approx(1.2)
    assert not checks[(cc, "peak memory", "dipy")]["met"]
    assert not checks[(mi, "time", "greedy")]["met"]
    assert checks[(mi, "time", "ants")]["ratio"] == pytest.approx(0.25)
    assert target_checks({"rows": rows[:1]}) == []


@pytest.mark.parametrize("kernel, cls", [("cc step", "CCMetric"), ("mi step", "MIMetric")])
def test_roofline_times_the_metric_step_alone(monkeypatch, kernel, cls):
    """The metric is set up once per thread count, not inside every timed call."""
    import fastsyn
    from fastsyn.bench.roofline import _kernel_calls

    starts = []
    original = getattr(fastsyn, cls).initialize_iteration
    monkeypatch.setattr(getattr(fastsyn, cls), "initialize_iteration",
                        lambda self: (starts.append(1), original(self))[1])
    calls, _ = _kernel_calls(16)
    for _ in range(3):
        calls[kernel](1)
    calls[kernel](2)
    assert len(starts) == 2
