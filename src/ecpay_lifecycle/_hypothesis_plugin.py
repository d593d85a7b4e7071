"""Hypothesis entry point: makes ``st.from_type(OrderSnapshot)`` draw from :func:`snapshots`.

Hypothesis calls :func:`_register` when it loads (``[project.entry-points.hypothesis]``), so users
get the strategy without importing anything. Only hypothesis imports this module.

The strategy is deferred: importing :mod:`ecpay_lifecycle.strategies` imports hypothesis, which
runs this entry point while ``strategies`` is still half-initialised; resolving it on first use
breaks that cycle.
"""

from __future__ import annotations

from hypothesis import strategies as st

from ._models import OrderSnapshot


def _snapshots() -> st.SearchStrategy[OrderSnapshot]:
    from .strategies import snapshots  # noqa: PLC0415 - deferred to break the import cycle

    return snapshots()


def _register() -> None:
    st.register_type_strategy(OrderSnapshot, st.deferred(_snapshots))
