"""Parameter groups: the subspace R^k a corruption lives in, and the groupings a probe compares.

* :mod:`.base`: :class:`ParameterGroup`, :func:`select` (by name patterns, module type,
  weight/bias), :func:`parameter_types` — the one taxonomy of parameter types;
* :mod:`.groupings`: by type, position, module, or the user's own mapping (``GROUPINGS``);
* :mod:`.transformer`: by component and by layer, for transformer architectures.
"""

from __future__ import annotations

from .base import (
    PARAMETER_TYPES,
    ParameterGroup,
    as_group,
    find_parameter,
    parameter_types,
    select,
)
from .groupings import (
    GROUPINGS,
    groups_by_module,
    groups_by_position,
    groups_by_type,
    groups_from_mapping,
    make_groups,
)
from .transformer import COMPONENTS, component_of, groups_by_component, groups_by_layer

__all__ = [
    "COMPONENTS",
    "GROUPINGS",
    "PARAMETER_TYPES",
    "ParameterGroup",
    "as_group",
    "component_of",
    "find_parameter",
    "groups_by_component",
    "groups_by_layer",
    "groups_by_module",
    "groups_by_position",
    "groups_by_type",
    "groups_from_mapping",
    "make_groups",
    "parameter_types",
    "select",
]
