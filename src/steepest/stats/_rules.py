"""Per-layer rules for the sum of squared per-example gradients, computed inside backward.

Every rule receives what a module saw in its forward pass, the gradient of the loss with
respect to its output and a factor ``scale2``, and returns ``scale2 * sum_i G_i^2`` for each of
the module's parameters, ``G_i`` being example ``i``'s part of the loss gradient (the caller
chooses ``scale2`` to undo the loss's reduction; rules apply it to the smallest tensor).
Rules never keep a per-example gradient for longer than one chunk of examples; the Linear rule
on ``(N, in)`` inputs never forms one at all:

    sum_i (delta_i x_i^T)^2 = (delta^2)^T (x^2)                      (one extra matmul)

Where an example contributes several positions (a sequence through Linear, the patches of a
convolution) the per-example gradient is a *sum over positions*, ``G_i = sum_t delta_it x_it^T``,
whose square is not the sum of squares, so the rule forms ``G_i`` for a chunk of examples with a
batched matmul, squares it and adds it up. Chunks are sized by ``chunk_numel`` (elements of
per-example gradients alive at once) so that memory stays bounded and the work stays in cache.

A rule may return a :class:`Gemm` instead of a tensor: the Linear weight's product left
unevaluated, so that the caller forms it once the parameter's gradient ``g`` is known and the
same GEMM also subtracts ``c g^2`` (its ``beta`` term), with no separate pass over the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

__all__ = ["RULES", "Gemm", "RuleOptions", "check_batched", "fallback_sumsq", "rule_for"]


@dataclass(frozen=True)
class RuleOptions:
    """``chunk_numel``: at most this many per-example-gradient elements alive at once."""

    chunk_numel: int = 2**19


class Gemm:
    """``alpha * (d2^T x^2)`` with ``d2 = delta^2`` of shape ``(N, out)`` and ``x`` of shape
    ``(N, in)``: a Linear weight's scaled sum of squared per-example gradients, not yet formed."""

    __slots__ = ("alpha", "d2", "x")  # made once per layer and backward: keep it light

    def __init__(self, d2: Tensor, x: Tensor, alpha: float) -> None:
        self.d2, self.x, self.alpha = d2, x, alpha

    def minus_square(self, g: Tensor, c: float) -> Tensor:
        """``alpha * d2^T x^2 - c g^2`` in a new tensor: one elementwise pass for ``g^2``, then
        one GEMM whose epilogue adds it (beta = -c), instead of a GEMM and two passes."""
        out = g.square()
        return out.addmm_(self.d2.t(), self.x.square(), beta=-c, alpha=self.alpha)


Rule = Callable[[nn.Module, tuple[Any, ...], Tensor, float, RuleOptions],
                dict[str, "Tensor | Gemm"]]


def _chunks(n: int, per_example: int, chunk_numel: int) -> list[tuple[int, int]]:
    size = max(1, min(n, chunk_numel // max(1, per_example)))
    return [(s, min(n, s + size)) for s in range(0, n, size)]


# ------------------------------------------------------------------ Linear
def linear_sumsq(module: nn.Linear, args: tuple[Any, ...], grad_out: Tensor, scale2: float,
                 opts: RuleOptions) -> dict[str, Tensor | Gemm]:
    """``nn.Linear``: inputs ``(N, in)`` or ``(N, *, in)`` (positions summed per example)."""
    x = args[0]
    n = x.shape[0]
    out: dict[str, Tensor | Gemm] = {}
    if x.dim() == 2:
        d2 = grad_out.square()
        if module.weight.requires_grad:
            out["weight"] = Gemm(d2, x, scale2)  # scale2 rides in the GEMM's alpha
        if module.bias is not None and module.bias.requires_grad:
            out["bias"] = d2.sum(0).mul_(scale2)
        return out
    # (N, T..., in): per-example gradient G_i = sum_t delta_it x_it^T.
    x3 = x.reshape(n, -1, x.shape[-1])
    d3 = grad_out.reshape(n, -1, grad_out.shape[-1])
    if module.weight.requires_grad:
        o, k = d3.shape[-1], x3.shape[-1]
        acc = torch.zeros(k, o, dtype=d3.dtype, device=d3.device)
        for s, e in _chunks(n, o * k, opts.chunk_numel):
            g = torch.bmm(x3[s:e].transpose(1, 2), d3[s:e])  # (c, in, out): G_i^T
            acc.add_(g.square_().sum(0))
        out["weight"] = acc.t().contiguous().mul_(scale2)
    if module.bias is not None and module.bias.requires_grad:
        out["bias"] = d3.sum(1).square_().sum(0).mul_(scale2)
    return out


# ------------------------------------------------------------------ Conv1d / Conv2d
def _padded_2d(module: nn.Conv1d | nn.Conv2d, x: Tensor) -> tuple[Tensor, tuple, tuple, tuple]:
    """``x`` padded exactly as the module pads it (zeros, reflect, replicate, circular; 'same'
    possibly asymmetric), as ``(N, C, H, W)``, with 2-D kernel size, dilation and stride."""
    pads = module._reversed_padding_repeated_twice
    if any(pads):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pads, mode=mode)
    kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
    if isinstance(module, nn.Conv1d):  # (N, C, L) as (N, C, 1, L)
        x = x.unsqueeze(2)
        kernel, dilation, stride = (1, *kernel), (1, *dilation), (1, *stride)
    return x, tuple(kernel), tuple(dilation), tuple(stride)


def _patches(x: Tensor, kernel: tuple, dilation: tuple, stride: tuple) -> Tensor:
    """im2col of an already padded ``(c, C, H, W)`` tensor: ``(c, C*kh*kw, Ho*Wo)``, in the
    order of ``F.unfold`` (and of the flattened weight). A strided view copied once, which is
    several times faster than ``F.unfold`` on CPU."""
    (kh, kw), (dh, dw), (sh, sw) = kernel, dilation, stride
    v = x.unfold(2, (kh - 1) * dh + 1, sh).unfold(3, (kw - 1) * dw + 1, sw)
    if dh > 1 or dw > 1:
        v = v[..., ::dh, ::dw]
    c, ch, ho, wo = v.shape[:4]
    return v.permute(0, 1, 4, 5, 2, 3).reshape(c, ch * kh * kw, ho * wo)


def conv_sumsq(module: nn.Conv1d | nn.Conv2d, args: tuple[Any, ...], grad_out: Tensor,
               scale2: float, opts: RuleOptions) -> dict[str, Tensor | Gemm]:
    """``nn.Conv1d``/``nn.Conv2d`` (any stride, padding, padding mode, dilation, groups).

    A convolution is a Linear layer applied to the input's patches (im2col), so the
    per-example weight gradient is ``G_i = sum_p delta_ip u_ip^T`` over output positions ``p``
    (per group); patches are formed one chunk of examples at a time.
    """
    x = args[0]
    n = x.shape[0]
    groups = module.groups
    o = module.out_channels
    og = o // groups
    d = grad_out.reshape(n, o, -1)  # (N, O, P)
    out: dict[str, Tensor | Gemm] = {}
    if module.weight.requires_grad:
        x4, kernel, dilation, stride = _padded_2d(module, x)
        kg = module.weight[0].numel()  # (C/groups) * prod(kernel)
        acc = torch.zeros(groups, kg, og, dtype=d.dtype, device=d.device)
        for s, e in _chunks(n, o * kg, opts.chunk_numel):
            u = _patches(x4[s:e], kernel, dilation, stride)
            c, p = e - s, u.shape[-1]
            u = u.view(c * groups, kg, p)
            dc = d[s:e].reshape(c * groups, og, p)
            g = torch.bmm(u, dc.transpose(1, 2))  # (c*groups, kg, og): G_i^T per group
            acc.add_(g.square_().view(c, groups, kg, og).sum(0))
        out["weight"] = acc.transpose(1, 2).mul(scale2).reshape(module.weight.shape)
    if module.bias is not None and module.bias.requires_grad:
        out["bias"] = d.sum(2).square_().sum(0).mul_(scale2)
    return out


# ------------------------------------------------------------------ Embedding
def embedding_sumsq(module: nn.Embedding, args: tuple[Any, ...], grad_out: Tensor,
                    scale2: float, opts: RuleOptions) -> dict[str, Tensor | Gemm]:
    """``nn.Embedding``: the per-example gradient is a sparse scatter of output gradients
    into the rows an example looks up; rows repeated within an example add up first."""
    del opts  # no matmul, no per-example tensor beyond the looked-up rows
    if module.scale_grad_by_freq:
        raise ValueError(
            "Embedding(scale_grad_by_freq=True) scales gradients by word counts over the whole "
            "batch, which couples the examples; per-example gradients are undefined"
        )
    idx = args[0]
    n = idx.shape[0]
    num, dim = module.weight.shape
    flat_idx = idx.reshape(n, -1).long()
    d = grad_out.reshape(n, -1, dim)
    example = torch.arange(n, device=idx.device).unsqueeze(1).expand_as(flat_idx)
    keys = (example * num + flat_idx).reshape(-1)
    rows = d.reshape(-1, dim)
    if module.padding_idx is not None:  # F.embedding gives padding_idx no gradient
        keep = flat_idx.reshape(-1) != module.padding_idx
        keys, rows = keys[keep], rows[keep]
    uniq, inverse = torch.unique(keys, return_inverse=True)
    per_example_rows = torch.zeros(uniq.numel(), dim, dtype=d.dtype, device=d.device)
    per_example_rows.index_add_(0, inverse, rows)
    acc = torch.zeros(num, dim, dtype=d.dtype, device=d.device)
    acc.index_add_(0, uniq % num, per_example_rows.square_().mul_(scale2))
    return {"weight": acc}


def check_batched(module: nn.Module, x: Tensor) -> None:
    """Raise ``ValueError`` if a fast-rule module got an input without a batch dimension."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        ok, shape = x.dim() == (4 if isinstance(module, nn.Conv2d) else 3), "(N, C, ...)"
    elif isinstance(module, nn.Embedding):
        ok, shape = x.dim() >= 1, "(N, ...)"
    else:
        ok, shape = x.dim() >= 2, "(N, ..., in)"
    if not ok:
        raise ValueError(
            f"{type(module).__name__} got an input without a batch dimension (shape "
            f"{tuple(x.shape)}); per-example statistics need inputs of shape {shape}"
        )


def _plain_forward(module: nn.Module, cls: type[nn.Module]) -> bool:
    """True when ``module`` runs ``cls.forward`` (a subclass overriding it is not trusted)."""
    return isinstance(module, cls) and type(module).forward is cls.forward


_M = TypeVar("_M", bound=nn.Module)


def _entry(
    cls: type[_M],
    rule: Callable[[_M, tuple[Any, ...], Tensor, float, RuleOptions], dict[str, Tensor | Gemm]],
) -> tuple[type[nn.Module], Rule]:
    """A ``RULES`` entry; the type variable checks that ``rule`` accepts ``cls``. Widening it to
    :data:`Rule` is sound because :func:`rule_for` hands it only instances of ``cls``."""
    return cls, cast(Rule, rule)


RULES: dict[type[nn.Module], Rule] = dict([
    _entry(nn.Linear, linear_sumsq),
    _entry(nn.Conv1d, conv_sumsq),
    _entry(nn.Conv2d, conv_sumsq),
    _entry(nn.Embedding, embedding_sumsq),
])


def rule_for(module: nn.Module) -> Rule | None:
    """The fast rule for ``module``'s own parameters, or ``None`` when there is none."""
    for cls, rule in RULES.items():
        if _plain_forward(module, cls):
            return rule
    return None


# ------------------------------------------------------------------ torch.func fallback
def fallback_sumsq(
    module: nn.Module,
    params: dict[str, Tensor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    grads: Sequence[Tensor | None],
    n: int,
    opts: RuleOptions,
) -> dict[str, Tensor]:
    """Any module whose examples do not interact: per-example vector-Jacobian products
    ``grad_theta <delta_i, module(x_i; theta)>`` by ``torch.func.vmap(grad(...))``.

    ``params`` maps names (relative to ``module``) to detached parameter values; ``grads`` are
    the loss gradients with respect to the module's tensor outputs, in ``tree_flatten`` order
    (``None`` where an output did not reach the loss). Tensor arguments whose first
    dimension is ``n`` are split into examples, everything else is shared by all examples.
    """
    from torch.func import functional_call, grad, vmap

    flat, spec = tree_flatten((args, kwargs))
    batched = [i for i, a in enumerate(flat) if isinstance(a, Tensor) and a.dim() > 0
               and a.shape[0] == n]
    used = [j for j, g in enumerate(grads) if g is not None]
    if not used:
        return {name: torch.zeros_like(p) for name, p in params.items()}

    def vjp_i(pdict: dict[str, Tensor], xs: list[Tensor], gs: list[Tensor]) -> Tensor:
        leaves = list(flat)
        for i, xi in zip(batched, xs):
            leaves[i] = xi.unsqueeze(0)  # keep a batch of one: layers expect batched input
        a, kw = tree_unflatten(leaves, spec)
        out_leaves = [t for t in tree_flatten(functional_call(module, pdict, a, kw))[0]
                      if isinstance(t, Tensor)]
        total = out_leaves[used[0]].new_zeros(())
        for j, gj in zip(used, gs):
            total = total + (out_leaves[j] * gj.unsqueeze(0)).sum()
        return total

    per_example = vmap(grad(vjp_i), in_dims=(None, 0, 0), randomness="error")
    acc = {name: torch.zeros_like(p) for name, p in params.items()}
    size = sum(p.numel() for p in params.values())
    xs_all = [flat[i] for i in batched]
    gs_all = [g for g in grads if g is not None]  # grads[j] for j in used, narrowed
    for s, e in _chunks(n, size, opts.chunk_numel):
        pe = per_example(params, [x[s:e] for x in xs_all], [g[s:e] for g in gs_all])
        for name, g in pe.items():
            acc[name].add_(g.square_().sum(0))
    return acc
