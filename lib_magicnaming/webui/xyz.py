"""X/Y/Z plot axes: "MagicNaming identity" (every tag names the axis value instead) and
"MagicNaming strength" (every tag takes the axis value as its strength).

The WebUI loads scripts/xyz_grid.py as a module named ``xyz_grid.py``; like other extensions, we find it in
``modules.scripts.scripts_data`` and append ``AxisOption``s to its ``axis_options``. An axis value is set on
the grid cell's own copy of the processing object, where :mod:`.generation` reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lib_magicnaming.tags import validate_identity_name
from lib_magicnaming.webui.generation import IDENTITY_OVERRIDE_ATTRIBUTE, STRENGTH_OVERRIDE_ATTRIBUTE
from lib_magicnaming.webui.markers import check_strength

IDENTITY_AXIS = "MagicNaming identity"
STRENGTH_AXIS = "MagicNaming strength"
XYZ_MODULE_NAMES = ("xyz_grid.py", "xy_grid.py")


def find_xyz_module():
    """The loaded X/Y/Z plot script module, or None when the WebUI has none."""
    from modules import scripts

    for data in scripts.scripts_data:
        if data.script_class.__module__ in XYZ_MODULE_NAMES and hasattr(data, "module"):
            return data.module
    return None


def apply_identity(p, value: str, values: Sequence[str]) -> None:
    """Axis ``apply``: tags in this cell name ``value``."""
    setattr(p, IDENTITY_OVERRIDE_ATTRIBUTE, validate_identity_name(str(value).strip()))


def apply_strength(p, value: float, values: Sequence[float]) -> None:
    """Axis ``apply``: tags in this cell take strength ``value``."""
    setattr(p, STRENGTH_OVERRIDE_ATTRIBUTE, check_strength(value))


def confirm_identities(p, values: Sequence[str]) -> None:
    """Axis ``confirm``: every value is a legal identity name (IdentityError names the bad one)."""
    for value in values:
        validate_identity_name(str(value).strip())


def confirm_strengths(p, values: Sequence[float]) -> None:
    """Axis ``confirm``: every value is a strength from 0 to 2."""
    for value in values:
        check_strength(value)


def register_axes(identity_names: Callable[[], list[str]]) -> bool:
    """Add both axes to the X/Y/Z plot (once); False when there is no X/Y/Z plot script."""
    xyz = find_xyz_module()
    if xyz is None:
        return False
    labels = {option.label for option in xyz.axis_options}
    if IDENTITY_AXIS not in labels:
        xyz.axis_options.append(
            xyz.AxisOption(
                IDENTITY_AXIS, str, apply_identity, confirm=confirm_identities, choices=identity_names
            )
        )
    if STRENGTH_AXIS not in labels:
        xyz.axis_options.append(
            xyz.AxisOption(STRENGTH_AXIS, float, apply_strength, confirm=confirm_strengths)
        )
    return True
