"""What a DICOM object's IOD requires, from the standard's tables that highdicom ships.

De-identification must not remove an attribute that the object's IOD requires (PS3.15 E.1-1 empties
a Type 2 attribute and gives a Type 1 one a dummy value instead). Which attributes those are is not
typed by hand: highdicom carries the standard's tables (SOP Class -> IOD -> modules with their usage
M/C/U -> attributes with their Type and, for nested ones, their sequence path), and this module reads
them into one tree per object.

A module counts as *in use* when it is Mandatory, or when the object holds one of its top-level
attributes (a Conditional or User-optional module that is present must be complete). Conditions of
Type 1C/2C attributes are not evaluated: such an attribute is treated as required wherever it is
present, which never removes one whose condition holds.

:func:`structural_errors` checks the same rules on a written object (every Type 1/2 attribute of a
module in use present at every depth, Type 1/1C not empty); the tests use it when ``dciodvfy`` is
not installed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

try:  # highdicom keeps these tables in a private module: name it when it moves
    from highdicom._standard_utils import (
        get_iod_module_map,
        get_module_attribute_map,
        get_sop_class_iod_map,
    )
except ImportError as exc:  # pragma: no cover - depends on the installed highdicom
    raise ImportError("lungseg.io.iod needs highdicom's standard tables (highdicom._standard_utils, "
                      "highdicom 0.28); see requirements.txt") from exc

REQUIRED_TYPES = frozenset({"1", "1C", "2", "2C"})
TYPE_1 = frozenset({"1", "1C"})
"""Must be present with a value (when required)."""
_STRENGTH = {"1": 4, "1C": 3, "2": 2, "2C": 1, "3": 0}
FUNCTIONAL_GROUPS = frozenset({"SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"})
"""Their items hold functional group macros, each in the shared *or* the per-frame item, by a usage
(M/C/U) that the tables give as Type 1 in both: :func:`structural_errors` checks a macro's contents,
not where it sits."""


@dataclass
class Requirement:
    """One attribute of an IOD: its strongest Type over the modules in use, the module giving it,
    and (for a sequence) what its items hold."""

    type: str
    module: str
    children: dict[str, Requirement] = field(default_factory=dict)

    @property
    def required(self) -> bool:
        return self.type in REQUIRED_TYPES

    @property
    def needs_value(self) -> bool:
        return self.type in TYPE_1


Tree = Mapping[str, Requirement]
"""Keyword -> requirement, at one level of a data set."""


def iod_of(sop_class_uid: str) -> str | None:
    """The IOD key of a SOP Class (``ct-image``, ``segmentation``...), None when the tables lack it."""
    return get_sop_class_iod_map().get(str(sop_class_uid))


def _strength(kind: str) -> int:
    return _STRENGTH.get(kind, 0)  # "None" in the tables: no requirement


@cache
def module_tree(module: str) -> dict[str, Requirement]:
    """The attributes of one module as a tree (nested ones under their sequence)."""
    tree: dict[str, Requirement] = {}
    for row in get_module_attribute_map()[module]:
        level = tree
        for step in row["path"]:
            parent = level.setdefault(step, Requirement("3", module))
            level = parent.children
        node = level.get(row["keyword"])
        if node is None:
            level[row["keyword"]] = Requirement(str(row["type"]), module)
        elif _strength(str(row["type"])) > _strength(node.type):
            node.type = str(row["type"])
    return tree


def _merge(into: dict[str, Requirement], tree: Tree) -> None:
    """Add ``tree`` to ``into``: the stronger Type wins, sequence items hold both sets."""
    for keyword, node in tree.items():
        mine = into.get(keyword)
        if mine is None:
            into[keyword] = mine = Requirement(node.type, node.module)
        elif _strength(node.type) > _strength(mine.type):
            mine.type, mine.module = node.type, node.module
        _merge(mine.children, node.children)


def modules_in_use(sop_class_uid: str, present: Collection[str]) -> tuple[str, ...]:
    """Modules of the IOD that must be complete: the Mandatory ones and every other one holding a
    top-level attribute in ``present`` (keywords). Empty for a SOP Class the tables lack."""
    iod = iod_of(sop_class_uid)
    if iod is None:
        return ()
    used = []
    for module in get_iod_module_map()[iod]:
        key = module["key"]
        if module["usage"] == "M" or any(k in present for k in module_tree(key)):
            used.append(key)
    return tuple(used)


@lru_cache(maxsize=256)
def _tree_of(modules: tuple[str, ...]) -> dict[str, Requirement]:
    tree: dict[str, Requirement] = {}
    for module in modules:
        _merge(tree, module_tree(module))
    return tree


def requirements(sop_class_uid: str, present: Collection[str]) -> Tree:
    """What the IOD of ``sop_class_uid`` requires, as a tree over the modules in use (see
    :func:`modules_in_use`). Empty for a SOP Class the tables lack (nothing is then protected)."""
    return _tree_of(modules_in_use(sop_class_uid, present))


def requirements_of(ds: Dataset) -> Tree:
    """:func:`requirements` for the attributes ``ds`` holds now."""
    return requirements(str(ds.get("SOPClassUID", "")), {el.keyword for el in ds if el.keyword})


def _is_empty(value: object) -> bool:
    return value is None or value == "" or value == b"" or (isinstance(value, (list, Sequence))
                                                            and len(value) == 0)


def _walk_errors(ds: Dataset, tree: Tree, path: str, macros: bool = False) -> Iterator[str]:
    for keyword, node in tree.items():
        where = f"{path}{keyword}"
        if keyword not in ds:
            if node.type in ("1", "2") and not macros:  # conditions of 1C/2C are not evaluated
                yield f"Missing attribute Type {node.type} Required Element=<{where}> Module=<{node.module}>"
            continue
        value = ds[keyword].value
        if node.needs_value and _is_empty(value):
            yield (f"Empty attribute (no value) Type {node.type} Required Element=<{where}> "
                   f"Module=<{node.module}>")
        if node.children and isinstance(value, Sequence):
            for item in value:
                yield from _walk_errors(item, node.children, f"{where}/", keyword in FUNCTIONAL_GROUPS)


def structural_errors(ds: Dataset) -> set[str]:
    """The IOD rules of this module broken by ``ds``: a Type 1 or 2 attribute of a module in use
    missing (at any depth, inside the sequences present; functional group macros excepted, see
    :data:`FUNCTIONAL_GROUPS`), a Type 1/1C attribute without a value.
    Raises KeyError for a SOP Class the tables lack (nothing could be checked)."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if iod_of(sop_class) is None:
        raise KeyError(f"no IOD in highdicom's tables for SOP Class {sop_class or '(none)'}")
    return set(_walk_errors(ds, requirements_of(ds), ""))
