"""Role detection: what each parameter of a model does (embedding, hidden, conv, head, vector).

:func:`detect_roles` is used by :func:`steepest.recipes.create_optimizer` and by
:func:`steepest.optim.layerwise.classify` (given an example input); it lives in its own module,
importing only torch, so that both can use it without importing each other.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = ["ROLES", "RoleReport", "detect_roles"]

ROLES = ("embedding", "hidden", "conv", "head", "vector")

# ----------------------------------------------------------------------------- role detection
# Ops that use a parameter as a linear map (matmul, convolution, attention projections).
_MATMUL_NAMES = ("linear", "matmul", "mm", "bmm", "addmm", "baddbmm", "addbmm", "einsum", "bilinear",
                 "tensordot", "inner", "mv", "chain_matmul", "multi_head_attention_forward", "lstm",
                 "gru", "rnn_tanh", "rnn_relu")
_CONV_PREFIX = "conv"
# Ops that read rows of a parameter by index (an embedding lookup).
_INDEX_NAMES = ("embedding", "embedding_bag", "__getitem__", "index_select", "take", "gather",
                "take_along_dim", "narrow", "select")
# Ops that put a parameter into the activations without a matmul (positional embeddings, class tokens).
_ADD_NAMES = ("add", "__add__", "__radd__", "__iadd__", "add_", "sub", "__sub__", "__rsub__", "cat",
              "concat", "concatenate", "stack", "where")
# Ops that only reshape / view / move a tensor: their output *is* the parameter for our purposes.
_VIEW_NAMES = ("t", "T", "mT", "transpose", "permute", "view", "reshape", "contiguous", "to", "float",
               "half", "bfloat16", "double", "type", "type_as", "unsqueeze", "squeeze", "expand",
               "expand_as", "flatten", "unflatten", "split", "chunk", "unbind", "view_as", "movedim",
               "detach", "clone", "__get__")


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", None)
    if name is None:  # property getters such as Tensor.T come as method-wrappers
        name = getattr(getattr(func, "__self__", None), "__name__", None) or repr(func)
    return str(name)


@dataclass
class RoleReport:
    """Roles of a model's parameters and how they were found (see :func:`detect_roles`)."""

    roles: dict[str, str]  # parameter name -> role
    how: dict[str, str]  # parameter name -> why (e.g. "F.linear consumes it; the output comes from it")
    method: str  # "forward pass" or "module types and names"
    params: dict[str, nn.Parameter] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)  # name -> a note when also used as the head


class _Recorder(TorchFunctionMode):
    """Records which op consumes each parameter and which parameters the outputs come from."""

    def __init__(self, params: dict[int, str]) -> None:
        super().__init__()
        self.params = params  # id(param) -> name
        self.alias: dict[int, int] = {}  # id(tensor) -> id(param) it is a view / reshape of
        self.index_out: dict[int, int] = {}  # id(index-op output) -> id(param) it was read from
        self.uses: dict[int, set[str]] = collections.defaultdict(set)
        self.ops: dict[int, set[str]] = collections.defaultdict(set)
        self.prov: dict[int, frozenset[int]] = {}  # id(tensor) -> params whose matmul made it
        self.keep: list[Any] = []  # keeps outputs alive so their ids stay unique during the pass

    def _source(self, t: Any) -> int | None:
        if not isinstance(t, Tensor):
            return None
        if id(t) in self.params:
            return id(t)
        return self.alias.get(id(t))

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _op_name(func)
        flat_in, _ = tree_flatten((args, kwargs))
        flat_out, _ = tree_flatten(out)
        self.keep.append(out)
        srcs = [s for s in (self._source(t) for t in flat_in) if s is not None]
        # A slice of a parameter that is then used as a matmul weight is a matmul use (fused qkv).
        via_index = [self.index_out[id(t)] for t in flat_in if isinstance(t, Tensor) and id(t) in self.index_out]
        lname = name.lower().lstrip("_")
        is_matmul = any(lname == n or lname.startswith(n) for n in _MATMUL_NAMES) or name in ("__matmul__",
                                                                                               "__rmatmul__")
        is_conv = lname.startswith(_CONV_PREFIX)
        made: frozenset[int] = frozenset()
        if is_matmul or is_conv:
            used = set(srcs) | set(via_index)
            for s in used:
                self.uses[s].add("conv" if is_conv else "matmul")
                self.ops[s].add(name)
            for t in flat_in:  # a matmul through an index op's output: not an embedding read
                if isinstance(t, Tensor):
                    self.index_out.pop(id(t), None)
            made = frozenset(s for s in used if self._ndim(s) >= 2)
        elif srcs and name in _VIEW_NAMES:
            for t in flat_out:
                if isinstance(t, Tensor):
                    self.alias[id(t)] = srcs[0]
        elif srcs and name in _INDEX_NAMES:
            for s in srcs:
                self.uses[s].add("index")
                self.ops[s].add(name)
            for t in flat_out:
                if isinstance(t, Tensor):
                    self.index_out[id(t)] = srcs[0]
        elif srcs:
            acts = [t for t in flat_in if isinstance(t, Tensor) and self._source(t) is None]
            kind = "add" if name in _ADD_NAMES and acts else "other"
            for s in srcs:
                self.uses[s].add(kind)
                self.ops[s].add(name)
        if not made:
            made = frozenset().union(*(self.prov.get(id(t), frozenset()) for t in flat_in if isinstance(t, Tensor)))
        for t in flat_out:
            if isinstance(t, Tensor) and made:
                self.prov[id(t)] = made
        return out

    def _ndim(self, pid: int) -> int:
        return self._by_id[pid].dim()

    _by_id: dict[int, Tensor]


def _fallback_role(name: str, p: Tensor, embed_ids: set[int], head_ids: set[int]) -> tuple[str, str]:
    """Role from module types and names (no forward pass)."""
    leaf = name.rsplit(".", 1)[-1].lower()
    if p.dim() < 2:
        return "vector", "ndim < 2"
    if id(p) in embed_ids:
        return "embedding", "weight of an nn.Embedding"
    if id(p) in head_ids:
        return "head", "weight of the last nn.Linear (the output layer, by module order)"
    if any(k in leaf for k in ("pos", "embed", "wpe", "wte", "cls_token", "token")):
        return "embedding", f"a plain parameter named {leaf!r} (an embedding by its name)"
    if p.dim() > 2:
        return "conv", "ndim > 2"
    return "hidden", "a matrix (ndim == 2)"


def detect_roles(
    model: nn.Module,
    example_input: Any = None,
    roles: dict[str, str] | None = None,
    head_module: str | None = None,
) -> RoleReport:
    """The role of every trainable parameter of ``model`` (tied parameters once).

    With ``example_input`` (a tensor, a tuple of positional arguments, or a dict of keyword
    arguments), one forward pass runs under a :class:`torch.overrides.TorchFunctionMode` that
    records the op consuming each parameter (through views such as ``.T`` and ``reshape``) and
    which parameters' matmuls the model's output comes from. The pass runs in eval mode without
    gradients and leaves the model's mode, buffers and the CPU random state as they were.

    * ``vector``: ``ndim < 2``;
    * ``embedding``: read by an index op (``F.embedding``, ``__getitem__``, ``index_select``...,
      unless the slice then goes into a matmul), or added / concatenated to activations with no
      matmul (``x + self.pos``); a parameter both looked up and used as the output matrix is a
      tied embedding (role ``embedding``, noted);
    * ``head``: a matrix whose matmul produced the model's output (every floating tensor output);
    * ``conv`` / ``hidden``: other parameters used by a convolution / a matmul.

    Parameters the pass does not use, and every parameter without ``example_input``, fall back to
    module types and names: ``nn.Embedding`` weights and plain matrices whose name contains
    ``pos``, ``embed``, ``wpe``, ``wte`` or ``token`` are embeddings, the last registered
    ``nn.Linear`` (or the module named ``head``, or ``head_module``) is the head. ``roles`` maps parameter names to
    roles and wins over both.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    by_name = dict(named)
    roles = dict(roles or {})
    for n, r in roles.items():
        if n not in by_name:
            close = [k for k in by_name if n in k or k.endswith("." + n)]
            hint = f" (did you mean {close[:3]}?)" if close else f"; the model's are {list(by_name)[:12]}"
            raise ValueError(f"roles: {n!r} is not a trainable parameter name of the model{hint}")
        if r not in ROLES:
            raise ValueError(f"roles: the role of {n!r} must be one of {ROLES}, got {r!r}")
    modules = dict(model.named_modules())
    if head_module is not None and head_module not in modules:
        raise ValueError(f"head_module must name a submodule of the model; {head_module!r} is not one")
    embed_ids = {id(m.weight) for m in modules.values() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    if head_module is not None:
        head_mod: nn.Module | None = modules[head_module]
    else:
        linears = [m for m in modules.values() if isinstance(m, nn.Linear)]
        head_mod = modules.get("head") or (linears[-1] if linears else None)
    head_ids = {id(p) for p in head_mod.parameters() if p.dim() >= 2} if head_mod is not None else set()

    out: dict[str, str] = {}
    how: dict[str, str] = {}
    tied: dict[str, str] = {}
    method = "module types and names"
    if example_input is not None:
        method = "forward pass"
        rec = _Recorder({id(p): n for n, p in named})
        rec._by_id = {id(p): p for _, p in named}
        was_training = model.training
        model.eval()  # no side effects: BatchNorm's running statistics stay, dropout draws nothing
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad(), rec:
                if isinstance(example_input, dict):
                    y = model(**example_input)
                elif isinstance(example_input, (tuple, list)):
                    y = model(*example_input)
                else:
                    y = model(example_input)
        except Exception as exc:  # the user's forward: say where it was called from
            msg = (f"{exc} (in the forward pass on example_input that detects the parameters' roles: "
                   "pass an input the model accepts, e.g. x[:1], or leave example_input out to detect "
                   "roles by module types and names)")
            try:
                wrapped = type(exc)(msg)
            except Exception:  # an exception type with another constructor
                wrapped = RuntimeError(msg)
            raise wrapped from exc
        finally:
            model.train(was_training)
        outs = [t for t in tree_flatten(y)[0] if isinstance(t, Tensor) and t.is_floating_point()]
        heads = frozenset().union(*(rec.prov.get(id(t), frozenset()) for t in outs))
        leftover_index: collections.defaultdict[int, int] = collections.defaultdict(int)
        for pid in rec.index_out.values():
            leftover_index[pid] += 1
        for n, p in named:
            pid, uses = id(p), rec.uses.get(id(p), set())
            ops = ", ".join(sorted(rec.ops.get(pid, set())))
            indexed = "index" in uses and leftover_index.get(pid, 0) > 0
            if p.dim() < 2:
                out[n], how[n] = "vector", "ndim < 2"
            elif indexed:
                out[n], how[n] = "embedding", f"indexed ({ops})"
                if pid in heads:
                    tied[n] = "tied: also the output matrix"
                    how[n] += "; also makes the model's output (tied head)"
            elif pid in heads:
                out[n], how[n] = "head", f"the model's output comes from its {ops}"
            elif "conv" in uses:
                out[n], how[n] = "conv", f"used by {ops}"
            elif "matmul" in uses:
                out[n], how[n] = ("conv" if p.dim() > 2 else "hidden"), f"used by {ops}"
            elif "add" in uses:
                out[n], how[n] = "embedding", f"added to the activations with no matmul ({ops})"
            else:
                r, why = _fallback_role(n, p, embed_ids, head_ids)
                note = f"used by {ops}" if ops else "not used by the example forward pass"
                out[n], how[n] = r, f"{note}; by module type / name: {why}"
    else:
        for n, p in named:
            out[n], how[n] = _fallback_role(n, p, embed_ids, head_ids)
    for n, r in roles.items():
        out[n], how[n] = r, "set by roles="
    return RoleReport(out, how, method, dict(named), tied)
