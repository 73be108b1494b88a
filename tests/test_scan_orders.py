import numpy as np
import pytest
import torch

from pamm.ops import SCAN_KINDS, inverse_orders, scan_orders
from pamm.ops.scan_orders import hilbert_index


def _skilling_scalar(i: int, j: int, bits: int) -> int:
    """Independent scalar transcription of Skilling's AxesToTranspose + bit interleave, for checking."""
    x = [i, j]
    m = 1 << (bits - 1)
    q = m
    while q > 1:
        p = q - 1
        for k in range(2):
            if x[k] & q:
                x[0] ^= p
            else:
                t = (x[0] ^ x[k]) & p
                x[0] ^= t
                x[k] ^= t
        q >>= 1
    x[1] ^= x[0]
    t = 0
    q = m
    while q > 1:
        if x[1] & q:
            t ^= q - 1
        q >>= 1
    x = [v ^ t for v in x]
    h = 0
    for b in range(bits - 1, -1, -1):
        h = (h << 2) | (((x[0] >> b) & 1) << 1) | ((x[1] >> b) & 1)
    return h


def _neighbour_fraction(order: torch.Tensor, width: int) -> float:
    r, c = order // width, order % width
    steps = (r[1:] - r[:-1]).abs() + (c[1:] - c[:-1]).abs()
    return (steps == 1).float().mean().item()


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_hilbert_index_matches_scalar_algorithm(bits):
    side = 1 << bits
    i, j = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    got = hilbert_index(i, j, bits)
    want = np.array([[_skilling_scalar(a, b, bits) for b in range(side)] for a in range(side)])
    np.testing.assert_array_equal(got, want)
    assert sorted(got.ravel().tolist()) == list(range(side * side))


@pytest.mark.parametrize("kind", SCAN_KINDS)
@pytest.mark.parametrize("directions", [1, 2, 4])
@pytest.mark.parametrize("hw", [(28, 36), (32, 32), (5, 8), (1, 7)])
def test_every_row_is_a_permutation(kind, directions, hw):
    o = scan_orders(*hw, kind=kind, directions=directions)
    assert o.shape == (directions, hw[0] * hw[1]) and o.dtype == torch.int64
    for row in o:
        assert torch.equal(row.sort().values, torch.arange(hw[0] * hw[1]))


def test_hilbert_square_grid_steps_only_to_neighbours():
    o = scan_orders(32, 32)
    for row in o:
        assert _neighbour_fraction(row, 32) == 1.0


def test_hilbert_rectangular_grid_mostly_neighbours():
    o = scan_orders(28, 36)
    for row in o:
        assert _neighbour_fraction(row, 36) >= 0.99


@pytest.mark.parametrize("kind", SCAN_KINDS)
def test_square_grid_direction_k_is_direction_0_rotated(kind):
    n = 16
    o = scan_orders(n, n, kind=kind, directions=4)
    rank0 = torch.empty(n * n, dtype=torch.long)
    rank0[o[0]] = torch.arange(n * n)
    for k in range(1, 4):
        rank_k = torch.empty(n * n, dtype=torch.long)
        rank_k[o[k]] = torch.arange(n * n)
        assert torch.equal(rank_k.view(n, n), torch.rot90(rank0.view(n, n), k))


def test_two_directions_are_opposite_rotations():
    o2 = scan_orders(8, 8, "raster", 2)
    assert torch.equal(o2[0], torch.arange(64))
    assert torch.equal(o2[1], torch.arange(64).flip(0))  # raster rotated by 180 degrees = reversed


def test_snake_and_zorder_shapes():
    snake = scan_orders(3, 4, "snake", 1)[0]
    assert snake.tolist() == [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11]
    z = scan_orders(4, 4, "zorder", 1)[0]
    assert z.tolist()[:8] == [0, 1, 4, 5, 2, 3, 6, 7]


def test_inverse_orders_and_cache():
    o = scan_orders(28, 36)
    inv = inverse_orders(o)
    for k in range(4):
        assert torch.equal(o[k][inv[k]], torch.arange(28 * 36))
    a = scan_orders(28, 36)
    a[0, 0] = -1  # results are copies: mutating one never corrupts the cache
    assert scan_orders(28, 36)[0, 0] != -1


def test_bad_arguments():
    with pytest.raises(ValueError, match="directions"):
        scan_orders(4, 4, directions=3)
    with pytest.raises(ValueError, match="scan kind"):
        scan_orders(4, 4, kind="spiral")
    with pytest.raises(ValueError, match="at least 1x1"):
        scan_orders(0, 4)
