# -*- test-case-name: tests.test_config -*-
"""
Read a YAML config file into checked setting values, naming the file, line
and key of anything refused.
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, Optional

from easymesh.config.meshfile import MATCH_KEYS, MESH_KEYS, MESH_SECTIONS, Node, construct, readMesh
from easymesh.config.model import ConfigError
from easymesh.config.settings import BY_NAME

#: The keys a config file accepts at its top level: every setting (each a
#: flag too), the mesh keys and C{authorization}.
TOP_LEVEL_KEYS = frozenset(BY_NAME) | MESH_KEYS | {"authorization"}


def fileSections() -> Dict[str, FrozenSet[str]]:
    """
    Every part of a config file and the keys it accepts, by where it is
    (C{""} for the top level; C{NAME} for a name the file chooses, C{[]}
    for a list's items), as the reader checks them.
    """
    from easymesh.authz import AUTHORIZATION_SECTIONS

    sections = {"": TOP_LEVEL_KEYS, **MESH_SECTIONS, **AUTHORIZATION_SECTIONS}
    rule = "authorization.LISTENER.rules[]"
    sections[f"{rule}.match"] = MATCH_KEYS
    sections[f"{rule}.match.headers.NAME"] = MESH_SECTIONS["routes.LISTENER[].match.headers.NAME"]
    return sections


class ConfigValues(Dict[str, Any]):
    """
    Checked values keyed by setting name, with the line each was read from
    (C{lines}), so that later checks can name it too; and the routes,
    clusters and path options read by L{easymesh.config.meshfile}
    (C{mesh}: keyword arguments for L{easymesh.config.mesh.MeshConfig}).
    """

    def __init__(self) -> None:
        super().__init__()
        self.lines: Dict[str, int] = {}
        self.mesh: Dict[str, Any] = {}


def readConfigFile(path: str) -> ConfigValues:
    """
    Read and check a config file: a mapping whose keys are setting names.

    @return: Checked values keyed by setting name.
    @raise ConfigError: The file cannot be read, is not YAML, or has an
        unknown key or a bad value.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, f"cannot read the file: {e}") from None
    return parseConfigText(text, path)


def parseConfigText(text: str, name: str) -> ConfigValues:
    """
    Check the text of a config file; see L{readConfigFile}.
    """
    import yaml
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{name}{line}", f"not valid YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(name, f"not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(name, "not valid YAML: nested too deeply") from None
    if root is None:
        return ConfigValues()
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(
            f"{name}:{root.start_mark.line + 1}",
            "the file must be a mapping of setting names to values",
        )
    values = ConfigValues()
    meshNodes: Dict[str, Node] = {}
    authorization: Optional[Node] = None
    for keyNode, valueNode in root.value:
        where = f"{name}:{keyNode.start_mark.line + 1}"
        if not isinstance(keyNode, yaml.ScalarNode):
            raise ConfigError(where, "keys must be names")
        key = keyNode.value
        if isinstance(key, str):
            # Settings are spelt with dashes and mesh keys with underscores;
            # either spelling is accepted for both.
            if key.replace("_", "-") in BY_NAME:
                key = key.replace("_", "-")
            elif key.replace("-", "_") in MESH_KEYS:
                key = key.replace("-", "_")
        if key == "authorization":
            if authorization is not None:
                raise ConfigError(where, f"key {key!r} is given twice")
            # Read once the listeners are known.
            authorization = Node(valueNode, name, key)
            continue
        if key in MESH_KEYS:
            if key in meshNodes:
                raise ConfigError(where, f"key {key!r} is given twice")
            meshNodes[key] = Node(valueNode, name, key)
            continue
        setting = BY_NAME.get(key)
        if setting is None:
            raise ConfigError(
                where, f"unknown key {key!r} (known keys: {', '.join(sorted(TOP_LEVEL_KEYS))})"
            )
        if key in values:
            raise ConfigError(where, f"key {key!r} is given twice")
        try:
            values[key] = setting.kind.fromValue(construct(valueNode, deep=True))
        except ValueError as e:
            raise ConfigError(where, f"key {key!r}: {e}") from None
        values.lines[key] = keyNode.start_mark.line + 1
    values.mesh = readMesh(meshNodes)
    if authorization is not None:
        from easymesh.authz import readAuthorization
        from easymesh.config.mesh import MeshConfig

        listeners = MeshConfig(listeners=values.mesh.get("listeners", ())).httpListenerNames()
        values.mesh["authorization"] = readAuthorization(authorization, listeners)
    return values
