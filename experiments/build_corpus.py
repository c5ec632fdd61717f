"""Builds the shipped byte-level corpus from the Python standard library's own text.

Sources (both under the PSF License v2, which allows redistribution with its notice):

1. ``pydoc_data/topics.py``: the reference-manual topics that ``help()`` shows.
2. Docstrings of the pure-Python standard-library modules, read with ``ast`` (nothing
   is imported): module, class and function docstrings, dedented, deduplicated.

Each document is split off by a stable hash of its title (``sha256(title)[0] < 13``,
i.e. ~5% of documents) into the held-out set. Documents are joined with ``\\n\\n``
(a document never contains a blank line: internal blank lines are collapsed to one
newline), encoded as UTF-8, gzip-compressed with a fixed mtime so the output is byte-for-byte
reproducible for a given Python version.

The shipped files were built from the CPython 3.11.7, 3.12.1 and 3.13.0 standard
libraries (in that order; see ``lookahead_jax/data/SOURCES.md``)::

    python experiments/build_corpus.py --out lookahead_jax/data \\
        --stdlib /root/.pyenv/versions/3.11.7/lib/python3.11 \\
        --stdlib /root/.pyenv/versions/3.12.1/lib/python3.12 \\
        --stdlib /root/.pyenv/versions/3.13.0/lib/python3.13
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import inspect
import pathlib
import re
import sys
import sysconfig

# Directories and files that are not documentation prose, are tests, or are
# not part of the standard library proper.
_SKIP_PARTS = {
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "pydoc_data",
    "turtledemo",
    "ensurepip",
}
_MIN_CHARS = 40  # shorter docstrings are mostly "Return x." boilerplate
_MAX_CHARS = 20_000
_HELDOUT_THRESHOLD = 13  # first sha256 byte < 13  ->  13/256 ~ 5.1% held out


def _normalise(text: str) -> str:
    """Dedents, strips trailing spaces and collapses blank lines so '\\n\\n' only separates docs."""
    text = inspect.cleandoc(text)
    text = text.replace("\r\n", "\n").replace("\t", "    ")
    lines = [line.rstrip() for line in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{2,}", "\n", text)
    return text.strip()


def _keep(text: str) -> bool:
    # Non-ASCII text is kept as UTF-8 bytes: a byte-level model handles it.
    return _MIN_CHARS <= len(text) <= _MAX_CHARS


def topic_documents(stdlib: pathlib.Path) -> list[tuple[str, str]]:
    """``(title, text)`` for every help topic in ``pydoc_data/topics.py`` (parsed, not imported)."""
    tree = ast.parse((stdlib / "pydoc_data" / "topics.py").read_text(encoding="utf-8"))
    docs = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            for key, value in zip(node.value.keys, node.value.values, strict=True):
                if isinstance(key, ast.Constant) and isinstance(value, ast.Constant):
                    text = _normalise(value.value)
                    if _keep(text):
                        docs.append((f"topics:{key.value}", text))
    return docs


def docstring_documents(stdlib: pathlib.Path) -> list[tuple[str, str]]:
    """``(title, text)`` for every module/class/function docstring of the stdlib's .py files."""
    docs = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if _SKIP_PARTS.intersection(rel.parts) or rel.name.startswith("test_"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = rel.with_suffix("").as_posix().replace("/", ".")

        def visit(node: ast.AST, prefix: str, module: str = module) -> None:
            doc = ast.get_docstring(node, clean=False)
            if doc:
                text = _normalise(doc)
                if _keep(text):
                    docs.append((f"doc:{module}{prefix}", text))
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                    visit(child, f"{prefix}.{child.name}")

        visit(tree, "")
    return docs


def is_heldout(title: str) -> bool:
    """The split rule: a document is held out iff the first byte of sha256(title) is < 13."""
    return hashlib.sha256(title.encode("utf-8")).digest()[0] < _HELDOUT_THRESHOLD


def build(stdlibs: list[pathlib.Path], out: pathlib.Path) -> dict[str, int]:
    """Writes ``corpus_{train,heldout}.txt.gz`` into ``out`` and returns size statistics."""
    seen: set[str] = set()
    splits: dict[str, list[str]] = {"train": [], "heldout": []}
    for stdlib in stdlibs:
        for title, text in topic_documents(stdlib) + docstring_documents(stdlib):
            # Deduplicate by text: inherited/copied docstrings appear many times, and
            # the same docstring appears in every Python version.
            if text in seen:
                continue
            seen.add(text)
            # Titles do not name the Python version, so the versions of one docstring
            # always land in the same split: no near-duplicate crosses the split.
            splits["heldout" if is_heldout(title) else "train"].append(text)
    stats = {}
    out.mkdir(parents=True, exist_ok=True)
    for name, texts in splits.items():
        raw = ("\n\n".join(texts) + "\n").encode("utf-8")
        # mtime=0 and no file name in the header: reproducible bytes.
        with (
            (out / f"corpus_{name}.txt.gz").open("wb") as f,
            gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=9) as gz,
        ):
            gz.write(raw)
        stats[f"{name}_docs"] = len(texts)
        stats[f"{name}_bytes"] = len(raw)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="lookahead_jax/data", type=pathlib.Path)
    parser.add_argument(
        "--stdlib",
        action="append",
        type=pathlib.Path,
        help="standard-library directory (repeatable, in order); default: this interpreter's",
    )
    args = parser.parse_args()
    stdlibs = args.stdlib or [pathlib.Path(sysconfig.get_paths()["stdlib"])]
    stats = build(stdlibs, args.out)
    print(f"Python {sys.version.split()[0]}, stdlibs {[str(p) for p in stdlibs]}: {stats}")


if __name__ == "__main__":
    main()
