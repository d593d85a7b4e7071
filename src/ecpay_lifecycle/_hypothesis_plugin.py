"""Hypothesis entry point: makes ``st.from_type(OrderSnapshot)`` draw from :func:`snapshots`.

Hypothesis calls :func:`_register` when it loads (``[project.entry-points.hypothesis]``), so users
get the strategy without importing anything. Only hypothesis imports this module.

The strategy is deferred: importing :mod:`._value_strategies` imports hypothesis, which runs this
entry point while ``_value_strategies`` is still half-initialised; resolving it on first use
breaks that cycle (which runs through hypothesis, not through this package).
"""

from __future__ import annotations

from hypothesis import strategies as st

from ._models import OrderSnapshot


def _snapshots() -> st.SearchStrategy[OrderSnapshot]:
    from ._value_strategies import snapshots  # noqa: PLC0415 - deferred, see the module docstring

    return snapshots()


def _register() -> None:
    st.register_type_strategy(OrderSnapshot, st.deferred(_snapshots))
