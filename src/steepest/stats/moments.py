"""Per-example gradient moments computed inside the ordinary backward pass.

For a loss that averages ``N`` per-example losses, ``L = 1/N sum_i l_i``, this module gives per
parameter, from one forward and one backward pass,

* the mini-batch gradient ``g = 1/N sum_i g_i`` [Bal21, Eq. 3.28], ``g_i = grad l_i``;
* the elementwise variance of the individual gradients [Bal21, Eq. 3.30]::

      s = 1/(N-1) sum_i (g_i - g)^2

and the scalars ``tr(Sigma) ~= sum ||s||_1``, ``||g||^2`` and the noise-to-signal ratio
``tr(Sigma)/||g||^2`` [Bal21, Eq. 4.9].

Scaling contract (BackPACK and Opacus differ here; ``steepest`` states its own):

* ``g_i`` is the gradient of example ``i``'s own loss ``l_i``, **not** ``g_i/N``. (Opacus'
  ``grad_sample`` is also ``g_i`` for a mean loss; BackPACK's ``grad_batch`` is ``g_i/N``.)
* The variance divides by ``N - 1`` (the unbiased sample variance of Eq. 3.30). BackPACK's
  ``Variance`` divides by ``N`` *and* refers to ``g_i/N`` for a mean loss, so
  ``s = N^3/(N-1) * backpack_variance``.
* ``s`` estimates the per-example covariance diagonal ``diag(Sigma)``. The variance of the
  mini-batch gradient itself is ``Sigma/N``, estimated by ``s/N``. ([Bal21, Eq. B.31] writes
  ``1/N (1/(N-1) sum_i g_i^2 - g^2)``, which is ``s/N + g^2/(N(N-1))``; the text calls it
  unbiased, which holds for ``s/N``. See docs/noise_aware.md.)
* With ``reduction="sum"`` (``L = sum_i l_i``) ``p.grad`` is ``N g`` and the statistics still
  refer to ``g_i`` and ``g``.

The sum of squares is reduced inside backward by module hooks (see :mod:`._rules`), and
``s = (sum_i g_i^2 - N g^2)/(N-1)`` uses the gradient autograd accumulates anyway, so no
per-example gradient of a Linear layer is ever formed. The one-pass formula loses relative
precision where ``s << g^2`` in float32; the result is clamped at zero.

Cost (``benchmarks/gradient_moments.py``): for a Linear layer on ``(N, in)`` inputs the extra
work is one GEMM the size of the weight gradient, ``(delta^2)^T (x^2)``, which also adds
``-N g^2/(N-1)`` in its epilogue (``addmm_`` with ``beta``), and one clamp; it runs in the
parameter's gradient hook, right after autograd made ``g``. The output gradient is taken by a
pre-hook on the node that made the module's output, the cheapest hook autograd offers. The
previous backward's statistics are dropped when the next one starts, so the allocator reuses
their memory instead of mapping fresh pages every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from steepest.stats._rules import (
    Gemm,
    Rule,
    RuleOptions,
    check_batched,
    fallback_sumsq,
    rule_for,
)

__all__ = ["GradientMoments", "GradientMomentsResult", "gradient_moments"]

REDUCTIONS = ("mean", "sum")
UNSUPPORTED = ("error", "fallback")
_LOW_PRECISION = (torch.float16, torch.bfloat16)
# Modules whose parameters are used by the parent's forward, not by their own submodules'
# forward (MultiheadAttention calls F.multi_head_attention_forward with out_proj's weight).
_WHOLE_MODULES: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)


@dataclass(frozen=True)
class GradientMomentsResult:
    """Statistics of one mini-batch of ``batch_size`` examples (scaling: module docstring).

    ``grad`` and ``variance`` map parameter names (as in ``model.named_parameters()``) to
    ``g`` and ``s`` of [Bal21, Eq. 3.28/3.30].
    """

    loss: Tensor | None
    batch_size: int
    grad: dict[str, Tensor]
    variance: dict[str, Tensor]

    @cached_property
    def variance_sum(self) -> float:
        """``tr(Sigma)`` estimated by ``sum_params ||s||_1`` (the input of CABS, Alg. 1)."""
        return _sum_all(self.variance.values(), square=False)

    @cached_property
    def grad_sq_norm(self) -> float:
        """``||g||^2`` of the mini-batch gradient (biased: its mean is ||grad f||^2 +
        tr(Sigma)/N, see :attr:`grad_sq_norm_unbiased`)."""
        return _sum_all(self.grad.values(), square=True)

    @property
    def grad_sq_norm_unbiased(self) -> float:
        """``||g||^2 - tr(Sigma)/N``, an unbiased estimate of ``||grad f||^2`` (Eq. 4.4)."""
        return self.grad_sq_norm - self.variance_sum / self.batch_size

    @property
    def noise_to_signal(self) -> float:
        """``tr(Sigma)/||g||^2`` ([Bal21, Eq. 4.9] with the mini-batch estimates).

        IEEE semantics for a zero gradient: ``inf`` if ``tr(Sigma) > 0``, ``nan`` if both are 0.
        """
        return _ratio(self.variance_sum, self.grad_sq_norm)

    def mean_variance(self) -> dict[str, Tensor]:
        """``s/N``: unbiased elementwise variance of the mini-batch gradient ``g`` itself."""
        return {k: v / self.batch_size for k, v in self.variance.items()}


def _sum_all(tensors: Iterable[Tensor], *, square: bool) -> float:
    """Sum (of squares) over all tensors, accumulated in float64, with one device sync."""
    parts = [torch.linalg.vector_norm(t.detach(), 2, dtype=torch.float64).square() if square
             else t.detach().sum(dtype=torch.float64) for t in tensors]
    return float(torch.stack(parts).sum()) if parts else 0.0


def _ratio(num: float, den: float) -> float:
    if den == 0.0:
        return math.nan if num == 0.0 or math.isnan(num) else math.inf
    return num / den


@dataclass
class _Unit:
    """A module whose parameters get their sum of squares from one rule (or the fallback)."""

    name: str
    module: nn.Module
    params: dict[str, nn.Parameter]  # relative name -> parameter (requires_grad only)
    rule: Rule | None  # None: torch.func fallback


class _Backward:
    """What one backward pass collects."""

    def __init__(self, task: int) -> None:
        self.task = task
        self.sums: dict[nn.Parameter, tuple[Tensor | Gemm, int]] = {}
        self.shared: set[nn.Parameter] = set()
        self.leaf: dict[nn.Parameter, Tensor | None] = {}
        self.done: dict[nn.Parameter, Tensor] = {}
        self.fallback: list[tuple[_Unit, tuple, dict, list[Tensor | None], int]] = []


class GradientMoments:
    """Collect per-example gradient moments from an ordinary ``loss.backward()``.

    Use as a context manager (hooks are attached on enter and removed on exit) or call
    :meth:`attach` / :meth:`remove`::

        with GradientMoments(model) as gm:
            loss = F.cross_entropy(model(x), y)   # mean over the N examples
            loss.backward()
        gm.variance_sum, gm.grad_sq_norm, gm.noise_to_signal, gm.variance["0.weight"]

    After every backward pass each parameter ``p`` that received a gradient carries

    * ``p.grad_var``: the elementwise variance ``s`` of [Bal21, Eq. 3.30] (a tensor shaped and
      typed like ``p``; variance of the *individual* gradients ``g_i``, divided by ``N - 1``);
    * ``p.grad_batch_size``: ``N`` (an ``int``), so ``p.grad_var / p.grad_batch_size``
      estimates the variance of the mini-batch gradient ``p.grad``.

    This is the contract ``MSVAG(variance="minibatch")`` reads. Parameters that got no gradient
    in the latest backward lose stale attributes. ``p.grad`` is left as autograd makes it
    (the mean gradient for a mean loss). Statistics refer to the most recent backward pass.

    Args:
        model: the module whose trainable parameters are tracked. Every example must be
            independent of the others (no BatchNorm in training mode) and the batch must be
            dimension 0 of every module's input.
        unsupported: ``"error"`` (default) raises ``ValueError`` naming any module with
            trainable parameters but no fast rule (fast: ``nn.Linear``, ``nn.Conv1d``,
            ``nn.Conv2d``, ``nn.Embedding``); ``"fallback"`` computes those modules'
            per-example gradients with ``torch.func.vmap(grad(...))`` over their own forward.
        reduction: ``"mean"`` (the loss is ``1/N sum_i l_i``, default) or ``"sum"``.
        chunk_numel: at most this many per-example-gradient elements are alive at once where
            a layer has to form them (convolutions, sequences, fallback).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        unsupported: str = "error",
        reduction: str = "mean",
        chunk_numel: int = 2**19,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if unsupported not in UNSUPPORTED:
            raise ValueError(f"unsupported must be one of {UNSUPPORTED}, got {unsupported!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if isinstance(chunk_numel, bool) or not isinstance(chunk_numel, int) or chunk_numel < 1:
            raise ValueError(f"chunk_numel must be an int >= 1, got {chunk_numel!r}")
        self.model = model
        self.unsupported = unsupported
        self.reduction = reduction
        self.chunk_numel = chunk_numel
        self._opts = RuleOptions(chunk_numel)
        self.enabled = True
        self._names = {p: n for n, p in model.named_parameters()}
        self._units = self._plan()
        self._params = [p for unit in self._units for p in unit.params.values()]
        self._handles: list[Any] = []
        self._bw: _Backward | None = None
        self._computing = False
        self._batch_size: int | None = None
        self._grad: dict[str, Tensor] = {}
        self._variance: dict[str, Tensor] = {}
        self._result: GradientMomentsResult | None = None

    # ------------------------------------------------------------------ planning
    def _plan(self) -> list[_Unit]:
        units: list[_Unit] = []
        owner: dict[nn.Parameter, str] = {}
        whole: list[str] = []
        missing: list[str] = []
        for mname, m in self.model.named_modules():
            if any(mname.startswith(w + ".") for w in whole):
                continue  # parameters already claimed by an enclosing whole-module unit
            if isinstance(m, _WHOLE_MODULES):
                whole.append(mname)
                params = dict(m.named_parameters())
                rule = None
            else:
                params = dict(m.named_parameters(recurse=False))
                rule = rule_for(m)
            params = {k: p for k, p in params.items() if p.requires_grad}
            if not params:
                continue
            label = mname or "<root>"
            for k, p in params.items():
                pname = self._names.get(p, k)
                if p.is_complex():
                    raise TypeError(
                        f"parameter '{pname}' is complex; per-example gradient moments support "
                        "real floating-point parameters only"
                    )
                if p in owner:
                    raise ValueError(
                        f"parameter '{pname}' is shared by modules '{owner[p]}' and '{label}' "
                        "(weight tying); its per-example gradient is a sum over both uses, "
                        "which the per-module statistics cannot form"
                    )
                owner[p] = label
            if rule is None:
                missing.append(f"'{label}' ({type(m).__name__}, parameters {sorted(params)})")
            units.append(_Unit(label, m, params, rule))
        if missing and self.unsupported == "error":
            # BatchNorm needs two things (running statistics and the fallback): say both at once,
            # since 'fallback' alone would fail next on BatchNorm in training mode
            bns = [u.name for u in units if u.rule is None
                   and isinstance(u.module, nn.modules.batchnorm._BatchNorm)]
            advice = ("pass unsupported='fallback' to compute their per-example gradients with "
                      "torch.func (vmap over examples), or freeze them")
            if bns:
                no_stats = [u.name for u in units if u.name in bns
                            and getattr(u.module, "running_mean", None) is None]
                advice = (
                    f"BatchNorm ({', '.join(repr(n) for n in bns)}) normalizes with batch "
                    "statistics in training mode, which couples the examples, so per-example "
                    "gradients exist only with running statistics: call model.eval() (or .eval() "
                    "on the BatchNorm layers) AND pass unsupported='fallback'; or freeze their "
                    "parameters (requires_grad_(False)) and call .eval() on them; or use "
                    "GroupNorm/LayerNorm"
                    + (f". {', '.join(repr(n) for n in no_stats)} track no running statistics "
                       "(track_running_stats=False): only freezing or GroupNorm/LayerNorm work "
                       "there" if no_stats else "")
                    + ("; for the other modules " + advice
                       if len(bns) < len(missing) else "")
                )
            raise ValueError(
                "GradientMoments has no fast rule for module(s) with trainable parameters: "
                + ", ".join(missing) + "; " + advice
            )
        return units

    # ------------------------------------------------------------------ hooks
    def attach(self) -> GradientMoments:
        """Register the hooks (idempotent); returns ``self``."""
        if self._handles:
            return self
        for unit in self._units:
            if unit.rule is not None:
                h = unit.module.register_forward_hook(partial(self._on_forward_rule, unit))
            else:
                h = unit.module.register_forward_hook(
                    partial(self._on_forward_fallback, unit), with_kwargs=True
                )
            self._handles.append(h)
            for p in unit.params.values():
                self._handles.append(p.register_hook(partial(self._on_leaf_grad, p)))
        for mname, m in self.model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                self._handles.append(
                    m.register_forward_pre_hook(partial(self._check_batchnorm, mname or "<root>"))
                )
            if isinstance(m, nn.MultiheadAttention) and not m.batch_first:
                self.remove()
                raise ValueError(
                    f"MultiheadAttention '{mname}' has batch_first=False; per-example "
                    "statistics need the batch in dimension 0 (use batch_first=True)"
                )
        return self

    def remove(self) -> None:
        """Remove all hooks. Attributes already written (``p.grad_var``) stay."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    detach = remove

    def __enter__(self) -> GradientMoments:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _active(self) -> bool:
        return self.enabled and not self._computing

    def _check_batchnorm(self, name: str, module: nn.Module, args: tuple) -> None:
        if not self._active() or not torch.is_grad_enabled():
            return
        if module.training or module.running_mean is None:
            raise ValueError(
                f"{type(module).__name__} '{name}' normalizes with batch statistics, which "
                "couples the examples of a batch, so per-example gradients are undefined; "
                "call .eval() on it (running statistics) or use GroupNorm/LayerNorm"
            )

    def _begin(self) -> _Backward:
        """The state of the backward pass now running (a new one starts a new state)."""
        task = torch._C._current_graph_task_id()
        if self._bw is None or self._bw.task != task:
            self._release()
            self._bw = _Backward(task)
            torch.autograd.Variable._execution_engine.queue_callback(self._finalize)
        return self._bw

    def _release(self) -> None:
        """Forget the previous backward's statistics as a new one starts.

        Holding them (``p.grad_var``, and in ``self._grad`` the gradients that ``zero_grad``
        let go) until this backward's replacements exist would keep two generations alive:
        more peak memory, and the allocator maps fresh pages every step (~200 page faults per
        step on the 784-512-512-10 MLP). Tensors the caller still holds stay valid.
        """
        self._grad, self._variance, self._result, self._batch_size = {}, {}, None, None
        for p in self._params:
            if hasattr(p, "grad_var"):
                del p.grad_var
                del p.grad_batch_size  # type: ignore[attr-defined]  # set with grad_var

    def _scale2(self, n: int) -> float:
        # Rules are quadratic in the output gradient: scaling their sums by n^2/(n-1) (mean
        # loss) turns sum_i (dL/dtheta_i)^2 into sum_i g_i^2/(n-1); rules apply it to the
        # smallest tensor (or a GEMM's alpha), and the fallback scales the output gradient by
        # its square root.
        if n < 2:
            raise ValueError(
                f"a batch of {n} example(s): the variance of Eq. 3.30 needs at least 2"
            )
        return (n * n if self.reduction == "mean" else 1.0) / (n - 1)

    def _on_forward_rule(self, unit: _Unit, module: nn.Module, args: tuple, output: Any) -> None:
        # (the hooks below run once per layer and step: they test flags inline and skip
        # no_grad() where autograd already runs without grad mode, as it does unless
        # create_graph=True)
        if (not self.enabled or self._computing or not isinstance(output, Tensor)
                or not output.requires_grad):
            return
        if not args or not isinstance(args[0], Tensor):
            raise TypeError(f"module '{unit.name}' was called without a tensor input")
        check_batched(module, args[0])
        saved = (args[0].detach(), *args[1:])
        fn = output.grad_fn
        if fn is None:  # a leaf output (the module returned a parameter): no node to hook
            output.register_hook(partial(self._on_output_grad, unit, saved))
        else:
            # A pre-hook on the node that made the output gets the same gradient as a tensor
            # hook (also when an in-place op later rebases the output) at half the cost.
            fn.register_prehook(partial(self._on_node_grads, unit, saved, output.output_nr))

    def _on_node_grads(self, unit: _Unit, args: tuple, nr: int, grads: tuple) -> None:
        if grads[nr] is not None:
            self._on_output_grad(unit, args, grads[nr])

    def _on_output_grad(self, unit: _Unit, args: tuple, grad_out: Tensor) -> None:
        if not self.enabled or self._computing:
            return
        bw = self._begin()
        n = args[0].shape[0]
        scale2 = self._scale2(n)
        if grad_out.dtype in _LOW_PRECISION:  # squares of half-precision values overflow
            grad_out = grad_out.float()
            args = (args[0].float() if args[0].is_floating_point() else args[0], *args[1:])
        rule = unit.rule
        assert rule is not None  # attach() hooks only units with a rule to this path
        if torch.is_grad_enabled():
            with torch.no_grad():
                sums = rule(unit.module, args, grad_out, scale2, self._opts)
        else:
            sums = rule(unit.module, args, grad_out, scale2, self._opts)
        for k, s in sums.items():
            self._add(bw, unit.params[k], s, n)

    def _on_forward_fallback(
        self, unit: _Unit, module: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> None:
        if not self._active():
            return
        outs = [t for t in tree_flatten(output)[0] if isinstance(t, Tensor)]
        if not any(t.requires_grad for t in outs):
            return
        first = next((a for a in tree_flatten((args, kwargs))[0]
                      if isinstance(a, Tensor) and a.dim() > 0), None)
        if first is None:
            raise TypeError(f"module '{unit.name}' was called without a batched tensor input")
        n = first.shape[0]
        detach = lambda a: a.detach() if isinstance(a, Tensor) else a  # noqa: E731
        saved_args = tuple(detach(a) for a in args)
        saved_kwargs = {k: detach(v) for k, v in kwargs.items()}
        grads: list[Tensor | None] = [None] * len(outs)
        call = (unit, saved_args, saved_kwargs, grads, n)
        for j, t in enumerate(outs):
            if t.requires_grad:
                t.register_hook(partial(self._on_fallback_grad, call, j))

    def _on_fallback_grad(self, call: tuple, j: int, grad_out: Tensor) -> None:
        if not self._active():
            return
        bw = self._begin()
        grads = call[3]
        if not any(g is not None for g in grads):
            bw.fallback.append(call)  # computed in _finalize, when all outputs' grads are in
        grads[j] = grad_out

    def _on_leaf_grad(self, p: nn.Parameter, grad: Tensor) -> None:
        if not self.enabled or self._computing:
            return
        if grad.is_sparse:
            raise RuntimeError(
                f"parameter '{self._names.get(p, '?')}' got a sparse gradient; per-example "
                "gradient moments need dense gradients (use Embedding(sparse=False))"
            )
        bw = self._begin()
        # Keep this backward's gradient only when it will be added to an existing .grad;
        # otherwise AccumulateGrad hands this very tensor to p.grad (holding it would force a
        # copy), and _finalize reads p.grad.
        bw.leaf[p] = grad if p.grad is not None else None
        entry = bw.sums.get(p)
        if entry is not None and p not in bw.shared:
            # AccumulateGrad runs after every use of p, so a fast rule's sum is complete:
            # finish p now, while its gradient is still in cache.
            if torch.is_grad_enabled():
                with torch.no_grad():
                    bw.done[p] = self._variance_from(entry[0], entry[1], grad)
            else:
                bw.done[p] = self._variance_from(entry[0], entry[1], grad)

    def _add(self, bw: _Backward, p: nn.Parameter, s: Tensor | Gemm, n: int) -> None:
        if p in bw.sums:
            bw.shared.add(p)
        bw.sums[p] = (s, n)

    # ------------------------------------------------------------------ finalize
    def _variance_from(self, s: Tensor | Gemm, n: int, g: Tensor) -> Tensor:
        """``s`` holds ``sum_i g_i^2/(n-1)``; subtract ``n gbar^2/(n-1)`` (Eq. 3.30) and clamp at
        0, ``gbar`` the mean gradient: ``g`` for a mean loss, ``g/n`` for a summed one (the
        ``1/n^2`` is folded into ``c``, not a pass over ``g``). A new tensor for a
        :class:`Gemm` (one GEMM adds the product to ``-c g^2``), else ``s`` in place."""
        gf = g.float() if g.dtype in _LOW_PRECISION else g
        c = n / (n - 1) if self.reduction == "mean" else 1.0 / (n * (n - 1))
        if isinstance(s, Gemm):
            return s.minus_square(gf, c).clamp_min_(0)
        return s.addcmul_(gf, gf, value=-c).clamp_min_(0)

    def _finalize(self) -> None:
        bw, self._bw = self._bw, None
        if bw is None:
            return
        self._computing = True
        try:
            for unit, args, kwargs, out_grads, n in bw.fallback:
                params = {k: p.detach() for k, p in unit.params.items()}
                scale = math.sqrt(self._scale2(n))
                scaled = [None if g is None else g * scale for g in out_grads]
                try:
                    sums = fallback_sumsq(unit.module, params, args, kwargs, scaled, n,
                                          self._opts)
                except RuntimeError as err:
                    raise RuntimeError(
                        f"torch.func fallback failed for module '{unit.name}' "
                        f"({type(unit.module).__name__}): {err}. The fallback re-runs the "
                        "module's forward one example at a time under vmap: randomness inside "
                        "it (dropout) cannot be replayed and examples must not interact"
                    ) from err
                for k, s in sums.items():
                    self._add(bw, unit.params[k], s, n)
        finally:
            self._computing = False
        if bw.shared:
            names = sorted(self._names.get(p, "?") for p in bw.shared)
            raise RuntimeError(
                f"parameters {names} were used more than once in the forward pass (a module "
                "called twice, or several forward passes before one backward); per-example "
                "statistics need each parameter used once per example batch"
            )
        sizes = {n for _, n in bw.sums.values()}
        if len(sizes) > 1:
            raise RuntimeError(
                f"modules saw different batch sizes {sorted(sizes)}; the batch must be "
                "dimension 0 of every module's input"
            )
        variance: dict[str, Tensor] = {}
        grads: dict[str, Tensor] = {}
        n_batch = None
        with torch.no_grad():
            for p, kept in bw.leaf.items():
                name = self._names.get(p, "?")
                if p not in bw.sums:
                    raise RuntimeError(
                        f"parameter '{name}' received a gradient but no per-example "
                        "statistics: it was used outside its module's forward (e.g. by a "
                        "parent module or functionally), which GradientMoments cannot see"
                    )
                g = kept if kept is not None else p.grad
                if g is None:
                    raise RuntimeError(
                        f"parameter '{name}' has no .grad after backward; collect statistics "
                        "with loss.backward() (torch.autograd.grad does not fill .grad)"
                    )
                n = n_batch = bw.sums[p][1]
                var = bw.done.get(p)
                if var is None:
                    var = self._variance_from(*bw.sums[p], g)
                if var.dtype != p.dtype:
                    var = var.to(p.dtype)
                # documented per-parameter attributes (BackPACK's convention), not in
                # nn.Parameter's type
                p.grad_var = var  # type: ignore[attr-defined]
                p.grad_batch_size = n  # type: ignore[attr-defined]
                variance[name] = var
                grads[name] = g if self.reduction == "mean" else g / n
        # parameters without a gradient this time lost their stale attributes in _release
        self._variance, self._grad, self._batch_size = variance, grads, n_batch
        self._result = None

    # ------------------------------------------------------------------ results
    @property
    def batch_size(self) -> int | None:
        """``N`` of the latest backward pass (``None`` before the first)."""
        return self._batch_size

    @property
    def variance(self) -> dict[str, Tensor]:
        """Parameter name -> ``s`` (Eq. 3.30) of the latest backward pass."""
        return dict(self._variance)

    @property
    def grad(self) -> dict[str, Tensor]:
        """Parameter name -> mini-batch gradient ``g`` of the latest backward pass."""
        return dict(self._grad)

    def result(self, loss: Tensor | None = None) -> GradientMomentsResult:
        """The latest statistics as a :class:`GradientMomentsResult`."""
        if self._batch_size is None:
            raise RuntimeError("no statistics yet: run a forward and a backward pass first")
        if loss is not None:
            return GradientMomentsResult(loss.detach(), self._batch_size, dict(self._grad),
                                         dict(self._variance))
        if self._result is None:  # cached per backward: the scalars are computed once
            self._result = GradientMomentsResult(None, self._batch_size, dict(self._grad),
                                                 dict(self._variance))
        return self._result

    @property
    def variance_sum(self) -> float:
        """``tr(Sigma) ~= sum ||s||_1`` of the latest backward pass."""
        return self.result().variance_sum

    @property
    def grad_sq_norm(self) -> float:
        """``||g||^2`` of the latest backward pass."""
        return self.result().grad_sq_norm

    @property
    def noise_to_signal(self) -> float:
        """``tr(Sigma)/||g||^2`` (Eq. 4.9) of the latest backward pass."""
        return self.result().noise_to_signal


def gradient_moments(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    inputs: Tensor | tuple[Tensor, ...],
    targets: Any,
    *,
    unsupported: str = "error",
    reduction: str = "mean",
) -> GradientMomentsResult:
    """One forward and backward pass with per-example statistics.

    Computes ``loss = loss_fn(model(inputs), targets)`` (``model(*inputs)`` for a tuple), runs
    ``loss.backward()`` on cleared gradients, and returns the loss, ``g`` and ``s`` ([Bal21]
    Eq. 3.28/3.30) per parameter with ``tr(Sigma)``, ``||g||^2`` and ``tr(Sigma)/||g||^2``
    (Eq. 4.9). Afterwards ``p.grad`` is the mini-batch gradient of the loss as reduced and
    ``p.grad_var``/``p.grad_batch_size`` are set as by :class:`GradientMoments`, whose
    docstring gives the scaling contract and the meaning of ``unsupported``/``reduction``.
    ``loss_fn`` must reduce over the examples as ``reduction`` says (e.g.
    ``F.cross_entropy``'s default mean).
    """
    gm = GradientMoments(model, unsupported=unsupported, reduction=reduction)
    for p in model.parameters():
        p.grad = None
    with gm:
        out = model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)
        loss = loss_fn(out, targets)
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise ValueError("loss_fn must return a scalar tensor (a reduced loss)")
        loss.backward()
    return gm.result(loss)
