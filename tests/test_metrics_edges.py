"""Boundary metrics by the SEISM protocol: thinning, seg2bmap, non-maximum suppression, one-to-one matching, the
ODS / OIS / AP formulas, padding, and batch / merge / worker equivalence."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, sparse
from scipy.sparse.csgraph import maximum_flow

from pamm.data.pascal import thin as thin_full_image
from pamm.metrics.edges import (
    SEISM_THRESHOLDS,
    EdgeMeter,
    EdgeProtocol,
    _IncrementalMatching,
    _thinned_predictions,
    edge_counts,
    edge_nms,
    seg2bmap,
    thin,
)

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def boundary_scene(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Region boundaries of a random Voronoi partition (bool) and a blurred, noisy edge probability of them."""
    rng = np.random.default_rng(seed)
    centres = rng.random((8, 2)) * [height, width]
    rows, cols = np.mgrid[:height, :width]
    regions = ((rows[..., None] - centres[:, 0]) ** 2 + (cols[..., None] - centres[:, 1]) ** 2).argmin(-1)
    boundary = thin(seg2bmap(regions))
    boundary[:, -1] = boundary[-1, :] = False
    strength = ndimage.gaussian_filter(boundary.astype(np.float32), 1.2) * 5 * rng.uniform(0.3, 1, 8)[regions]
    noise = ndimage.gaussian_filter(rng.standard_normal((height, width)), 1.5).astype(np.float32)
    probability = 1 / (1 + np.exp(-(4 * strength + noise - 3)))
    return boundary, probability.astype(np.float32)


def test_thin_turns_a_three_pixel_line_into_a_connected_one_pixel_line():
    mask = np.zeros((20, 40), dtype=bool)
    mask[8:11, 5:35] = True
    thinned = thin(mask)
    assert (thinned <= mask).all()
    assert (thinned[:, 7:33].sum(0) == 1).all()  # one pixel per column away from the ends
    assert ndimage.label(thinned, EIGHT_CONNECTED)[1] == 1


def test_thin_keeps_rings_and_agrees_with_a_full_image_implementation():
    ring = np.zeros((30, 30), dtype=bool)
    ring[5:25, 5:25] = True
    ring[11:19, 11:19] = False
    thinned = thin(ring)
    assert ndimage.label(thinned, EIGHT_CONNECTED)[1] == 1
    assert ndimage.label(~thinned)[1] == 2  # outside and the hole
    rng = np.random.default_rng(0)
    for _ in range(10):
        mask = ndimage.binary_dilation(rng.random((40, 50)) > 0.97, iterations=int(rng.integers(1, 4)))
        mask |= rng.random(mask.shape) > 0.9
        np.testing.assert_array_equal(thin(mask), thin_full_image(mask))
    stack = rng.random((3, 20, 25)) > 0.5
    np.testing.assert_array_equal(thin(stack), [thin_full_image(m) for m in stack])


def test_all_thresholds_thinned_at_once_equal_each_map_thinned_alone():
    _, probability = boundary_scene(40, 56, seed=1)
    values = edge_nms(np.floor(probability * 255) / 255)
    thresholds = np.array([0.001, 0.05, 0.2, 0.35, 0.5, 0.8])
    map_index, pixel = _thinned_predictions(values, thresholds)
    for k, threshold in enumerate(thresholds):
        expected = np.flatnonzero(thin_full_image(values.astype(np.float64) > threshold))
        np.testing.assert_array_equal(np.sort(pixel[map_index == k]), expected)


def test_seg2bmap_by_hand():
    labels = np.array([[1, 1, 2], [1, 1, 2], [3, 3, 3]])
    np.testing.assert_array_equal(seg2bmap(labels), [[0, 1, 0], [1, 1, 1], [0, 0, 0]])


def test_nms_keeps_the_ridge_and_fades_the_border():
    columns = np.arange(30)
    ridge = np.tile(np.exp(-((columns - 15) ** 2) / 8.0), (30, 1)).astype(np.float32)
    suppressed = edge_nms(ridge)
    assert (suppressed[:, :15] == 0).all() and (suppressed[:, 16:] == 0).all()
    assert suppressed[0, 15] == 0
    assert suppressed[2, 15] == pytest.approx(0.4 * ridge[2, 15])
    np.testing.assert_array_equal(suppressed[5:25, 15], ridge[5:25, 15])


def isolated_points_counts(predicted: list, ground_truth: list) -> tuple[int, int, int]:
    """Counts at one threshold of isolated predicted / ground-truth pixels on a 100 × 100 image (NYUD tolerance:
    1.556 px), without NMS or quantisation."""
    probability = np.zeros((100, 100), dtype=np.float32)
    gt = np.zeros((100, 100), dtype=bool)
    for row, col in predicted:
        probability[row, col] = 1.0
    for row, col in ground_truth:
        gt[row, col] = True
    protocol = EdgeProtocol(0.011, thresholds=(0.5,), nms=False, quantize=False)
    matched, predicted_count, gt_count = edge_counts(probability, gt, protocol)
    return int(matched[0]), int(predicted_count[0]), gt_count


def test_matching_is_one_to_one_and_maximum():
    # Nearest-first greedy pairs (50,11)-(50,11) and leaves (50,12) alone; the maximum matching pairs both.
    assert isolated_points_counts([(50, 11), (50, 12)], [(50, 10), (50, 11)]) == (2, 2, 2)
    # Two predictions around one ground-truth pixel: only one is matched.
    assert isolated_points_counts([(20, 19), (20, 21)], [(20, 20)]) == (1, 2, 1)
    # Within the radius (diagonal, 1.41 px) and beyond it (2 px).
    assert isolated_points_counts([(80, 81)], [(81, 80)]) == (1, 1, 1)
    assert isolated_points_counts([(80, 82)], [(80, 80)]) == (0, 1, 1)


def maximum_matching_size(adjacency: sparse.csr_matrix, active: np.ndarray) -> int:
    """Reference: maximum flow source → active lefts → rights → sink."""
    rows, cols = adjacency[active].nonzero()
    n_right = adjacency.shape[1]
    n_left = int(active.sum())
    sink = n_left + n_right + 1
    tails = np.concatenate([np.zeros(n_left, int), rows + 1, n_left + 1 + np.arange(n_right)])
    heads = np.concatenate([np.arange(n_left) + 1, n_left + 1 + cols, np.full(n_right, sink)])
    network = sparse.csr_matrix((np.ones(tails.size, np.int32), (tails, heads)), shape=(sink + 1, sink + 1))
    return maximum_flow(network, 0, sink, method="dinic").flow_value


def test_incremental_matching_stays_maximum_when_lefts_come_and_go():
    rng = np.random.default_rng(5)
    for trial in range(5):
        adjacency = sparse.random(60, 45, density=0.06, random_state=trial, format="csr", dtype=np.int8)
        adjacency.data[:] = 1
        matching = _IncrementalMatching(adjacency)
        active = np.zeros(60, dtype=bool)
        for _ in range(12):
            active = active.copy()
            active[rng.integers(0, 60, 8)] = True
            active[rng.integers(0, 60, 3)] = False  # not nested: some lefts leave
            matching.set_active(active)
            assert matching.maximise() == maximum_matching_size(adjacency, active)


def score(probability: np.ndarray, boundary: np.ndarray, **options) -> dict:
    meter = EdgeMeter(0.011, **options)
    meter.update(probability[None], boundary[None, None].astype(np.float32))
    return meter.compute()


def test_perfect_empty_and_shifted_predictions():
    boundary = np.zeros((100, 100), dtype=bool)
    boundary[30, 10:90] = True
    boundary[10:90, 60] = True
    boundary[np.arange(20, 80), np.arange(20, 80)] = True
    boundary = thin(boundary)
    perfect = score(boundary.astype(np.float32), boundary)
    assert perfect["odsF"] == pytest.approx(100.0) and perfect["oisF"] == pytest.approx(100.0)
    assert score(np.zeros((100, 100), np.float32), boundary)["odsF"] == 0.0
    shifted = score(np.roll(boundary, 1, axis=1).astype(np.float32), boundary)
    assert shifted["odsF"] >= 95.0
    nyud_style = score(boundary.astype(np.float32), boundary, gt_boundary="seg2bmap")
    assert nyud_style["odsF"] >= 95.0


def test_compute_follows_seism_formulas():
    meter = EdgeMeter(0.011, thresholds=(0.25, 0.5, 0.75))
    meter.merge_state(
        {
            "matched": np.array([8, 6, 2]),
            "predicted": np.array([10, 6, 2]),
            "gt_pixels": np.array([10]),
            "ois_counts": np.array([7, 8, 10]),
            "images": np.array([2]),
        }
    )
    result = meter.compute()
    assert result["F"] == pytest.approx([80.0, 75.0, 100 / 3])
    assert result["odsF"] == pytest.approx(80.0) and result["ods_threshold"] == 0.25
    assert result["oisF"] == pytest.approx(100 * 2 * 0.875 * 0.7 / 1.575)
    # precision 1 on recall [0.2, 0.6], then linear down to 0.8 at recall 0.8: (41 + 17.9) / 100
    assert result["AP"] == pytest.approx(58.9)


def test_padding_is_ignored():
    boundary, probability = boundary_scene(48, 64, seed=2)
    target = np.full((1, 1, 60, 90), 255.0, dtype=np.float32)
    target[0, 0, 5:53, 10:74] = boundary
    padded_probability = np.random.default_rng(3).random((1, 60, 90)).astype(np.float32)
    padded_probability[0, 5:53, 10:74] = probability
    padded = EdgeMeter(0.0075)
    padded.update(padded_probability, target)
    plain = EdgeMeter(0.0075)
    plain.update(probability[None], boundary[None, None].astype(np.float32))
    np.testing.assert_equal(padded.state(), plain.state())


def test_batches_merges_and_workers_give_the_same_counts():
    scenes = [boundary_scene(48, 64, seed) for seed in range(4)]
    probability = np.stack([p for _, p in scenes])
    target = np.stack([b for b, _ in scenes])[:, None].astype(np.float32)
    whole = EdgeMeter(0.011)
    whole.update(probability, target)
    first, second = EdgeMeter(0.011), EdgeMeter(0.011)
    first.update(probability[:1], target[:1])
    second.update(probability[1:3], target[1:3])
    second.update(probability[3:], target[3:])
    first.merge_state(second.state())
    np.testing.assert_equal(first.state(), whole.state())
    np.testing.assert_equal(first.compute(), whole.compute())
    pooled = EdgeMeter(0.011, workers=2)
    try:
        pooled.update(probability, target)
        np.testing.assert_equal(pooled.state(), whole.state())
    finally:
        pooled.close()
    assert 0 < whole.compute()["odsF"] <= 100 and len(whole.compute()["F"]) == len(SEISM_THRESHOLDS)


def test_distinct_equals_numpy_unique():
    from pamm.metrics.edges import _distinct

    rng = np.random.default_rng(0)
    for size in (0, 1, 2, 17, 10_000):
        values = rng.integers(0, max(size // 3, 1), size)
        out = _distinct(values)
        assert out.dtype == values.dtype and np.array_equal(out, np.unique(values))


@pytest.mark.parametrize(
    "cores,images,processes,expected",
    [
        (16, 6000, 1, 8),  # the lent GPU machine, a whole val split: capped at 8
        (16, 6000, 4, 3),  # 4 torchrun processes share the 16 cores: 4 each, one left to the process itself
        (16, 20, 1, 2),  # one worker per 8 images
        (16, 12, 1, 0),  # too few images to pay for a pool
        (2, 6000, 1, 0),  # a 2-core laptop or CI: scored in the process
        (3, 6000, 1, 2),
    ],
)
def test_default_edge_workers(monkeypatch, cores, images, processes, expected):
    import os

    from pamm.metrics.edges import default_edge_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    _run_as_module(monkeypatch)
    assert default_edge_workers(images, processes) == expected


def _run_as_module(monkeypatch, script=None) -> None:
    """Make this process look like ``python -m something`` or, with ``script`` (a file), ``python script``."""
    import importlib.machinery
    import sys
    import types

    main = types.ModuleType("__main__")
    main.__file__ = str(script) if script else "/somewhere/pkg/__main__.py"
    main.__spec__ = None if script else importlib.machinery.ModuleSpec("pkg.__main__", None)
    monkeypatch.setitem(sys.modules, "__main__", main)


GUARDED_SCRIPT = '''"""Train."""
import sys
from pamm.cli import main
DEFAULT: int = 3
if __name__ == "__main__":
    sys.exit(main())
'''


@pytest.mark.parametrize(
    "source,pool",
    [
        (GUARDED_SCRIPT, True),  # the shape of the `pamm` console script: workers may import it again
        ("import pamm\ntrainer = pamm.engine.Trainer(pamm.load_config('demo'), 'runs/x')\ntrainer.fit()\n", False),
        ("import pamm\npamm.evaluate()\n", False),
        ("this is not python", False),
    ],
)
def test_automatic_edge_pool_only_where_spawned_workers_cannot_rerun_the_script(monkeypatch, tmp_path, source, pool):
    """Spawned workers import the parent's __main__: a script that trains at its top level (no `if __name__ ==
    "__main__":` guard) would run again in every worker, so only an explicit eval.edge_workers starts a pool there."""
    import os

    from pamm.metrics.edges import default_edge_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    script = tmp_path / "train.py"
    script.write_text(source)
    _run_as_module(monkeypatch, script)
    assert default_edge_workers(6000) == (8 if pool else 0)


def test_evaluation_resolves_automatic_edge_workers_per_process(monkeypatch):
    import os

    import pamm
    from pamm.engine.evaluator import edge_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    _run_as_module(monkeypatch)
    cfg = pamm.load_config("pascal-vitl")
    assert cfg.eval.edge_workers == -1
    assert edge_workers(cfg, 5105) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert edge_workers(cfg, 5105 // 8) == 0  # 2 cores per process: one for itself, one is no pool
    cfg = pamm.load_config("pascal-vitl", {"eval.edge_workers": 3})
    assert edge_workers(cfg, 10) == 3  # an explicit number is taken as given
