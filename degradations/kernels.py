"""Blur kernels of the Real-ESRGAN and BSRGAN degradations, as pure numpy functions.

Every kernel is built from a few numbers (its parameters), so a pair stores the numbers, not the
pixels. Conventions: a kernel is a (k, k) float64 array, k odd, centred at (k // 2, k // 2); x is
the column offset and y the row offset from the centre; every kernel sums to 1.

Real-ESRGAN (Wang et al. 2021, section 3.1) uses six Gaussian-family kernels

    iso / aniso                   exp(-q / 2)
    generalized_iso / _aniso      exp(-q ** beta / 2)        (beta_g: shape of the tails)
    plateau_iso / _aniso          1 / (1 + q ** beta)         (beta_p: flat top)

with q = [x, y] Sigma^-1 [x, y]^T and Sigma = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T,
plus the 2D sinc (ideal circular low-pass) kernel that simulates ringing and overshoot.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import special

GAUSSIAN_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
KERNEL_TYPES = GAUSSIAN_TYPES + ("sinc",)


def mesh_grid(kernel_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Column (x) and row (y) offsets from the centre of a (k, k) kernel, each (k, k)."""
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    ax = np.arange(kernel_size, dtype=np.float64) - kernel_size // 2
    xx, yy = np.meshgrid(ax, ax)  # xx varies along columns, yy along rows
    return xx, yy


def sigma_matrix(sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Covariance R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T, (2, 2)."""
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T


def _quadratic_form(kernel_size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """q = [x, y] Sigma^-1 [x, y]^T on the kernel grid, (k, k)."""
    xx, yy = mesh_grid(kernel_size)
    inv = np.linalg.inv(sigma_matrix(sigma_x, sigma_y, theta))
    return inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy


def _normalised(kernel: np.ndarray) -> np.ndarray:
    return kernel / kernel.sum()


def gaussian_kernel(kernel_size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> np.ndarray:
    """Bivariate Gaussian; isotropic when sigma_y is None."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    return _normalised(np.exp(-0.5 * _quadratic_form(kernel_size, sigma_x, sigma_y, theta)))


def generalized_gaussian_kernel(
    kernel_size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 1.0
) -> np.ndarray:
    """Generalized Gaussian exp(-q^beta / 2); beta = 1 is the Gaussian."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    q = _quadratic_form(kernel_size, sigma_x, sigma_y, theta)
    return _normalised(np.exp(-0.5 * np.power(q, beta)))


def plateau_kernel(
    kernel_size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 1.0
) -> np.ndarray:
    """Plateau-shaped kernel 1 / (1 + q^beta)."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    q = _quadratic_form(kernel_size, sigma_x, sigma_y, theta)
    return _normalised(1.0 / (np.power(q, beta) + 1.0))


def sinc_kernel(kernel_size: int, omega: float) -> np.ndarray:
    """2D sinc: the impulse response of the ideal circular low-pass with cutoff omega (rad/sample).

    h(r) = omega * J1(omega * r) / (2 pi r), with the limit omega^2 / (4 pi) at r = 0, truncated to
    the (k, k) window and renormalised to unit DC gain.
    """
    xx, yy = mesh_grid(kernel_size)
    r = np.hypot(xx, yy)
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = omega * special.j1(omega * r) / (2 * np.pi * r)
    c = kernel_size // 2
    kernel[c, c] = omega**2 / (4 * np.pi)
    return _normalised(kernel)


def gaussian_1d(kernel_size: int, sigma: float) -> np.ndarray:
    """Normalised 1D Gaussian taps, (k,). sigma <= 0 takes OpenCV's getGaussianKernel default
    sigma = 0.3 * ((k - 1) / 2 - 1) + 0.8 (Real-ESRGAN's USM uses cv2.getGaussianKernel(51, 0))."""
    if sigma <= 0:
        sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    x = np.arange(kernel_size, dtype=np.float64) - (kernel_size - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def shift_kernel(kernel: np.ndarray, shift: float) -> np.ndarray:
    """Resample a kernel at (y + shift, x + shift) bilinearly, edges clamped (BSRGAN's shift_pixel:
    moves the centre up-left so that taking every sf-th pixel after blurring stays centred)."""
    k = kernel.shape[0]
    pos = np.clip(np.arange(k, dtype=np.float64) + shift, 0, k - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, k - 1)
    frac = pos - lo
    rows = kernel[lo, :] * (1 - frac)[:, None] + kernel[hi, :] * frac[:, None]
    return rows[:, lo] * (1 - frac)[None, :] + rows[:, hi] * frac[None, :]


def kernel_from_params(p: dict[str, Any]) -> np.ndarray:
    """The (k, k) kernel described by a drawn parameter dict (see degradations.draw)."""
    t, k = p["type"], int(p["size"])
    if t == "sinc":
        return sinc_kernel(k, p["omega"])
    sx = p["sigma_x"]
    sy = p.get("sigma_y", sx)
    theta = p.get("theta", 0.0)
    if t in ("iso", "aniso"):
        kernel = gaussian_kernel(k, sx, sy, theta)
    elif t.startswith("generalized"):
        kernel = generalized_gaussian_kernel(k, sx, sy, theta, p["beta"])
    elif t.startswith("plateau"):
        kernel = plateau_kernel(k, sx, sy, theta, p["beta"])
    else:
        raise ValueError(f"unknown kernel type {t!r}; expected one of {', '.join(KERNEL_TYPES)}")
    if "shift" in p:  # BSRGAN's shifted kernel before nearest downsampling
        kernel = _normalised(shift_kernel(kernel, p["shift"]))
    return kernel
