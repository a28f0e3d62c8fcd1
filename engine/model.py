"""Where the protocol's ResMLP and the ``Auditable`` interface used to live: re-exported.

They are now in ``engine.models`` (``resmlp``, ``protocol``), with the other networks.
"""
from __future__ import annotations

from .models.layers import _SQRT_HALF, _linear, gelu
from .models.protocol import Auditable
from .models.resmlp import Block, ResMLP

__all__ = ["Auditable", "Block", "ResMLP", "_SQRT_HALF", "_linear", "gelu"]
