"""Losses against hand-computed values on tiny tensors, ignore handling and degenerate batches."""

from __future__ import annotations

import math

import pytest
import torch

from pamm.losses import (
    MultiTaskLoss,
    balanced_cross_entropy_loss,
    cross_entropy_loss,
    depth_l1_loss,
    load_balancing_loss,
    normals_l1_loss,
    weighted_bce_loss,
)

IGNORE = 255


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_cross_entropy_hand_computed_and_ignores_255():
    logits = torch.tensor([[[[2.0, 0.0, 5.0]], [[0.0, 1.0, -5.0]]]])  # (1, 2, 1, 3)
    target = torch.tensor([[[0, 1, IGNORE]]])
    first = -math.log(math.exp(2) / (math.exp(2) + 1))
    second = -math.log(math.e / (1 + math.e))
    assert cross_entropy_loss(logits, target).item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_balanced_cross_entropy_weights_by_positive_fraction():
    logits = torch.tensor([[[[1.0, 0.0, 0.0, 3.0, 9.0]], [[0.0, 2.0, 0.0, 0.0, -9.0]]]])  # (1, 2, 1, 5)
    target = torch.tensor([[[0, 1, 1, 0, IGNORE]]])
    ce = [softplus(-1.0), softplus(-2.0), math.log(2.0), softplus(-3.0)]  # −log softmax of the true class
    positive = 2 / 4
    weights = [positive, 1 - positive, 1 - positive, positive]  # background p, salient 1 − p
    expected = sum(w * c for w, c in zip(weights, ce)) / 4
    assert balanced_cross_entropy_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)

    target = torch.tensor([[[1, 1, 1, 0, IGNORE]]])  # p = 3/4: background weighted 3/4, salient 1/4
    ce_salient = [softplus(1.0), softplus(-2.0), math.log(2.0)]
    expected = (0.25 * sum(ce_salient) + 0.75 * softplus(-3.0)) / 4
    assert balanced_cross_entropy_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="saliency targets"):
        balanced_cross_entropy_loss(logits, torch.tensor([[[0, 2, 1, 0, 0]]]))


def test_weighted_bce_hand_computed():
    logits = torch.tensor([1.5, -0.5, 2.0, 7.0]).view(1, 1, 1, 4)
    target = torch.tensor([1.0, 0.0, 0.0, IGNORE]).view(1, 1, 1, 4)
    w = 0.95
    expected = (w * softplus(-1.5) + (1 - w) * softplus(-0.5) + (1 - w) * softplus(2.0)) / 3
    assert weighted_bce_loss(logits, target, w).item() == pytest.approx(expected, rel=1e-6)


def test_normals_l1_on_normalised_prediction_over_valid_pixels():
    prediction = torch.tensor([[0.0, 3.0], [0.0, 0.0], [2.0, 4.0]]).view(1, 3, 1, 2)  # unit: (0,0,1), (0.6,0,0.8)
    target = torch.tensor([[0.0, IGNORE], [1.0, IGNORE], [0.0, IGNORE]]).view(1, 3, 1, 2)
    assert normals_l1_loss(prediction, target).item() == pytest.approx(2.0, rel=1e-6)  # |0|+|−1|+|1|, 1 pixel
    target = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).view(1, 3, 1, 2)
    assert normals_l1_loss(prediction, target).item() == pytest.approx((2.0 + 0.8) / 2, rel=1e-6)


def test_depth_l1_over_positive_ground_truth():
    prediction = torch.tensor([1.0, 2.0, 9.0, 4.0]).view(1, 1, 2, 2)
    target = torch.tensor([1.5, 0.0, 0.0, 2.0]).view(1, 1, 2, 2)
    assert depth_l1_loss(prediction, target).item() == pytest.approx((0.5 + 2.0) / 2)


CASES = {
    "semseg": (lambda: torch.randn(2, 4, 3, 5), lambda: torch.randint(0, 4, (2, 3, 5))),
    "sal": (lambda: torch.randn(2, 2, 3, 5), lambda: torch.randint(0, 2, (2, 3, 5))),
    "edge": (lambda: torch.randn(2, 1, 3, 5), lambda: torch.randint(0, 2, (2, 1, 3, 5)).float()),
    "normals": (lambda: torch.randn(2, 3, 3, 5), lambda: torch.nn.functional.normalize(torch.randn(2, 3, 3, 5), dim=1)),
    "depth": (lambda: torch.randn(2, 1, 3, 5), lambda: torch.rand(2, 1, 3, 5) + 0.1),
}


def invalidate(task: str, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mark pixels ``mask`` (b, H, W) invalid in the task's own encoding."""
    target = target.clone()
    value = 0.0 if task == "depth" else IGNORE
    if target.dim() == 3:
        target[mask] = value
    else:
        target.permute(1, 0, 2, 3)[:, mask] = value
    return target


@pytest.mark.parametrize("task", sorted(CASES))
def test_masked_pixels_do_not_contribute(task):
    torch.manual_seed(0)
    make_output, make_target = CASES[task]
    loss_fn = MultiTaskLoss([task], {task: 1.0}, edge_pos_weight=0.9)
    output, target = make_output(), make_target()
    mask = torch.zeros(2, 3, 5, dtype=torch.bool)
    mask[:, 0] = True
    target = invalidate(task, target, mask)
    output.requires_grad_(True)
    _, losses = loss_fn({task: output}, {task: target})
    losses[task].backward()
    assert torch.isfinite(output.grad).all()
    assert (output.grad.permute(1, 0, 2, 3)[:, mask] == 0).all()
    assert output.grad.abs().sum() > 0
    changed = output.detach().clone()
    changed.permute(1, 0, 2, 3)[:, mask] = 100.0
    assert loss_fn.task_loss(task, changed, target).item() == pytest.approx(losses[task].item(), rel=1e-6)


@pytest.mark.parametrize("task", sorted(CASES))
def test_all_invalid_batch_gives_zero_with_finite_gradients(task):
    make_output, make_target = CASES[task]
    output = make_output().requires_grad_(True)
    target = invalidate(task, make_target(), torch.ones(2, 3, 5, dtype=torch.bool))
    loss = MultiTaskLoss([task], {task: 1.0}, edge_pos_weight=0.9).task_loss(task, output, target)
    assert loss.item() == 0.0
    loss.backward()
    assert output.grad is not None and (output.grad == 0).all()


def test_load_balancing_is_cv_squared_of_mean_routing_per_router():
    uniform = torch.full((4, 5), 0.2)
    assert load_balancing_loss([uniform]).item() == pytest.approx(0.0, abs=1e-12)
    router = torch.tensor([[0.6, 0.4, 0.0], [0.2, 0.4, 0.4]])  # expert means 0.4, 0.4, 0.2
    mean = 1.0 / 3.0
    variance = ((0.4 - mean) ** 2 * 2 + (0.2 - mean) ** 2) / 2  # unbiased, over 3 experts
    expected = variance / mean**2
    assert load_balancing_loss([router]).item() == pytest.approx(expected, rel=1e-5)
    assert load_balancing_loss([router, uniform, router]).item() == pytest.approx(2 * expected, rel=1e-5)
    assert load_balancing_loss([]).item() == 0.0
    with pytest.raises(ValueError, match="experts"):
        load_balancing_loss([torch.ones(4)])


def test_multitask_total_is_weighted_sum():
    torch.manual_seed(0)
    tasks = ["semseg", "sal", "edge", "normals", "depth"]
    weights = {"semseg": 1.0, "sal": 5.0, "edge": 50.0, "normals": 10.0, "depth": 2.0}
    outputs = {task: CASES[task][0]().requires_grad_(True) for task in tasks}
    targets = {task: CASES[task][1]() for task in tasks}
    targets["meta"] = [{}, {}]
    routing = [torch.softmax(torch.randn(2, 15, requires_grad=True), dim=1) for _ in range(3)]
    loss_fn = MultiTaskLoss(tasks, weights, edge_pos_weight=0.95, load_balancing_weight=5e-4)
    total, losses = loss_fn(outputs, targets, routing)
    assert set(losses) == set(tasks) | {"load_balancing"}
    expected = sum(weights[t] * losses[t] for t in tasks) + 5e-4 * load_balancing_loss(routing)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses["edge"].item() == pytest.approx(weighted_bce_loss(outputs["edge"], targets["edge"], 0.95).item())
    total.backward()
    assert all(torch.isfinite(outputs[t].grad).all() for t in tasks)
    _, without_routing = loss_fn(outputs, targets)
    assert without_routing["load_balancing"].item() == 0.0


def test_multitask_validates_configuration():
    with pytest.raises(ValueError, match="no loss weight"):
        MultiTaskLoss(["semseg", "depth"], {"semseg": 1.0}, edge_pos_weight=0.9)
    with pytest.raises(ValueError, match="unknown task"):
        MultiTaskLoss(["optical_flow"], {"optical_flow": 1.0}, edge_pos_weight=0.9)
    with pytest.raises(ValueError, match="edge_pos_weight"):
        MultiTaskLoss(["edge"], {"edge": 1.0}, edge_pos_weight=1.0)
    loss_fn = MultiTaskLoss(["semseg"], {"semseg": 1.0}, edge_pos_weight=0.9)
    with pytest.raises(ValueError, match="spatial"):
        loss_fn({"semseg": torch.randn(1, 3, 4, 4)}, {"semseg": torch.zeros(1, 5, 5, dtype=torch.long)})
