"""Blur kernels and filters of the degrade stage: normalisation, symmetry, oracles."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import special
from scipy.integrate import quad
from scipy.stats import multivariate_normal

from degradations import kernels as K
from degradations import ops

PARAMS = [
    {"type": "iso", "size": 21, "sigma_x": 2.5},
    {"type": "aniso", "size": 15, "sigma_x": 2.8, "sigma_y": 0.7, "theta": 0.6},
    {"type": "generalized_iso", "size": 13, "sigma_x": 1.7, "beta": 0.6},
    {"type": "generalized_aniso", "size": 17, "sigma_x": 0.9, "sigma_y": 2.4, "theta": -1.1, "beta": 3.2},
    {"type": "plateau_iso", "size": 9, "sigma_x": 1.2, "beta": 1.5},
    {"type": "plateau_aniso", "size": 21, "sigma_x": 3.0, "sigma_y": 1.0, "theta": 2.5, "beta": 1.9},
    {"type": "sinc", "size": 11, "omega": 1.3},
    {"type": "sinc", "size": 21, "omega": 0.7},
]


@pytest.mark.parametrize("p", PARAMS, ids=lambda p: f"{p['type']}-{p['size']}")
def test_kernel_sums_to_one_and_is_point_symmetric(p):
    k = K.kernel_from_params(p)
    assert k.shape == (p["size"], p["size"])
    assert k.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-15)  # 180-degree rotation
    assert np.unravel_index(k.argmax(), k.shape) == (p["size"] // 2, p["size"] // 2)
    if not p["type"].endswith("aniso"):  # isotropic: every axis and diagonal mirror
        np.testing.assert_allclose(k, k.T, atol=1e-15)
        np.testing.assert_allclose(k, k[::-1], atol=1e-15)
        np.testing.assert_allclose(k, k[:, ::-1], atol=1e-15)


def test_aniso_axes_follow_sigma_and_theta():
    xx, yy = K.mesh_grid(21)
    k = K.gaussian_kernel(21, 3.0, 1.0, 0.0)  # wide along x (columns)
    np.testing.assert_allclose(k, k[::-1], atol=1e-15)
    np.testing.assert_allclose(k, k[:, ::-1], atol=1e-15)
    assert (k * xx**2).sum() > 5 * (k * yy**2).sum()
    k90 = K.gaussian_kernel(21, 3.0, 1.0, math.pi / 2)  # rotated a quarter turn: wide along y
    np.testing.assert_allclose(k90, k.T, atol=1e-12)


def test_gaussian_matches_scipy_multivariate_normal():
    sx, sy, theta = 2.2, 0.8, 0.9
    xx, yy = K.mesh_grid(15)
    pdf = multivariate_normal(mean=[0, 0], cov=K.sigma_matrix(sx, sy, theta)).pdf(np.stack([xx, yy], -1))
    np.testing.assert_allclose(K.gaussian_kernel(15, sx, sy, theta), pdf / pdf.sum(), rtol=1e-10)
    # beta = 1 generalized Gaussian is the Gaussian; plateau is heavier-tailed than it
    np.testing.assert_allclose(K.generalized_gaussian_kernel(15, sx, sy, theta, 1.0), pdf / pdf.sum(), rtol=1e-10)
    assert K.plateau_kernel(15, sx, sy, theta, 1.0)[0, 0] > (pdf / pdf.sum())[0, 0]


def _ideal_lowpass(size: int, omega: float) -> np.ndarray:
    """The oracle: the inverse 2D Fourier transform of the disc |w| < omega, in polar form
    h(r) = 1 / (2 pi) * int_0^omega J0(rho r) rho d rho, integrated numerically on the (k, k) grid
    (no closed form used) and normalised to unit DC gain as any truncated kernel must be."""
    xx, yy = K.mesh_grid(size)
    r = np.hypot(xx, yy)
    values = {v: quad(lambda rho, v=v: special.j0(rho * v) * rho, 0, omega, limit=200, epsabs=1e-14)[0] / (2 * math.pi)
              for v in np.unique(r)}
    h = np.vectorize(values.get)(r)
    return h / h.sum()


@pytest.mark.parametrize("size", [13, 21])
@pytest.mark.parametrize("omega", [math.pi / 5, math.pi / 3, math.pi / 2, 0.7 * math.pi, 0.85 * math.pi])
def test_sinc_is_the_truncated_ideal_lowpass(size, omega):
    np.testing.assert_allclose(K.sinc_kernel(size, omega), _ideal_lowpass(size, omega), rtol=0, atol=1e-12)
    n = 1024
    mag = np.abs(np.fft.rfft2(K.sinc_kernel(size, omega), s=(n, n)))  # (n, n/2+1)
    w = np.arange(n // 2 + 1) * 2 * math.pi / n
    cutoff = w[np.argmax(mag[0] < 0.5)]  # half-amplitude point along the horizontal frequency axis
    # truncation to the window moves the half-amplitude point by at most a tenth of omega here
    assert cutoff == pytest.approx(omega, rel=0.1)
    radius = np.hypot((np.fft.fftfreq(n) * 2 * math.pi)[:, None], w[None, :])
    stop = (radius > 1.4 * omega) & (radius < math.pi)
    if stop.any():
        assert mag[stop].mean() < 0.05


def test_usm_window_is_opencv_default():
    g = K.gaussian_1d(51, 0)  # cv2.getGaussianKernel(51, 0): sigma = 0.3 * (25 - 1) + 0.8 = 8
    np.testing.assert_allclose(g, K.gaussian_1d(51, 8.0))
    assert g.sum() == pytest.approx(1.0) and g.argmax() == 25


@pytest.mark.parametrize("p", PARAMS[:2] + PARAMS[-1:], ids=lambda p: p["type"])
def test_fft_filter_equals_direct_convolution(p):
    x = torch.rand(1, 3, 40, 57, generator=torch.Generator().manual_seed(0))
    k = K.kernel_from_params(p)
    pad = k.shape[0] // 2
    ref = F.conv2d(F.pad(x, (pad,) * 4, mode="reflect").reshape(3, 1, 40 + 2 * pad, 57 + 2 * pad),
                   torch.as_tensor(k, dtype=torch.float32)[None, None]).reshape(1, 3, 40, 57)
    torch.testing.assert_close(ops.filter2d(x, k), ref, atol=2e-6, rtol=0)


def test_usm_sharpens_edges_only():
    x = torch.full((1, 3, 64, 64), 0.5)
    x[..., 32:] = 0.6  # a step edge
    y = ops.usm_sharpen(x)
    assert y[..., 10, 5].sub(0.5).abs().max() < 1e-6  # flat far from the edge: unchanged
    assert y[..., 31].mean() < 0.5 < 0.6 < y[..., 32].mean()  # overshoot on both sides of the edge
    assert 0 <= y.min() and y.max() <= 1
