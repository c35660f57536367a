"""fastgen.kernels when fastgen runs from its source tree.

The Triton kernels live in the top-level kernels/ folder (the project layout: one stem per op in
every layer); an installed fastgen ships them as the package fastgen.kernels (setup.py maps the
name to the folder with package_dir, so a wheel holds fastgen/kernels/*.py). In the source tree
-- PYTHONPATH at the repository root, a run from the root, or an editable install (`pip install
-e .`, which imports fastgen from the tree) -- fastgen/ has no kernels/ folder, and this finder
serves the one name fastgen.kernels from the tree's kernels/ (its submodules then import from
there as from any package). No link is needed, so the tree works the same on every file system
and in every clone. An installed fastgen (fastgen/kernels/ present) never installs it.
"""
import importlib.abc
import importlib.util
import os
import sys

NAME = "fastgen.kernels"
_PACKAGE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_PACKAGE)
KERNELS = os.path.join(ROOT, "kernels")


class KernelsFinder(importlib.abc.MetaPathFinder):
    """Finds fastgen.kernels in <source tree>/kernels (and nothing else)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != NAME:
            return None
        return importlib.util.spec_from_file_location(NAME, os.path.join(KERNELS, "__init__.py"),
                                                      submodule_search_locations=[KERNELS])


def in_source_tree():
    """Whether this fastgen is the source tree's (kernels/ and setup.py beside the package, no
    fastgen/kernels/ inside it)."""
    return (not os.path.isdir(os.path.join(_PACKAGE, "kernels"))
            and os.path.isfile(os.path.join(KERNELS, "__init__.py"))
            and os.path.isfile(os.path.join(ROOT, "setup.py")))


def install():
    # first on sys.meta_path: ahead of an editable install's finder of another tree
    if in_source_tree() and not any(isinstance(f, KernelsFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, KernelsFinder())
