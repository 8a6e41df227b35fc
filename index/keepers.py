"""Choosing, once per index, how it keeps the caller's ids (see direct_ids.py, tombstones.py, training.py).

The choice follows from the FAISS index type alone: direct ids where FAISS removes natively, tombstones
elsewhere, and a training buffer in front of either while an index that needs training is untrained.
A loaded index gets the keeper its stored FAISS index calls for, so files need not name it.
"""

from __future__ import annotations

from typing import Union

from . import structure
from .direct_ids import DirectIds
from .persistence import CorruptIndexError, Restored
from .tombstones import Tombstones
from .training import TrainingBuffer

Keeper = Union[DirectIds, Tombstones]


def fresh(dimension: int, metric: str, factory: str) -> tuple[Keeper, TrainingBuffer | None]:
    """(keeper of a new, empty index of ``factory``, its training buffer or None if it needs no training)."""
    keeper = _fresh_keeper(dimension, metric, factory)
    return keeper, None if keeper.index.is_trained else TrainingBuffer.empty(dimension, metric)


def restored(dimension: int, metric: str, factory: str, restore: Restored) -> tuple[Keeper, TrainingBuffer | None]:
    """The same for the contents of a file; CorruptIndexError or ValueError where they do not fit."""
    metric_type = structure.METRIC_TYPES[metric]
    if restore.buffer is None:
        main = restore.main
        if main.d != dimension or main.metric_type != metric_type:
            raise CorruptIndexError("FAISS index dimension/metric do not match the metadata")
        if not main.is_trained:
            raise CorruptIndexError("training state does not match the stored indexes")
        keeper_type = DirectIds if structure.labels_are_ids(main) else Tombstones
        return keeper_type.restored(main, restore.arrays, restore.tombstones), None
    # Untrained, the main index holds nothing yet; a fresh one also has what FAISS does not serialize
    # (IVF k-means parameters: spherical k-means for inner products), so it trains as it would have.
    keeper, buffer = _fresh_keeper(dimension, metric, factory), restore.buffer
    if keeper.index.is_trained or buffer.d != dimension or buffer.metric_type != metric_type:
        raise CorruptIndexError("training buffer does not match the index")
    return keeper, TrainingBuffer.restored(buffer, restore.arrays, restore.tombstones)


def _fresh_keeper(dimension: int, metric: str, factory: str) -> Keeper:
    main = structure.create(dimension, metric, factory)
    reason = structure.unsupported_reason(main)
    if reason:
        raise ValueError(f"factory {factory!r}: {reason}")
    if structure.labels_are_ids(main) or structure.removable(main):
        return DirectIds.fresh(main)
    return Tombstones.fresh(main, factory)
