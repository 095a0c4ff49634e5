import pytest
import torch

from speechtrain.layers.splines import rational_quadratic_spline, unconstrained_rational_quadratic_spline

NUM_BINS, TAIL = 10, 5.0


def spline_parameters(shape: tuple[int, ...], seed: int, dtype=torch.float64, num_derivatives=NUM_BINS - 1):
    """Random unnormalised widths, heights `[*shape, NUM_BINS]` and derivatives `[*shape, num_derivatives]`."""
    generator = torch.Generator().manual_seed(seed)
    widths, heights = torch.randn(2, *shape, NUM_BINS, generator=generator, dtype=dtype)
    derivatives = torch.randn(*shape, num_derivatives, generator=generator, dtype=dtype)
    return widths, heights, derivatives


def spread_inputs(shape: tuple[int, ...], seed: int, dtype=torch.float64) -> torch.Tensor:
    """Inputs across and beyond the tail bound, with the bound itself and a few points near it."""
    x = torch.empty(shape, dtype=dtype).uniform_(-1.6 * TAIL, 1.6 * TAIL, generator=torch.Generator().manual_seed(seed))
    x.view(-1)[:6] = torch.tensor([-TAIL, TAIL, -TAIL + 1e-9, TAIL - 1e-9, -TAIL - 1e-9, TAIL + 1e-9], dtype=dtype)
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reverse", [False, True])
def test_equal_to_transformers(dtype, reverse):
    from transformers.models.vits.modeling_vits import _unconstrained_rational_quadratic_spline

    for seed in range(3):
        x = spread_inputs((2, 3, 40), seed, dtype).requires_grad_()  # VITS layout [batch, channels, time]
        params = [p.requires_grad_() for p in spline_parameters((2, 3, 40), seed, dtype)]
        ours = unconstrained_rational_quadratic_spline(x, *params, reverse=reverse, tail_bound=TAIL)
        theirs = _unconstrained_rational_quadratic_spline(x, *params, reverse=reverse, tail_bound=TAIL)
        torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(ours[1], theirs[1], rtol=0, atol=1e-6)
        # the same gradients too, as a training loss sees them (tails give the parameters zero gradient)
        our_grads = torch.autograd.grad(ours[0].sum() + ours[1].sum(), [x, *params])
        their_grads = torch.autograd.grad(theirs[0].sum() + theirs[1].sum(), [x, *params])
        for ours_grad, theirs_grad in zip(our_grads, their_grads):
            torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_inverse_undoes_forward(seed):
    x = spread_inputs((4, 500), seed)
    params = spline_parameters((4, 500), seed)
    y, log_det = unconstrained_rational_quadratic_spline(x, *params)
    x_again, log_det_reverse = unconstrained_rational_quadratic_spline(y, *params, reverse=True)
    torch.testing.assert_close(x_again, x, rtol=0, atol=1e-5)
    torch.testing.assert_close(log_det_reverse, -log_det, rtol=0, atol=1e-5)
    y_again, _ = unconstrained_rational_quadratic_spline(
        unconstrained_rational_quadratic_spline(x, *params, reverse=True)[0], *params
    )
    torch.testing.assert_close(y_again, x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_log_det_equals_autograd(reverse):
    x = spread_inputs((3, 60), seed=5).requires_grad_()
    params = spline_parameters((3, 60), seed=5)
    y, log_det = unconstrained_rational_quadratic_spline(x, *params, reverse=reverse)
    (dy_dx,) = torch.autograd.grad(y.sum(), x)  # the Jacobian is diagonal: elementwise transform
    torch.testing.assert_close(log_det, dy_dx.log(), rtol=0, atol=1e-8)


def test_tails_are_identity_and_join_smoothly():
    x = torch.tensor([-9.0, -TAIL - 1e-6, TAIL + 1e-6, 12.0], dtype=torch.float64)
    params = spline_parameters((4,), seed=1)
    for reverse in (False, True):
        y, log_det = unconstrained_rational_quadratic_spline(x, *params, reverse=reverse)
        assert torch.equal(y, x) and torch.equal(log_det, torch.zeros_like(x))

        bound = torch.tensor([-TAIL, TAIL], dtype=torch.float64)
        edge_params = spline_parameters((2,), seed=2)
        y, log_det = unconstrained_rational_quadratic_spline(bound, *edge_params, reverse=reverse)
        torch.testing.assert_close(y, bound, rtol=0, atol=1e-12)  # continuity: the spline meets the identity
        torch.testing.assert_close(log_det, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-9)  # slope 1

        step = 1e-7  # one-sided slopes just inside the bound are 1 as well
        inside = torch.tensor([-TAIL + step, TAIL - step], dtype=torch.float64)
        y_inside, _ = unconstrained_rational_quadratic_spline(inside, *edge_params, reverse=reverse)
        torch.testing.assert_close((y_inside - bound) / (inside - bound), torch.ones(2, dtype=torch.float64),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_strictly_increasing(reverse):
    x = torch.linspace(-1.4 * TAIL, 1.4 * TAIL, 3001, dtype=torch.float64)
    widths, heights, derivatives = (p.expand(3001, -1) for p in spline_parameters((1,), seed=3))
    y, _ = unconstrained_rational_quadratic_spline(x, widths, heights, derivatives, reverse=reverse)
    assert (y.diff() > 0).all()


def test_constrained_spline_on_an_interval():
    left, right, bottom, top = -2.0, 3.0, 1.0, 4.0
    params = [p.expand(200, -1) for p in spline_parameters((1,), seed=4, num_derivatives=NUM_BINS + 1)]
    x = torch.linspace(left, right, 200, dtype=torch.float64, requires_grad=True)
    y, log_det = rational_quadratic_spline(x, *params, left=left, right=right, bottom=bottom, top=top)
    assert y[0].item() == bottom and y[-1].item() == top and (y.diff() > 0).all()
    (dy_dx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(log_det, dy_dx.log(), rtol=0, atol=1e-8)
    x_again, log_det_reverse = rational_quadratic_spline(
        y.detach(), *params, reverse=True, left=left, right=right, bottom=bottom, top=top
    )
    torch.testing.assert_close(x_again, x.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(log_det_reverse, -log_det.detach(), rtol=0, atol=1e-10)


def test_bad_inputs_raise_clear_errors():
    params = spline_parameters((3,), seed=0, num_derivatives=NUM_BINS + 1)
    with pytest.raises(ValueError, match=r"inputs must lie in \[0.0, 1.0\].*1.5"):
        rational_quadratic_spline(torch.tensor([0.2, 1.5, 0.3], dtype=torch.float64), *params)
    with pytest.raises(ValueError, match=r"reverse=True.*\[0.0, 2.0\]"):
        rational_quadratic_spline(torch.tensor([0.2, 2.5, 0.3], dtype=torch.float64), *params, reverse=True, top=2.0)
    with pytest.raises(ValueError, match=r"unnormalized_derivatives must have shape \(3, 9\)"):
        unconstrained_rational_quadratic_spline(torch.zeros(3, dtype=torch.float64), *params)
    with pytest.raises(ValueError, match="minimal bin size 0.2 is too large for 10 bins"):
        rational_quadratic_spline(torch.zeros(3, dtype=torch.float64), *params, min_bin_width=0.2)
