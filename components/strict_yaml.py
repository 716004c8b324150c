"""YAML read as DVC reads params: strictly.

PyYAML keeps the last of two equal keys where DVC refuses the file, so the flows and DVC would
disagree about a value; and a few KB of nested aliases expand to gigabytes. Both are errors here.
"""

from __future__ import annotations

from typing import Any

import yaml


class _StrictLoader(yaml.SafeLoader):
    """YAML as DVC reads it: a key given twice in one mapping is an error (PyYAML keeps the
    last), and so is an alias: a few KB of nested aliases expand to gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"line {mark.line + 1}: YAML aliases (*name) are not "
                                 "accepted in params; write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.YAMLError(f"line {key_node.start_mark.line + 1}: the key {key!r} "
                                     "appears twice in one section")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    """The YAML document in `text`; raises yaml.YAMLError naming the line of a duplicate key
    or an alias."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
