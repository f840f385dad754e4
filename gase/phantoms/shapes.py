"""Signed-distance primitives and smooth random fields, evaluated on rectilinear grids.

The phantom anatomies are continuous: every structure is a (approximate) signed distance function
(SDF, mm, negative inside) of position, so the same subject can be sampled on any grid and partial
volume comes from averaging sub-voxel samples. Grids are tensor products of three 1D coordinate
arrays (R, A, S in mm), so a primitive is only evaluated on the :class:`Block` of grid points inside
its bounding box, with broadcast coordinates ``X (nx,1,1)``, ``Y (1,ny,1)``, ``Z (1,1,nz)``. That is
what keeps a 3-4 million point phantom under a second on one core.

>>> import numpy as np
>>> f = Frame(np.linspace(-10, 10, 21), np.linspace(-10, 10, 21), np.linspace(-10, 10, 21))
>>> b = f.block((-5, -5, -5), (5, 5, 5))
>>> d = ellipsoid(b.X, b.Y, b.Z, (0, 0, 0), (3, 3, 3))
>>> float(d.min()) < 0 < float(d.max())
True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

FAR = np.float32(1e3)  # "far outside" SDF value used where a primitive was not evaluated


@dataclass
class Block:
    """Grid points inside a box: index slices into the (nx, ny, nz) grid and local coordinates (mm).

    ``X`` (nx,1,1) is 1D along R; ``Y`` and ``Z`` are (1,ny,1) and (1,1,nz), or both (1,ny,nz) when the
    block was taken in a frame pitched about the R axis (see :meth:`Frame.block`).
    """

    sl: tuple[slice, slice, slice]
    X: np.ndarray
    Y: np.ndarray
    Z: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.sl)  # type: ignore[return-value]

    def rel(self, inner: "Block") -> tuple[slice, slice, slice]:
        """Slices of ``inner`` (a block inside this one) relative to this block's arrays."""
        return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner.sl, self.sl))  # type: ignore


@dataclass(frozen=True)
class Pitch:
    """A rigid pose: rotation by ``deg`` about the R axis through ``pivot``, then a ``shift`` (mm).

    A point p of the posed frame sits at ``pivot + Rx(deg) (p - pivot) + shift`` in the subject frame;
    positive angles turn +S towards -A (a femur flexing on a fixed tibia).
    """

    deg: float
    pivot: tuple[float, float, float]
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def to_subject(self, p: Sequence[float]) -> np.ndarray:
        c, s = np.cos(np.radians(self.deg)), np.sin(np.radians(self.deg))
        dy, dz = p[1] - self.pivot[1], p[2] - self.pivot[2]
        return np.array([p[0] + self.shift[0], self.pivot[1] + c * dy - s * dz + self.shift[1],
                         self.pivot[2] + s * dy + c * dz + self.shift[2]])

    def from_subject_yz(self, Y, Z):
        c, s = np.float32(np.cos(np.radians(self.deg))), np.float32(np.sin(np.radians(self.deg)))
        dy = Y - np.float32(self.pivot[1] + self.shift[1])
        dz = Z - np.float32(self.pivot[2] + self.shift[2])
        return np.float32(self.pivot[1]) + c * dy + s * dz, np.float32(self.pivot[2]) - s * dy + c * dz


class Frame:
    """A subject's local coordinates on a rectilinear grid.

    ``x, y, z``: 1D grid coordinates along R, A, S (mm), each monotone (increasing or decreasing).
    The subject sits at ``shift`` (mm) and, when ``mirror`` is set, is mirrored left-right (a left
    knee built from a right-knee model): local = (+-(x - sx), y - sy, z - sz).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, *,
                 shift: Sequence[float] = (0.0, 0.0, 0.0), mirror: bool = False) -> None:
        lx = (np.asarray(x, np.float32) - np.float32(shift[0])) * np.float32(-1.0 if mirror else 1.0)
        self.coords = (lx, np.asarray(y, np.float32) - np.float32(shift[1]),
                       np.asarray(z, np.float32) - np.float32(shift[2]))
        self.shape = tuple(len(c) for c in self.coords)

    def full(self) -> Block:
        return self._make(tuple(slice(0, n) for n in self.shape))  # type: ignore[arg-type]

    def block(self, lo: Sequence[float], hi: Sequence[float], pose: "Pitch | None" = None,
              within: Block | None = None) -> Block | None:
        """Grid points in the local box ``[lo, hi]`` (mm); None if the box misses the grid.

        With a ``pose`` the box (and the returned ``Y, Z``) live in a frame pitched about the R axis
        (knee flexion), see :class:`Pitch`. ``within`` clips the result to another block.
        """
        lo = np.asarray(lo, np.float64)
        hi = np.asarray(hi, np.float64)
        if pose is not None:
            corners = np.array([pose.to_subject((lo[0], yy, zz)) for yy in (lo[1], hi[1]) for zz in (lo[2], hi[2])])
            blo = (lo[0] + pose.shift[0], corners[:, 1].min(), corners[:, 2].min())
            bhi = (hi[0] + pose.shift[0], corners[:, 1].max(), corners[:, 2].max())
        else:
            blo, bhi = lo, hi
        sl = []
        for coord, a, b in zip(self.coords, blo, bhi):
            idx = np.nonzero((coord >= a) & (coord <= b))[0]
            if idx.size == 0:
                return None
            sl.append(slice(int(idx[0]), int(idx[-1]) + 1))
        if within is not None:
            sl = [slice(max(a.start, w.start), min(a.stop, w.stop)) for a, w in zip(sl, within.sl)]
            if any(q.stop <= q.start for q in sl):
                return None
        blk = self._make(tuple(sl))  # type: ignore[arg-type]
        if pose is not None:
            blk.X = blk.X - np.float32(pose.shift[0])
            blk.Y, blk.Z = pose.from_subject_yz(blk.Y, blk.Z)
        return blk

    def _make(self, sl: tuple[slice, slice, slice]) -> Block:
        x, y, z = (c[s] for c, s in zip(self.coords, sl))
        return Block(sl, x[:, None, None], y[None, :, None], z[None, None, :])


# ---------------------------------------------------------------------------------------------
# Primitives (approximate SDFs, mm; exact on the surface, good to ~10% within a few mm of it)
# ---------------------------------------------------------------------------------------------

def ellipsoid(X, Y, Z, c: Sequence[float], r: Sequence[float]) -> np.ndarray:
    """Ellipsoid centre ``c``, semi-axes ``r`` (Quilez's bound k0 (k0 - 1) / k1)."""
    px, py, pz = (X - np.float32(c[0])), (Y - np.float32(c[1])), (Z - np.float32(c[2]))
    rx, ry, rz = (np.float32(v) for v in r)
    k0 = np.sqrt((px / rx) ** 2 + (py / ry) ** 2 + (pz / rz) ** 2)
    k1 = np.sqrt((px / (rx * rx)) ** 2 + (py / (ry * ry)) ** 2 + (pz / (rz * rz)) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, np.float32(1e-6))


def ellipse2d(U, V, r: Sequence[float]) -> np.ndarray:
    """Infinite elliptic cylinder: ``U, V`` are offsets from the axis, ``r`` the two semi-axes."""
    ru, rv = np.float32(r[0]), np.float32(r[1])
    k0 = np.sqrt((U / ru) ** 2 + (V / rv) ** 2)
    k1 = np.sqrt((U / (ru * ru)) ** 2 + (V / (rv * rv)) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, np.float32(1e-6))


def capsule(X, Y, Z, a: Sequence[float], b: Sequence[float], r: float) -> np.ndarray:
    """Segment ``a``-``b`` swept by a sphere of radius ``r``."""
    ba = np.asarray(b, np.float32) - np.asarray(a, np.float32)
    pax, pay, paz = X - np.float32(a[0]), Y - np.float32(a[1]), Z - np.float32(a[2])
    h = np.clip((pax * ba[0] + pay * ba[1] + paz * ba[2]) / np.float32(ba @ ba), 0.0, 1.0)
    return np.sqrt((pax - ba[0] * h) ** 2 + (pay - ba[1] * h) ** 2 + (paz - ba[2] * h) ** 2) - np.float32(r)


def smin(a, b, k: float) -> np.ndarray:
    """Smooth union (polynomial smooth minimum, blend width ``k`` mm)."""
    k = np.float32(k)
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def smax(a, b, k: float) -> np.ndarray:
    """Smooth intersection."""
    return -smin(-a, -b, k)


def smoothstep(e0: float, e1: float, x) -> np.ndarray:
    t = np.clip((x - np.float32(e0)) / np.float32(e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def union_into(target: np.ndarray, outer: Block, inner: Block | None, sdf: np.ndarray, k: float) -> None:
    """Smooth-union ``sdf`` (evaluated on ``inner``) into ``target`` (an SDF array over ``outer``)."""
    if inner is None:
        return
    sl = outer.rel(inner)
    target[sl] = smin(target[sl], sdf, k)


def box_of(c: Sequence[float], r: Sequence[float], margin: float) -> tuple[tuple, tuple]:
    """Bounding box (lo, hi) of an ellipsoid-like shape plus ``margin`` mm."""
    return (tuple(ci - ri - margin for ci, ri in zip(c, r)), tuple(ci + ri + margin for ci, ri in zip(c, r)))


def seg_box(a: Sequence[float], b: Sequence[float], r: float) -> tuple[tuple, tuple]:
    return (tuple(min(p, q) - r for p, q in zip(a, b)), tuple(max(p, q) + r for p, q in zip(a, b)))


class WaveField:
    """A smooth random field of plane waves in random directions (not separable, so its level sets
    are curved sheets rather than the axis-aligned grid of :class:`SmoothField`); standard
    deviation ``amplitude``. Used for thin sheets such as intermuscular fat septa."""

    def __init__(self, rng: np.random.Generator, amplitude: float, wl_min: float = 30.0,
                 wl_max: float = 90.0, terms: int = 3) -> None:
        v = rng.standard_normal((terms, 3))
        k = 2.0 * np.pi / rng.uniform(wl_min, wl_max, size=terms)
        self.w = (v / np.linalg.norm(v, axis=1, keepdims=True) * k[:, None]).astype(np.float32)
        self.phase = rng.uniform(0.0, 2.0 * np.pi, size=terms).astype(np.float32)
        self.a = np.float32(amplitude * np.sqrt(2.0 / terms))

    def __call__(self, X, Y, Z) -> np.ndarray:
        out = None
        for (wx, wy, wz), ph in zip(self.w, self.phase):
            term = np.sin((wx * X + wy * Y) + (wz * Z + ph))
            out = term if out is None else out + term
        return self.a * out


class SmoothField:
    """A smooth random scalar field: a sum of products of 1D sinusoids (separable, so cheap).

    ``amplitude`` is the field's standard deviation (in the caller's units); wavelengths are drawn in
    ``[wl_min, wl_max]`` mm. Deterministic given the generator's state.
    """

    def __init__(self, rng: np.random.Generator, amplitude: float, wl_min: float = 30.0,
                 wl_max: float = 120.0, terms: int = 4) -> None:
        self.w = (2.0 * np.pi / rng.uniform(wl_min, wl_max, size=(terms, 3))).astype(np.float32)
        self.phase = rng.uniform(0.0, 2.0 * np.pi, size=(terms, 3)).astype(np.float32)
        # E[(sin sin sin)^2] = 1/8, so a_i ~ N(0, 1) scaled to the requested overall standard deviation.
        a = rng.standard_normal(terms)
        self.a = (a * amplitude / np.sqrt(np.sum(a * a) / 8.0 + 1e-9)).astype(np.float32)

    def __call__(self, X, Y, Z) -> np.ndarray:
        out = None
        for (wx, wy, wz), (px, py, pz), a in zip(self.w, self.phase, self.a):
            term = (a * np.sin(wx * X + px)) * np.sin(wy * Y + py) * np.sin(wz * Z + pz)
            out = term if out is None else out + term
        return out
