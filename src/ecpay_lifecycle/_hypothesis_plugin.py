"""Hypothesis entry point: makes ``st.from_type(OrderSnapshot)`` draw from :func:`snapshots`.

Hypothesis calls :func:`_register` when it loads (``[project.entry-points.hypothesis]``), so users
get the strategy without importing anything. Only hypothesis imports this module.
"""

from __future__ import annotations

from hypothesis import strategies as st

from ._models import OrderSnapshot
from .strategies import snapshots


def _register() -> None:
    st.register_type_strategy(OrderSnapshot, snapshots())
