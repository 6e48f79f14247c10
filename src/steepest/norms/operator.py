"""The operator (per-matrix) norms of spectral (Muon), column and row norms (Scion),
and the l1 -> l_inf norm, with their shape-scaled forms (modula)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from steepest.backend import policy as _policy
from steepest.backend.ops import LoopOps, is_dtensor
from steepest.norms.polar import (
    _NS_DTYPES,
    NS_COEFFICIENTS,
    NS_EPS,
    NS_STEPS,
    SHAPE_SCALES,
    _as_matrix,
    newton_schulz,
    polar_svd,
)
from steepest.norms.protocol import MODES, Factored, Norm, _fresh, register_norm

__all__ = ["ColNorm", "L1ToLinf", "OperatorNorm", "RowNorm", "Spectral"]


class OperatorNorm(Norm):
    """Base of the per-matrix (operator) norms: each tensor is a matrix (:func:`_as_matrix`),
    with a norm ``c * N(M)`` where ``N`` is the base operator norm and ``c > 0`` a shape factor.

    A subclass gives, for one matrix, the base LMO direction ``u`` (``N(u) = 1`` and
    ``<M, u> = N_*(M)``, 0 for a zero matrix) and the base dual ``N_*(M)``. Then, for each tensor
    (``scope="per_tensor"``): dual ``N_*(M) / c``, LMO ``u / c``, sharp ``N_*(M) u / c^2``.

    ``scope="global"`` (the modular norm of Bernstein & Newhouse / modula): the group's norm is
    the max over tensors of ``c_i N(M_i)``, its dual the sum ``D = sum_i N_*(M_i) / c_i``, and the
    sharp ``D u_i / c_i`` per tensor. For max-type norms (all here) this is the norm of the
    concatenated parameter vector under the product of the per-matrix geometries, and Lemma 4
    holds: ``<z, z#> = sum_i (D/c_i) N_*(M_i) = D^2``, ``||z#|| = max_i c_i (D/c_i) N(u_i) = D``.

    ``scale``: ``"none"`` (``c = 1``), ``"shape"`` (the factor each subclass documents, chosen
    by the anchors so that learning rates transfer across widths), or a number ``c > 0``.
    """

    name = "operator"
    #: The shape factor's reading, for the docs.
    shape_rule = ""

    def __init__(self, scale: str | float = "none", transpose: bool = False) -> None:
        if isinstance(scale, bool) or not (
            scale in SHAPE_SCALES or (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0)
        ):
            raise ValueError(f"scale must be one of {SHAPE_SCALES} or a finite number > 0, got {scale!r}")
        if not isinstance(transpose, bool):
            raise ValueError(f"transpose must be a bool, got {transpose!r}")
        self.scale = scale if isinstance(scale, str) else float(scale)
        self.transpose = transpose

    def to_spec(self) -> dict[str, Any]:
        return {"name": self.name, "scale": self.scale, "transpose": self.transpose}

    # ---- what subclasses implement ---------------------------------------------------------
    def _shape_factor(self, rows: int, cols: int) -> float:
        return 1.0

    def _base_norm(self, m: Tensor) -> Tensor:
        raise NotImplementedError

    def _base_lmo(self, m: Tensor, need_dual: bool) -> tuple[Tensor, Tensor | None]:
        """``(u, N_*(M))`` for one non-empty matrix; the dual may be ``None`` if not needed."""
        raise NotImplementedError

    def _base_lmo_into(self, m: Tensor, need_dual: bool) -> tuple[Tensor, Tensor | None]:
        """As :meth:`_base_lmo`, but ``m`` is the caller's temporary and may be overwritten (the
        subclasses here build ``u`` in its storage: no second matrix-sized tensor)."""
        return self._base_lmo(m, need_dual)

    #: Whether :meth:`_base_dual` is a few reductions (no polar factor needed): then the
    #: optimizers stream tensor by tensor in every mode and scope.
    _cheap_dual = False

    def _base_dual(self, m: Tensor) -> Tensor:
        """``N_*(M)`` alone (used where :attr:`_cheap_dual`)."""
        d = self._base_lmo(m, True)[1]
        assert d is not None
        return d

    def _base_dual_into(self, m: Tensor) -> Tensor:
        """As :meth:`_base_dual`, but ``m`` is a temporary that may be overwritten."""
        return self._base_dual(m)

    # ---- machinery -------------------------------------------------------------------------
    def factor_of(self, x: Tensor) -> float:
        """The constant ``c`` of tensor ``x`` (1 for ``scale="none"``)."""
        if self.scale == "none":
            return 1.0
        if self.scale == "shape":
            rows, cols = _as_matrix(x, self.transpose).shape
            return self._shape_factor(max(rows, 1), max(cols, 1))
        return float(self.scale)

    def _consts(self, xs: list[Tensor]) -> Tensor:
        dtype = xs[0].dtype if xs and xs[0].is_floating_point() else torch.float64
        c = torch.tensor([self.factor_of(x) for x in xs], dtype=dtype, device=xs[0].device if xs else None)
        if xs and is_dtensor(xs[0]):
            # FSDP2: the duals are replicated DTensor scalars, which refuse plain tensors.
            from torch.distributed.tensor import DTensor, Replicate

            mesh = xs[0].device_mesh
            c = DTensor.from_local(c, mesh, [Replicate()] * mesh.ndim, run_check=False)
        return c

    def _units(
        self, xs: list[Tensor], need_dual: bool, owned: bool = False
    ) -> tuple[list[Tensor], Tensor | None]:
        """Base LMOs (and duals) per tensor; ``owned``: ``xs`` are the caller's temporaries, which
        the units may overwrite (peak memory: no second tensor of each)."""
        units, duals = [], []
        for x in xs:
            if x.numel() == 0:
                units.append(torch.zeros_like(x))
                duals.append(x.new_zeros(()))
                continue
            m = _as_matrix(x, self.transpose)
            # A DTensor's in-place ops cannot change its placement (a matmul's result is
            # replicated): sharded inputs take the out-of-place path.
            into = owned and not is_dtensor(m)
            u, d = self._base_lmo_into(m, need_dual) if into else self._base_lmo(m, need_dual)
            u = u.to(x.dtype)
            u = (u.T if self.transpose else u).reshape(x.shape)
            if is_dtensor(x) and is_dtensor(u) and u.placements != x.placements:
                # FSDP2: matmuls return the unit replicated; in x's placement (this rank's shard)
                # the optimizers' in-place updates of the sharded parameter accept it.
                u = u.redistribute(x.device_mesh, x.placements)
            units.append(u)
            if need_dual:
                assert d is not None  # _base_lmo returns the dual when asked for it
                duals.append(d.to(x.dtype))
        return units, (_stack_scalars(duals, xs) if need_dual else None)

    def _primal(self, xs: list[Tensor], ops: type[LoopOps], per_tensor: bool) -> Tensor:
        norms = _stack_scalars(
            [self._base_norm(_as_matrix(x, self.transpose)) if x.numel() else x.new_zeros(()) for x in xs], xs
        ) * self._consts(xs)
        return norms if per_tensor else norms.max().expand(len(xs))

    def _coefficients(self, duals: Tensor, c: Tensor, per_tensor: bool) -> tuple[Tensor, Tensor]:
        """(scale, dual) of :class:`Factored` from base duals and shape factors."""
        if per_tensor:
            return duals / c**2, duals / c
        total = (duals / c).sum()
        return total / c, total.expand(len(c))

    def _factor(self, xs: list[Tensor], ops: type[LoopOps], per_tensor: bool) -> Factored:
        units, duals = self._units(xs, True)
        assert duals is not None
        scale, dual = self._coefficients(duals, self._consts(xs), per_tensor)
        return Factored(units, scale, dual)

    def _direction(
        self,
        xs: list[Tensor],
        ops: type[LoopOps],
        mode: str,
        beta: float,
        per_tensor: bool,
        owned: bool = False,
    ) -> list[Tensor]:
        """As :meth:`Norm._direction`; ``owned``: ``xs`` are the caller's temporaries and the
        directions may be built in their storage (one matrix-sized tensor less per tensor)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        keep = (lambda us: us) if owned else (lambda us: _fresh(us, xs))
        if mode in ("unscaled", "normalized"):
            # No dual needed: unscaled is u (Muon's polar factor), normalized is u / c.
            units, _ = self._units(xs, False, owned)
            if mode == "unscaled" or self.scale == "none":
                return keep(units)
            return ops.mul_(keep(units), list((1.0 / self._consts(xs)).unbind(0)))
        # Spectral's dual <M, NS(M)> needs M after NS(M) is made: no overwriting then.
        units, duals = self._units(xs, True, owned and self._cheap_dual)
        assert duals is not None
        scale, dual = self._coefficients(duals, self._consts(xs), per_tensor)
        coefs = Factored(units, scale, dual).coefficients(mode, beta)
        return ops.mul_(keep(units), list(coefs.unbind(0)))

    def _post(
        self, xs: list[Tensor], mode: str, beta: float, per_tensor: bool, duals: Tensor | None = None
    ) -> Tensor | None:
        """Per-tensor coefficients of the units in ``mode`` computed without the units (``None``:
        1), or raise :class:`LookupError` if they need the units (Spectral's dual). ``duals``:
        the base duals of ``xs`` if known (then ``xs`` only give the shapes)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "unscaled" or (mode == "normalized" and self.scale == "none"):
            return None
        c = self._consts(xs)
        if mode == "normalized":
            return 1.0 / c
        if not self._cheap_dual:
            raise LookupError("the dual needs the units")
        duals = duals if duals is not None else _stack_scalars(
            [self._base_dual(_as_matrix(x, self.transpose)).to(x.dtype) if x.numel() else x.new_zeros(())
             for x in xs], xs
        )
        scale, dual = self._coefficients(duals, c, per_tensor)
        return Factored([], scale, dual).coefficients(mode, beta)

    def plan(
        self, xs: list[Tensor], mode: str, beta: float, per_tensor: bool
    ) -> tuple[Tensor | list[Tensor] | None, Tensor | None] | None:
        # direction_i = unit_i * post_i where post needs no unit: the loop path of the optimizers
        # then streams one tensor at a time (see Norm.plan), each unit freed before the next.
        try:
            return None, self._post(xs, mode, beta, per_tensor)
        except LookupError:
            return None

    pointwise_map = False  # the map of a matrix (a polar factor, column scaling)

    def map(self, x: Tensor) -> Tensor:
        """The base LMO of one tensor as a matrix (the polar factor for Spectral): a per-tensor
        map, not an elementwise one (:meth:`elementwise` is False in every mode)."""
        return self._units([x], False)[0][0]

    def map_(self, x: Tensor) -> Tensor:
        return self._units([x], False, owned=True)[0][0]

    def map_all(
        self, xs: list[Tensor], pre: list[Any] | None = None, ops: type[LoopOps] = LoopOps, *,
        owned: bool = False,
    ) -> list[Tensor]:
        src = xs if pre is None else [x / d for x, d in zip(xs, pre)]
        return self._units(src, False, owned=owned or pre is not None)[0]

    def elementwise(self, mode: str) -> bool:
        return False

    def couples(self, mode: str) -> bool:
        return mode not in ("unscaled", "normalized")  # u and u / c are per tensor

    @property
    def has_partial(self) -> bool:  # type: ignore[override]
        return self._cheap_dual

    def partial(self, x: Tensor, owned: bool = False) -> Tensor | None:
        # The base dual N_*(M) where it is a few reductions (not Spectral's <M, NS(M)>).
        if not self._cheap_dual:
            return None
        if x.numel() == 0:
            return x.new_zeros(())
        m = _as_matrix(x, self.transpose)
        return (self._base_dual_into(m) if owned else self._base_dual(m)).to(x.dtype)

    def plan_partials(
        self, partials: Tensor, xs: list[Tensor], mode: str, beta: float, per_tensor: bool
    ) -> tuple[Tensor | None, Tensor | None]:
        return None, self._post(xs, mode, beta, per_tensor, partials)


def _stack_scalars(vals: list[Tensor], xs: list[Tensor]) -> Tensor:
    return torch.stack(vals) if vals else torch.zeros(0)


def _inner(a: Tensor, b: Tensor) -> Tensor:
    """``<a, b> = sum_ij a_ij b_ij`` without the ``a * b`` temporary when both are laid out alike
    (a dot product of their flat storage; the transposed layouts of the tall case included)."""
    if not is_dtensor(a) and a.shape == b.shape and a.dtype == b.dtype:
        for x, y in ((a, b), (a.T, b.T)):
            if x.is_contiguous() and y.is_contiguous():
                return torch.dot(x.reshape(-1), y.reshape(-1))
    return (a * b).sum()


def _absmax_along(m: Tensor, dim: int) -> Tensor:
    """``max |m|`` along ``dim`` (keepdim) without an ``|m|`` temporary: ``max(amax, -amin)``
    (two plain reductions; ``vector_norm(m, inf, dim)`` was 5x slower on CPU, torch 2.13)."""
    if m.is_complex():
        return torch.linalg.vector_norm(m, math.inf, dim=dim, keepdim=True)
    if is_dtensor(m):  # a partial (per-shard) min cannot be negated in place
        return torch.maximum(m.amax(dim=dim, keepdim=True), -m.amin(dim=dim, keepdim=True))
    return torch.maximum(m.amax(dim=dim, keepdim=True), m.amin(dim=dim, keepdim=True).neg_())


def _l2_along(m: Tensor, dim: int) -> Tensor:
    """``||m||_2`` along ``dim`` (keepdim) of a matrix whose entries are at most 1 in modulus (no
    overflow). ``vector_norm`` over the strided dim 0 of a row-major matrix is ~10x slower than a
    sum over it on CPU (torch 2.13: 7 ms against 0.7 ms at 1024 x 1024), so there the squares are
    summed a block of rows at a time, through one stream chunk of scratch: for matrices of at
    least 8 chunks (2 MB in float32), so that the scratch adds at most 1/8 of the matrix."""
    chunk = _policy.stream_chunk()
    if not (dim == 0 and m.dim() == 2 and m.is_contiguous() and m.numel() >= 8 * chunk and m.size(0) > 1
            and m.device.type == "cpu" and m.is_floating_point() and not is_dtensor(m)
            and not _policy.compiling()):
        return torch.linalg.vector_norm(m, dim=dim, keepdim=True)
    rows, cols = m.shape
    height = max(1, chunk // max(cols, 1))
    scratch = m.new_empty(min(height, rows) * cols)
    acc = None
    for i in range(0, rows, height):
        block = m[i : i + height]
        sq = torch.mul(block, block, out=scratch[: block.numel()].view(block.shape))
        part = sq.sum(dim=0, keepdim=True)
        acc = part if acc is None else acc.add_(part)
    assert acc is not None
    return acc.sqrt_()


@register_norm
class Spectral(OperatorNorm):
    """The spectral norm ``sigma_max(M)`` of each matrix ([BN24]; modula;
    docs/operator_norms.md): dual = nuclear norm ``sum_i sigma_i``, sharp = ``||M||_nuc U V^T``, LMO (unit
    direction) = ``U V^T`` for ``M = U S V^T``. Steepest descent under it with Nesterov momentum
    and the polar factor alone (``mode="unscaled"``) is Muon (:class:`steepest.Muon`).

    Args:
        polar: ``"svd"`` (exact, the reference) or ``"newton_schulz"`` (:func:`newton_schulz`;
            approximate: its singular values are not all 1, so Lemma 4 holds only roughly, and the
            dual is estimated as ``<M, NS(M)>``, which is the nuclear norm when ``NS(M) = U V^T``).
        ns_coefficients, ns_steps, ns_eps: the iteration's ``(a, b, c)``, step count and the
            floor on ``||M||_F``; defaults are those of ``torch.optim.Muon``.
        ns_dtype: ``"auto"`` (bfloat16 on CUDA, as torch's Muon; the tensor's own dtype on CPU,
            for accuracy), ``"float32"``, ``"float64"`` or ``"bfloat16"`` (always, as
            ``torch.optim.Muon`` does; on CPUs with AMX-BF16 it is 4-6x faster than float32 for
            256 x 1024 and larger matrices, see benchmarks/spectral.py).
        scale: ``"shape"`` makes the norm the RMS->RMS operator norm
            ``sqrt(fan_in/fan_out) sigma_max`` (modula's ``Linear``, Scion's ``Spectral``), whose
            LMO is ``sqrt(fan_out/fan_in) U V^T``.
        transpose: take the norm of ``M^T`` (for weights stored ``in x out``, e.g. embeddings).

    Conv kernels are flattened to ``out x (in * kh * kw)``; a vector is a column (its spectral
    norm is its l2 norm, its polar factor ``v/||v||_2``).
    """

    name = "spectral"
    matrix_only = True
    shape_rule = "sqrt(fan_in / fan_out) (RMS -> RMS)"

    def __init__(
        self,
        polar: str = "svd",
        ns_coefficients: Sequence[float] = NS_COEFFICIENTS,
        ns_steps: int = NS_STEPS,
        ns_eps: float = NS_EPS,
        ns_dtype: str = "auto",
        scale: str | float = "none",
        transpose: bool = False,
    ) -> None:
        super().__init__(scale, transpose)
        if polar not in ("svd", "newton_schulz"):
            raise ValueError(f"polar must be 'svd' or 'newton_schulz', got {polar!r}")
        coeffs = tuple(ns_coefficients) if isinstance(ns_coefficients, (tuple, list)) else ()
        if len(coeffs) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in coeffs
        ):
            raise ValueError(f"ns_coefficients must be three finite numbers (a, b, c), got {ns_coefficients!r}")
        if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or not 1 <= ns_steps < 100:
            raise ValueError(f"ns_steps must be an integer in [1, 100), got {ns_steps!r}")
        if not isinstance(ns_eps, (int, float)) or not math.isfinite(ns_eps) or ns_eps <= 0:
            raise ValueError(f"ns_eps must be a finite number > 0, got {ns_eps!r}")
        if ns_dtype not in _NS_DTYPES:
            raise ValueError(f"ns_dtype must be one of {tuple(_NS_DTYPES)}, got {ns_dtype!r}")
        self.polar = polar
        self.ns_coefficients = tuple(float(v) for v in coeffs)
        self.ns_steps = ns_steps
        self.ns_eps = float(ns_eps)
        self.ns_dtype = ns_dtype

    def to_spec(self) -> dict[str, Any]:
        return {
            **super().to_spec(),
            "polar": self.polar,
            "ns_coefficients": self.ns_coefficients,
            "ns_steps": self.ns_steps,
            "ns_eps": self.ns_eps,
            "ns_dtype": self.ns_dtype,
        }

    def _shape_factor(self, rows: int, cols: int) -> float:
        return math.sqrt(cols / rows)

    def _base_norm(self, m: Tensor) -> Tensor:
        return torch.linalg.matrix_norm(m, ord=2)

    def _compute_dtype(self, m: Tensor) -> torch.dtype:
        if self.ns_dtype == "auto":
            return torch.bfloat16 if m.device.type == "cuda" else m.dtype
        return _NS_DTYPES[self.ns_dtype]  # type: ignore[return-value]

    def polar_factor(self, m: Tensor, overwrite: bool = False) -> Tensor:
        """The (approximate, for Newton-Schulz) polar factor of one matrix, in ``m.dtype``
        (``overwrite``: ``m`` is a temporary that Newton-Schulz may use as its iterate)."""
        if self.polar == "svd":
            return polar_svd(m)[0]
        out = newton_schulz(
            m, self.ns_coefficients, self.ns_steps, self.ns_eps, self._compute_dtype(m), overwrite=overwrite
        )
        if overwrite and out.dtype != m.dtype and not _policy.compiling() and not is_dtensor(m):
            return m.copy_(out)  # back into the caller's temporary: no new tensor of m's dtype
        return out.to(m.dtype)

    def _base_lmo(self, m: Tensor, need_dual: bool) -> tuple[Tensor, Tensor | None]:
        if self.polar == "svd":
            return polar_svd(m)
        u = self.polar_factor(m)
        return u, (_inner(m, u) if need_dual else None)

    def _base_lmo_into(self, m: Tensor, need_dual: bool) -> tuple[Tensor, Tensor | None]:
        if self.polar == "svd" or need_dual:  # the SVD copies its input anyway; <M, NS(M)> needs M
            return self._base_lmo(m, need_dual)
        return self.polar_factor(m, overwrite=True), None


@register_norm
class ColNorm(OperatorNorm):
    """``max_j ||M_:j||_2``, the l1 -> l2 operator norm ([Pethick25], Scion).

    Dual ``sum_j ||M_:j||_2``; sharp: each column normalized, times the dual sum; LMO: each
    nonzero column ``M_:j / ||M_:j||_2``. ``scale="shape"`` gives the l1 -> RMS norm
    ``max_j ||M_:j||_2 / sqrt(fan_out)``, whose LMO has columns of l2 norm ``sqrt(fan_out)``
    (Scion's ``ColNorm``; on a vector, a single column, it is ``g / rms(g)``: Scion's
    ``BiasRMS``). ``transpose=True`` takes columns of ``M^T``: for an embedding table stored
    ``vocab x dim``, each token's vector (Scion's ``ColNorm(transpose=True)``).
    """

    name = "colnorm"
    shape_rule = "1 / sqrt(fan_out) (l1 -> RMS)"
    _dim = 0

    def _shape_factor(self, rows: int, cols: int) -> float:
        return 1.0 / math.sqrt(rows)

    def _norms(self, m: Tensor) -> Tensor:
        """l2 norm of each column (row), scaled by its max |entry| first: squares of tiny entries
        underflow to subnormals and lose digits (hypothesis found a column of 3e-161)."""
        a = _absmax_along(m, self._dim)
        return a * _l2_along(m / torch.where(a > 0, a, 1.0), self._dim)

    def _base_norm(self, m: Tensor) -> Tensor:
        return self._norms(m).max()

    _cheap_dual = True

    def _base_dual(self, m: Tensor) -> Tensor:
        if m.size(self._dim) == 1:  # columns (rows) of one entry: the l1 norm, no temporary
            return torch.linalg.vector_norm(m, 1)
        return self._norms(m).sum()

    def _base_dual_into(self, m: Tensor) -> Tensor:
        return self._lmo(m, m)[1]  # the scaled copy of _norms made in m's storage

    def _base_lmo(self, m: Tensor, need_dual: bool) -> tuple[Tensor, Tensor | None]:
        return self._lmo(m, None)

    def _base_lmo_into(self, m: Tensor, need_dual: bool) -> tuple[Tensor, Tensor | None]:
        return self._lmo(m, m)

    def _lmo(self, m: Tensor, out: Tensor | None) -> tuple[Tensor, Tensor]:
        """Each column (row) over its l2 norm, and the dual (their sum), into ``out`` (which may be
        ``m``) or a fresh tensor: no other matrix-sized temporary. As :meth:`_norms`, the column
        is scaled by its max |entry| first (its squares could underflow), then by the l2 norm of
        the scaled column: ``(M_:j / a_j) / ||M_:j / a_j||_2``, 0 for a zero column."""
        if m.size(self._dim) == 1:
            # One entry per column (row: RowNorm of a vector): M_ij / |M_ij| = sign(M_ij).
            dual = torch.linalg.vector_norm(m, 1)
            return (torch.sign(m) if out is None else torch.sign(m, out=out)), dual
        a = _absmax_along(m, self._dim)
        safe = torch.where(a > 0, a, 1.0)
        scaled = m / safe if out is None else torch.div(m, safe, out=out)
        s = _l2_along(scaled, self._dim)
        # Divide by the norm (inf where 0) rather than multiply by 1/norm, which overflows.
        return scaled.div_(torch.where(s > 0, s, math.inf)), (a * s).sum()


@register_norm
class RowNorm(ColNorm):
    """``max_i ||M_i:||_2``, the l2 -> l_inf operator norm (Scion). Dual
    ``sum_i ||M_i:||_2``; LMO: each nonzero row ``M_i: / ||M_i:||_2``. ``scale="shape"`` gives
    the RMS -> l_inf norm ``sqrt(fan_in) max_i ||M_i:||_2`` (LMO rows of l2 norm
    ``1/sqrt(fan_in)``: Scion's ``RowNorm(normalized=True)``). A vector is a column, so its rows
    are its entries: RowNorm of a vector is its max norm (sign descent)."""

    name = "rownorm"
    shape_rule = "sqrt(fan_in) (RMS -> l_inf)"
    _dim = 1

    def _shape_factor(self, rows: int, cols: int) -> float:
        return math.sqrt(cols)


@register_norm
class L1ToLinf(OperatorNorm):
    """``max_ij |M_ij|``, the l1 -> l_inf operator norm: per tensor it is :class:`Linf` (dual
    ``||M||_1``, LMO ``sign(M)``: sign descent per entry, as for embeddings and output heads).
    ``scale="shape"`` multiplies the norm by ``fan_in``, so the LMO is ``sign(M) / fan_in``
    (Scion's ``Sign(normalized=True)``, which bounds the l_inf -> l_inf norm of the step by 1).
    Global scope is the modular combination (identical to ``Linf`` for ``scale="none"``)."""

    name = "l1_linf"
    shape_rule = "fan_in (Scion's Sign)"

    def _shape_factor(self, rows: int, cols: int) -> float:
        return float(cols)

    def _base_norm(self, m: Tensor) -> Tensor:
        return m.abs().max()

    _cheap_dual = True

    def _base_dual(self, m: Tensor) -> Tensor:
        return torch.linalg.vector_norm(m, 1)  # no |M| temporary

    def _base_lmo(self, m: Tensor, need_dual: bool) -> tuple[Tensor, Tensor | None]:
        return torch.sign(m), (self._base_dual(m) if need_dual else None)

    def _base_lmo_into(self, m: Tensor, need_dual: bool) -> tuple[Tensor, Tensor | None]:
        dual = self._base_dual(m) if need_dual else None  # before M is overwritten
        return torch.sign(m, out=m), dual
