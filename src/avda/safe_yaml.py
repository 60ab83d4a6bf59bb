"""Read YAML that others wrote (sweep specs, a run's ``config.yaml``, ``--set`` values) with
bounded cost.

``yaml.safe_load`` runs no code, but aliases make it cheap to write a document that is tiny as
text and huge as a tree: ``a: &a [x, x, x]``, ``b: &b [*a, *a, *a]``... ("billion laughs"). The
loaded object shares the repeated lists, so it is small, but everything that walks it (the line
index of a spec, validation, an error message quoting a value, ``yaml.dump``) visits each
expansion: time exponential in the number of lines. An alias to itself makes the walk endless.

:func:`load_document` therefore refuses, in one line naming the file:

* a text longer than :data:`MAX_YAML_BYTES` (4 MiB; specs and run configs are a few KB);
* a document whose tree, aliases expanded, has more than :data:`MAX_YAML_NODES` (100,000) nodes,
  or an alias inside its own anchor (a recursive document);
* nesting deeper than the parser's recursion allows, and numbers of more than 4300 digits.

The check runs on the composed node graph, before any Python object is built, in time linear in
the size of the text (each node's expanded size is computed once).
"""

from __future__ import annotations

from typing import Any

import yaml

from avda.errors import AvdaError, ConfigError

MAX_YAML_BYTES = 4 << 20
"""Longest YAML text avda reads (bytes of UTF-8)."""
MAX_YAML_NODES = 100_000
"""Most nodes a YAML document may have once its aliases are expanded."""


def _expanded_size(root: yaml.Node, source: str, error: type[AvdaError]) -> int:
    """Nodes of ``root`` with every alias expanded, stopping past :data:`MAX_YAML_NODES`."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            size = 1 + sum(sizes[id(child)] for child in _children(node))
            if size > MAX_YAML_NODES:
                raise error(
                    f"{source}: the YAML expands to more than {MAX_YAML_NODES:,} nodes through "
                    "its aliases (*name); avda refuses it: write the values out, or use fewer "
                    "nested aliases"
                )
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise error(
                f"{source}: the YAML has an alias inside its own anchor (a recursive document, "
                f"line {node.start_mark.line + 1}); avda refuses it"
            )
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def load_document(
    text: str, *, source: str, error: type[AvdaError] = ConfigError
) -> tuple[Any, yaml.Node | None]:
    """Parse one YAML document safely: ``(data, composed root node)``; refusals raise ``error``
    (a one-line message naming ``source``), and so does invalid YAML."""
    if len(text) > MAX_YAML_BYTES or len(text.encode("utf-8", "replace")) > MAX_YAML_BYTES:
        raise error(
            f"{source}: the YAML text is larger than {MAX_YAML_BYTES >> 20} MiB; avda refuses it "
            "(specs and run configs are a few KB)"
        )
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _expanded_size(node, source, error)
        return loader.construct_document(node), node
    except yaml.YAMLError as exc:
        message = " ".join(str(exc).split())
        raise error(f"{source} is not valid YAML: {message}") from None
    except AvdaError:
        raise
    except RecursionError:
        raise error(f"{source}: the YAML nests too deeply; avda refuses it") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise error(f"{source}: a YAML value cannot be read: {exc}") from None
    finally:
        loader.dispose()


def load(text: str, *, source: str, error: type[AvdaError] = ConfigError) -> Any:
    """:func:`load_document` without the node: the drop-in for ``yaml.safe_load``."""
    return load_document(text, source=source, error=error)[0]
