"""Monotonic rational-quadratic spline transforms (Durkan et al. 2019, "Neural Spline Flows").

VITS's stochastic duration predictor uses the unconstrained form: a spline on `[-tail_bound, tail_bound]`
joined to the identity outside it, with the boundary derivatives fixed to 1 so the join is smooth. The
numbers equal jaywalnut310/vits `transforms.py` and transformers' `_unconstrained_rational_quadratic_spline`.

Log-determinant convention (theirs too): every call returns `log|d outputs / d inputs|` of the map it
applied. The forward gives `log g'(x)`; `reverse=True` gives `log|d g^-1(y) / dy| = -log g'(g^-1(y))`, so a
flow adds the forward's value to its log-likelihood and the reverse's value is minus the forward's at the
matching point.

Shapes: `inputs` is any `[...]`; the unnormalised parameters are `[..., num_bins]` for widths and heights and
`[..., num_bins + 1]` (constrained) or `[..., num_bins - 1]` (unconstrained) for derivatives at the knots.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def unconstrained_rational_quadratic_spline(
    inputs: Tensor, unnormalized_widths: Tensor, unnormalized_heights: Tensor, unnormalized_derivatives: Tensor,
    reverse: bool = False, tail_bound: float = 5.0, min_bin_width: float = 1e-3, min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """Spline on `[-tail_bound, tail_bound]`, identity (log-det 0) outside, elementwise.

    Only the `num_bins - 1` interior knot derivatives are free; the two boundary ones are 1, matching the
    identity tails. Returns `(outputs, log_abs_det)`, both shaped like `inputs`.
    """
    num_bins = unnormalized_widths.shape[-1]
    _check_shapes(inputs, unnormalized_widths, unnormalized_heights, unnormalized_derivatives, num_bins - 1)
    boundary = math.log(math.expm1(1 - min_derivative))  # min_derivative + softplus(boundary) == 1
    derivatives = F.pad(unnormalized_derivatives, (1, 1), value=boundary)  # [..., num_bins + 1]
    inside = (inputs >= -tail_bound) & (inputs <= tail_bound)
    # The spline runs on every element (clamped into its domain, so no NaN reaches the gradients) and the
    # tails are selected afterwards: no boolean indexing, hence no host sync on the GPU.
    outputs, log_abs_det = _spline(
        inputs.clamp(-tail_bound, tail_bound), unnormalized_widths, unnormalized_heights, derivatives, reverse,
        -tail_bound, tail_bound, -tail_bound, tail_bound, min_bin_width, min_bin_height, min_derivative,
    )
    return torch.where(inside, outputs, inputs), torch.where(inside, log_abs_det, 0.0)


def rational_quadratic_spline(
    inputs: Tensor,
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_derivatives: Tensor,
    reverse: bool = False,
    left: float = 0.0,
    right: float = 1.0,
    bottom: float = 0.0,
    top: float = 1.0,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """Monotonic spline mapping `[left, right]` onto `[bottom, top]` (the reverse maps back), elementwise.

    `unnormalized_derivatives` holds all `num_bins + 1` knot derivatives. Returns `(outputs, log_abs_det)`.

    Raises:
        ValueError: an input lies outside the domain (`[left, right]`, or `[bottom, top]` when `reverse`).
    """
    num_bins = unnormalized_widths.shape[-1]
    _check_shapes(inputs, unnormalized_widths, unnormalized_heights, unnormalized_derivatives, num_bins + 1)
    low, high = (bottom, top) if reverse else (left, right)
    if inputs.numel() and (inputs.min() < low or inputs.max() > high):
        raise ValueError(
            f"rational_quadratic_spline(reverse={reverse}): inputs must lie in [{low}, {high}], "
            f"got values in [{inputs.min().item()}, {inputs.max().item()}]"
        )
    return _spline(
        inputs, unnormalized_widths, unnormalized_heights, unnormalized_derivatives, reverse,
        left, right, bottom, top, min_bin_width, min_bin_height, min_derivative,
    )


def _check_shapes(inputs: Tensor, widths: Tensor, heights: Tensor, derivatives: Tensor, num_derivatives: int):
    num_bins = widths.shape[-1]
    for name, tensor, size in (("widths", widths, num_bins), ("heights", heights, num_bins),
                               ("derivatives", derivatives, num_derivatives)):
        if tuple(tensor.shape) != (*inputs.shape, size):
            raise ValueError(
                f"unnormalized_{name} must have shape {(*inputs.shape, size)} for inputs of shape "
                f"{tuple(inputs.shape)} and {num_bins} bins, got {tuple(tensor.shape)}"
            )


def _knots(unnormalized: Tensor, low: float, high: float, min_size: float) -> Tensor:
    """Bin edges `[..., num_bins + 1]` from `[low, high]` cut into softmax-sized bins no smaller than `min_size`."""
    num_bins = unnormalized.shape[-1]
    if min_size * num_bins > 1.0:
        raise ValueError(f"minimal bin size {min_size} is too large for {num_bins} bins (needs size * bins <= 1)")
    sizes = min_size + (1 - min_size * num_bins) * F.softmax(unnormalized, dim=-1)
    inner = (high - low) * torch.cumsum(sizes, dim=-1)[..., :-1] + low
    return F.pad(F.pad(inner, (1, 0), value=low), (0, 1), value=high)  # exact end knots


def _spline(
    inputs: Tensor,
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_derivatives: Tensor,
    reverse: bool,
    left: float,
    right: float,
    bottom: float,
    top: float,
    min_bin_width: float,
    min_bin_height: float,
    min_derivative: float,
) -> tuple[Tensor, Tensor]:
    num_bins = unnormalized_widths.shape[-1]
    knots_x = _knots(unnormalized_widths, left, right, min_bin_width)  # [..., num_bins + 1]
    knots_y = _knots(unnormalized_heights, bottom, top, min_bin_height)  # [..., num_bins + 1]
    derivatives = min_derivative + F.softplus(unnormalized_derivatives)  # [..., num_bins + 1]

    # the bin holding each input (the edges at or below it, less one; what searchsorted(right=True) gives, written
    # as a comparison so that the ONNX export has an operator for it); the top edge belongs to the last bin
    edges = knots_y if reverse else knots_x
    bin_idx = (edges <= inputs[..., None]).sum(dim=-1, keepdim=True) - 1
    bin_idx = bin_idx.clamp(0, num_bins - 1)  # [..., 1]
    x0, x1 = knots_x.gather(-1, bin_idx)[..., 0], knots_x.gather(-1, bin_idx + 1)[..., 0]
    y0, y1 = knots_y.gather(-1, bin_idx)[..., 0], knots_y.gather(-1, bin_idx + 1)[..., 0]
    d0, d1 = derivatives.gather(-1, bin_idx)[..., 0], derivatives.gather(-1, bin_idx + 1)[..., 0]
    width, height = x1 - x0, y1 - y0
    slope = height / width
    curvature = d0 + d1 - 2 * slope

    if reverse:  # solve y = g(theta) for theta in [0, 1]: a quadratic, with the numerically stable root
        shifted = (inputs - y0) * curvature
        a = height * (slope - d0) + shifted
        b = height * d0 - shifted
        c = -slope * (inputs - y0)
        discriminant = (b.pow(2) - 4 * a * c).clamp(min=0)  # >= 0 in exact arithmetic
        theta = (2 * c) / (-b - torch.sqrt(discriminant))
    else:
        theta = (inputs - x0) / width
    theta_one_minus_theta = theta * (1 - theta)
    denominator = slope + curvature * theta_one_minus_theta
    log_derivative = torch.log(
        slope.pow(2) * (d1 * theta.pow(2) + 2 * slope * theta_one_minus_theta + d0 * (1 - theta).pow(2))
    ) - 2 * torch.log(denominator)  # log g'(x) at the forward point

    if reverse:
        return x0 + theta * width, -log_derivative
    return y0 + height * (slope * theta.pow(2) + d0 * theta_one_minus_theta) / denominator, log_derivative
