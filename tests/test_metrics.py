"""Dense-prediction meters (segmentation, depth, normals, saliency), build_meters and the multi-task gain: values
against hand computations, ignore handling, and batch / merge equivalence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pamm.metrics import (
    DepthMeter,
    EdgeMeter,
    NormalsMeter,
    SaliencyMeter,
    SegmentationMeter,
    build_meters,
    main_metric,
    multitask_gain,
    task_gains,
)
from pamm.metrics.base import fixed_point_sum, fixed_point_value, prepare_batch


def assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def check_split_invariance(make_meter, pred, target, splits=(1, 2, 3)) -> dict:
    """One pass, several batches and two merged meters give identical states and results."""
    whole = make_meter()
    whole.update(pred, target)
    reference = whole.state()
    for batches in splits:
        chunked = make_meter()
        for part_pred, part_target in zip(np.array_split(pred, batches), np.array_split(target, batches)):
            chunked.update(part_pred, part_target)
        assert_states_equal(chunked.state(), reference)
    half = len(pred) // 2
    first, second = make_meter(), make_meter()
    first.update(pred[:half], target[:half])
    second.update(pred[half:], target[half:])
    first.merge_state(second.state())
    assert_states_equal(first.state(), reference)
    np.testing.assert_equal(first.compute(), whole.compute())
    return whole.compute()


# ---------------------------------------------------------------------------------------------------------------


def test_fixed_point_sums_are_exact_and_split_invariant():
    values = np.random.default_rng(0).exponential(3.0, 10_001) ** 2
    whole = fixed_point_sum(values)
    parts = sum(fixed_point_sum(part) for part in np.array_split(values, 7))
    np.testing.assert_array_equal(whole, parts)
    assert fixed_point_value(whole) == pytest.approx(math.fsum(values), rel=1e-12)
    with pytest.raises(ValueError):
        fixed_point_sum(np.array([1.0, np.nan]))


def test_prepare_batch_arrays_and_scored_pixels():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, (2, 1, 4, 5))
    target[0, 0, 1] = 255
    valid = rng.random((2, 4, 5)) > 0.3
    pred, tgt, scored = prepare_batch(torch.tensor(rng.random((2, 4, 5))), target, valid, ignore_index=255,
                                      pred_dtype=np.float32)  # fmt: skip
    assert pred.dtype == np.float32 and pred.shape == tgt.shape == scored.shape == (2, 4, 5)
    np.testing.assert_array_equal(scored, (target[:, 0] != 255) & valid)
    _, _, everything = prepare_batch(pred, tgt)
    assert everything.all() and everything.dtype == bool
    normals = rng.normal(size=(2, 3, 4, 5))
    normals[1, 2, 3, 4] = 255  # one ignored channel marks the pixel
    _, _, scored = prepare_batch(normals, normals, ignore_index=255, vectors=True)
    assert scored.shape == (2, 4, 5) and (~scored).sum() == 1 and not scored[1, 3, 4]
    with pytest.raises(ValueError, match=r"\(b, 3, H, W\)"):
        prepare_batch(normals[:, :2], normals[:, :2], vectors=True)
    with pytest.raises(ValueError, match="does not match"):
        prepare_batch(np.zeros((2, 2, 4, 5)), np.zeros((2, 4, 5)))  # only a channel of size one is dropped


@pytest.mark.parametrize(
    "make_meter",
    [lambda: SegmentationMeter(3), DepthMeter, NormalsMeter, SaliencyMeter, lambda: EdgeMeter(2.0)],
    ids=["semseg", "depth", "normals", "sal", "edge"],
)
def test_every_meter_checks_shapes_and_drops_a_unit_channel(make_meter):
    meter = make_meter()
    rng = np.random.default_rng(1)
    channels = 3 if isinstance(meter, NormalsMeter) else 1
    pred = rng.random((2, channels, 16, 16))
    target = (rng.random((2, channels, 16, 16)) > 0.5).astype(np.int64) + (isinstance(meter, DepthMeter))
    with pytest.raises(ValueError, match="shape|expected"):
        meter.update(pred[:, :, :8], target)
    if isinstance(meter, SegmentationMeter):
        pred = (pred * 3).astype(np.int64)
    meter.update(pred, target)
    if channels == 1:
        squeezed = make_meter()
        squeezed.update(pred[:, 0], target[:, 0])
        assert_states_equal(meter.state(), squeezed.state())


def test_segmentation_hand_computed():
    target = np.array([[[0, 0, 1], [1, 2, 255]]])
    pred = np.array([[[0, 1, 1], [1, 1, 0]]])
    meter = SegmentationMeter(3)
    meter.update(pred, target)
    # confusion (rows = target): [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    np.testing.assert_array_equal(meter.state()["confusion"], [[1, 1, 0], [0, 2, 0], [0, 1, 0]])
    result = meter.compute()
    assert result["IoU"] == pytest.approx([50.0, 50.0, 0.0])
    assert result["mIoU"] == pytest.approx(100 / 3)
    assert result["pixel_acc"] == pytest.approx(60.0)


def test_segmentation_absent_class_is_left_out_of_the_mean():
    meter = SegmentationMeter(4, class_names=("a", "b", "c", "d"))
    meter.update(torch.tensor([[[0, 1, 1], [1, 1, 0]]]), torch.tensor([[[[0, 0, 1], [1, 2, 255]]]]))
    result = meter.compute()
    assert math.isnan(result["IoU"][3])
    assert result["classes_present"] == 3
    assert result["mIoU"] == pytest.approx(100 / 3)
    assert result["class_names"] == ["a", "b", "c", "d"]


def test_segmentation_valid_mask_and_label_checks():
    meter = SegmentationMeter(3)
    pred = np.zeros((1, 2, 2), dtype=np.int64)
    target = np.array([[[0, 1], [2, 255]]])
    meter.update(pred, target, valid=np.array([[[True, False], [False, True]]]))
    assert meter.state()["confusion"].sum() == 1
    with pytest.raises(ValueError):
        meter.update(pred, np.full((1, 2, 2), 7))


def test_segmentation_split_invariance():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 5, (6, 9, 7))
    target[rng.random(target.shape) < 0.1] = 255
    pred = rng.integers(0, 5, (6, 9, 7))
    check_split_invariance(lambda: SegmentationMeter(5), pred, target)


def test_depth_hand_computed():
    pred = np.array([[[1.0, 2.0], [3.0, 100.0]]])
    target = np.array([[[[2.0, 2.0], [0.0, 90.0]]]])  # 0 invalid, 90 beyond 80 m
    meter = DepthMeter()
    meter.update(torch.from_numpy(pred), torch.from_numpy(target))
    result = meter.compute()
    assert result["pixels"] == 2
    assert result["rmse"] == pytest.approx(math.sqrt(0.5))
    assert result["log_rmse"] == pytest.approx(math.log(2) / math.sqrt(2))
    assert result["abs_rel"] == pytest.approx(0.25)
    assert result["sq_rel"] == pytest.approx(0.25)
    assert [result["delta1"], result["delta2"], result["delta3"]] == pytest.approx([50.0, 50.0, 50.0])


def test_depth_clamps_negative_predictions_and_rejects_nan():
    meter = DepthMeter()
    meter.update(np.array([[[-3.0]]]), np.array([[[[2.0]]]]))
    assert meter.compute()["rmse"] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        meter.update(np.array([[[np.nan]]]), np.array([[[[2.0]]]]))


def test_depth_split_invariance_is_exact():
    rng = np.random.default_rng(2)
    target = rng.uniform(0.5, 10, (5, 1, 8, 9))
    target[rng.random(target.shape) < 0.2] = 0
    pred = target[:, 0] + rng.normal(0, 0.7, (5, 8, 9))
    result = check_split_invariance(DepthMeter, pred, target)
    valid = target[:, 0] > 0
    rmse = math.sqrt(np.mean((np.maximum(pred, 0)[valid] - target[:, 0][valid]) ** 2))
    assert result["rmse"] == pytest.approx(rmse, rel=1e-9)


def test_normals_known_angles():
    def pixels(*vectors):  # (b=1, 3, 1, n)
        return np.array(vectors, dtype=np.float64).T[None, :, None, :]

    pred = pixels((1, 0, 0), (1, 0, 0), (0, 0, 1), (0, 1, 0))
    target = pixels((0, 1, 0), (1, 1, 0), (0, 0, 2), (255, 255, 255))
    meter = NormalsMeter()
    meter.update(pred, target)
    result = meter.compute()
    assert result["pixels"] == 3
    assert result["mean"] == pytest.approx(45.0)
    assert result["median"] == pytest.approx(45.0, abs=0.005 + 1e-9)  # centre of the 0.01° bin
    assert result["rmse"] == pytest.approx(math.sqrt((90**2 + 45**2) / 3))
    assert result["within_11.25"] == pytest.approx(100 / 3)
    assert result["within_22.5"] == pytest.approx(100 / 3)
    assert result["within_30"] == pytest.approx(100 / 3)


def test_normals_median_of_even_count_and_split_invariance():
    rng = np.random.default_rng(3)
    target = rng.normal(size=(4, 3, 6, 5))
    target[:, :, 0, 0] = 255
    pred = target + rng.normal(0, 0.4, target.shape)
    result = check_split_invariance(NormalsMeter, pred, target)
    valid = (target != 255).all(1)
    unit_pred = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    unit_target = target / np.linalg.norm(target, axis=1, keepdims=True)
    cosine = np.clip((unit_pred * unit_target).sum(1), -1, 1)[valid]
    angles = np.degrees(np.arccos(cosine))
    assert result["mean"] == pytest.approx(angles.mean(), rel=1e-9)
    assert result["median"] == pytest.approx(np.median(angles), abs=0.01)


def test_saliency_hand_computed_max_f():
    meter = SaliencyMeter()
    meter.update(np.array([[[0.9, 0.6, 0.3, 0.1]]], dtype=np.float32), np.array([[[1, 0, 1, 0]]]))
    result = meter.compute()
    # t <= 0.1: P 1/2, R 1; t in (0.1, 0.3]: P 2/3, R 1; (0.3, 0.6]: P 1/2, R 1/2; (0.6, 0.9]: P 1, R 1/2
    f = {0.1: 1.3 * 0.5 / (0.15 + 1), 0.3: 1.3 * (2 / 3) / (0.2 + 1), 0.5: 0.5, 0.65: 1.3 * 0.5 / (0.3 + 0.5)}
    curve = dict(zip(np.round(result["thresholds"], 2), result["F"]))
    for threshold, value in f.items():
        assert curve[threshold] == pytest.approx(value * 100, rel=1e-6)
    assert curve[0.95] == 0.0
    assert result["maxF"] == pytest.approx(81.25, rel=1e-6)
    assert result["max_threshold"] == pytest.approx(0.65)
    assert result["mIoU"] == pytest.approx(100 / 3)


def test_saliency_double_sigmoid_reproduces_the_inherited_bug():
    pred = np.array([[[0.95, 0.9, 0.8]]], dtype=np.float32)
    target = np.array([[[1, 0, 0]]])
    correct, buggy = SaliencyMeter(), SaliencyMeter(double_sigmoid=True)
    for meter in (correct, buggy):
        meter.update(pred, target)
    assert correct.compute()["maxF"] == pytest.approx(100.0)
    # sigmoid squeezes the probabilities to 0.72, 0.71, 0.69: at best two pixels at P 1/2, R 1
    assert buggy.compute()["maxF"] == pytest.approx(100 * 0.65 / 1.15, rel=1e-6)


def test_saliency_ignore_and_split_invariance():
    rng = np.random.default_rng(4)
    target = (rng.random((5, 7, 6)) > 0.6).astype(np.int64)
    target[rng.random(target.shape) < 0.1] = 255
    pred = np.clip(target * 0.6 + rng.random(target.shape) * 0.5, 0, 1).astype(np.float32)
    check_split_invariance(SaliencyMeter, pred, target)
    meter = SaliencyMeter()
    meter.update(pred, np.full_like(target, 255))
    assert meter.state()["actual_positive"][0] == 0 and meter.state()["predicted_positive"].sum() == 0


def test_build_meters_configures_each_task():
    nyud = build_meters("nyud", ["semseg", "depth", "normals", "edge"])
    assert isinstance(nyud["semseg"], SegmentationMeter) and nyud["semseg"].num_classes == 40
    assert isinstance(nyud["depth"], DepthMeter) and isinstance(nyud["normals"], NormalsMeter)
    assert isinstance(nyud["edge"], EdgeMeter)
    assert nyud["edge"].protocol.max_dist == 0.011 and nyud["edge"].protocol.gt_boundary == "seg2bmap"
    pascal = build_meters("pascal", ["human_parts", "sal", "edge"], sal_double_sigmoid=True)
    assert pascal["human_parts"].num_classes == 7 and pascal["sal"].double_sigmoid
    assert pascal["edge"].protocol.max_dist == 0.0075 and pascal["edge"].protocol.gt_boundary == "thin"
    quick = build_meters("nyud", ["edge"], edge=False)["edge"]
    assert quick.protocol.thresholds == pytest.approx([0.1 * k for k in range(1, 10)])
    assert set(quick.protocol.thresholds) <= set(nyud["edge"].protocol.thresholds)
    with pytest.raises(ValueError):
        build_meters("nyud", ["sal"])


def test_multitask_gain():
    single = {"semseg": 50.0, "depth": {"rmse": 0.5}, "normals": 20.0, "edge": {"odsF": 80.0}}
    results = {"semseg": {"mIoU": 55.0}, "depth": {"rmse": 0.45}, "normals": {"mean": 22.0}, "edge": {"odsF": 80.0}}
    gains = task_gains(results, single, "nyud")
    assert gains == pytest.approx({"semseg": 10.0, "depth": 10.0, "normals": -10.0, "edge": 0.0})
    assert multitask_gain(results, single, "nyud") == pytest.approx(2.5)
    assert main_metric("depth", results["depth"]) == (0.45, False)
    assert main_metric("edge", results["edge"]) == (80.0, True)
    with pytest.raises(KeyError):
        multitask_gain(results, {"semseg": 50.0}, "nyud")
    with pytest.raises(ValueError):
        multitask_gain({"sal": 80.0}, {"sal": 80.0}, "nyud")
