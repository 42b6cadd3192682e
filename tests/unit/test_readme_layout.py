"""The README's "Where things are" names every package of the tree, one line each, and nothing that is
not there: a package added, moved or removed without the README fails here."""

from __future__ import annotations

import re

from tests.processes import ROOT


def _readme_packages() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    return [match.group(1) for match in re.finditer(r"^(\S+)/\s", block, re.MULTILINE)]


def _tree_packages() -> set[str]:
    found = set()
    for top in ("web", "workers", "shared"):
        for init in (ROOT / top).rglob("__init__.py"):
            package = init.parent.relative_to(ROOT).as_posix()
            if package != "shared":  # the packages inside it are the features
                found.add(package)
    return found


def test_where_things_are_lists_each_package_of_the_tree_once():
    listed = _readme_packages()
    assert len(listed) == len(set(listed)), listed
    code_packages = {name for name in listed if name.split("/")[0] in ("web", "workers", "shared")}
    assert code_packages == _tree_packages()
    for other in {name for name in listed} - code_packages:
        assert (ROOT / other).is_dir(), other
