"""Batches whose size a controller sets while training runs ([Bal21, Alg. 1], "draw a
mini-batch of size m"), for an ordinary ``torch.utils.data.DataLoader`` loop."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["AdaptiveBatchSampler", "adaptive_loader"]


class AdaptiveBatchSampler(Sampler[list[int]]):
    """A batch sampler that asks for the batch size each time it draws a batch.

    One iteration is one epoch: a permutation of the indices (``shuffle=True``) or ``0..n-1``,
    cut into consecutive batches whose sizes are read from ``batch_size`` when each batch is
    drawn, i.e. after the previous step's ``controller.update(...)``. The last batch of an epoch
    holds what is left (dropped if smaller than requested when ``drop_last=True``).

    Args:
        data_source: the dataset (anything with ``len``) or the number of examples.
        batch_size: a controller with a ``batch_size`` attribute (:class:`~steepest.stats.CABS`,
            :class:`~steepest.stats.VarianceRatioBatchSize`) or a function returning an int.
        shuffle: draw a fresh random permutation every epoch.
        drop_last: drop a final batch smaller than the requested size.
        generator: ``torch.Generator`` for the permutations (reproducible epochs).

    With a ``DataLoader``, keep ``num_workers=0``: worker processes prefetch batches, so the
    sizes would lag the controller by the prefetch depth.
    """

    def __init__(
        self,
        data_source: Sized | int,
        batch_size: Any,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        n = data_source if isinstance(data_source, int) else len(data_source)
        if isinstance(n, bool) or n < 0:
            raise ValueError(f"data_source must have a length >= 0, got {n!r}")
        if not (hasattr(batch_size, "batch_size") or callable(batch_size)):
            raise ValueError(
                "batch_size must be a controller with a .batch_size attribute or a callable "
                f"returning an int, got {batch_size!r}"
            )
        if not isinstance(shuffle, bool) or not isinstance(drop_last, bool):
            raise ValueError("shuffle and drop_last must be bools")
        self.num_examples = n
        self.source = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator

    def current_batch_size(self) -> int:
        """The size the controller asks for now (validated)."""
        src = self.source
        m = src.batch_size if hasattr(src, "batch_size") else src()
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"the batch size must be an int >= 1, got {m!r}")
        return m

    def _order(self) -> torch.Tensor:
        n = self.num_examples
        if not self.shuffle:
            return torch.arange(n)
        gen = self.generator
        if gen is None:  # as RandomSampler: a fresh seed from the global RNG per epoch
            gen = torch.Generator()
            gen.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        return torch.randperm(n, generator=gen)

    def __iter__(self) -> Iterator[list[int]]:
        order = self._order().tolist()
        i, n = 0, self.num_examples
        while i < n:
            m = self.current_batch_size()
            if i + m > n and self.drop_last:
                return
            yield order[i : i + m]
            i += m


def adaptive_loader(
    dataset: Dataset,
    controller: Any,
    *,
    shuffle: bool = True,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
    **loader_kwargs: Any,
) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` whose batches have the size ``controller`` sets.

    ``loader_kwargs`` go to ``DataLoader`` (``collate_fn``, ``pin_memory``, ...; not
    ``batch_size``/``shuffle``/``sampler``). Iterating the loader yields one epoch.
    """
    for key in ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last"):
        if key in loader_kwargs:
            raise ValueError(f"adaptive_loader sets {key!r} itself; do not pass it")
    if loader_kwargs.get("num_workers", 0) > 0:
        warnings.warn(
            "adaptive_loader with num_workers > 0: workers prefetch batches, so batch sizes "
            "lag the controller by the prefetch depth", RuntimeWarning, stacklevel=2
        )
    if not isinstance(dataset, Sized):  # an IterableDataset: no indices to sample
        raise ValueError(f"adaptive_loader needs a map-style dataset with a length, got "
                         f"{type(dataset).__name__}")
    sampler = AdaptiveBatchSampler(dataset, controller, shuffle=shuffle, drop_last=drop_last,
                                   generator=generator)
    return DataLoader(dataset, batch_sampler=sampler, **loader_kwargs)

