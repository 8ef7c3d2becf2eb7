"""The tests and benchmarks contain no check that never runs: no ``assert`` whose message (evaluated
only when the assertion already failed) holds what looks like a check, and no ``assert`` of a
non-empty tuple (always true).

``assert code == 0, err and "x" in out`` checks only ``code == 0``; ``"x" in out`` is part of the
message. Ruff's F631 (``assert (x, "msg")``) and PLW0129 (``assert "msg"``) are enabled in
pyproject.toml; no ruff rule looks into the message, so :func:`misplaced_checks` does.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ["tests", "benchmarks"]

# the last name of a called function that checks rather than shows a value
CHECK_NAMES = {"all", "any", "bool", "isinstance", "issubclass", "hasattr", "callable", "equal", "allclose",
               "array_equal", "array_equiv", "startswith", "endswith", "exists", "raises", "approx"}
CHECK_PREFIXES = ("assert", "check", "is")


def _called_name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _looks_like_a_check(node: ast.AST) -> str | None:
    """What in ``node`` (an assert message) looks like a check, or None. The values shown by an
    f-string are not looked into: ``f"{a == b}"`` shows a value."""
    if isinstance(node, ast.JoinedStr):
        return None
    if isinstance(node, ast.Compare):
        return "a comparison"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return "a `not`"
    if isinstance(node, ast.Call):
        name = _called_name(node)
        if name in CHECK_NAMES or name.startswith(CHECK_PREFIXES):
            return f"a call of {name}()"
    for child in ast.iter_child_nodes(node):
        found = _looks_like_a_check(child)
        if found:
            return found
    return None


def misplaced_checks(source: str, filename: str = "<string>") -> list[str]:
    """``"file:line: why"`` for each ``assert`` of a non-empty tuple, and each ``assert`` whose
    message holds a comparison, a ``not``, or a call of a checking function (``all``, ``isinstance``,
    ``torch.equal``, ``x.exists``, ``is…``/``assert…``/``check…``), alone or inside ``and``/``or``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Assert):
            continue
        if isinstance(node.test, ast.Tuple) and node.test.elts:
            found.append(f"{filename}:{node.lineno}: assert of a non-empty tuple is always true")
        what = None if node.msg is None else _looks_like_a_check(node.msg)
        if what:
            found.append(f"{filename}:{node.lineno}: the message holds {what}, which is never checked")
    return found


def scanned_files() -> list[Path]:
    return [p for folder in SCANNED for p in sorted((ROOT / folder).glob("*.py"))]


def test_no_check_sits_in_an_assert_message():
    """Every tests/*.py and benchmarks/*.py file is free of misplaced checks."""
    files = scanned_files()
    assert len(files) > 30  # the glob found the folders
    offenders = [f for p in files for f in misplaced_checks(p.read_text(encoding="utf-8"),
                                                            str(p.relative_to(ROOT)))]
    assert offenders == []


PLANTED = '''
def test_planted(code, err, so, a, b):
    assert code == 0, err and "x" in so
    assert code == 0, err or so == ""
    assert code == 0, torch.equal(a, b)
    assert code == 0, (err, a.is_file())
    assert code == 0, not so
    assert (code == 0, "the code")
'''

CLEAN = '''
def test_clean(code, err, so, diff, a):
    assert code == 0, err
    assert code == 0 and "x" in so, err
    assert bool((diff <= 1).all()), float(diff.max())
    assert code == 0, f"code {code}, ok {code == 0}"
    assert a, (err, so)
    assert ()
    assert code == 0, err or so
'''


def test_scanner_flags_planted_checks():
    """Each planted misplaced check is reported at its line, with what was found."""
    found = misplaced_checks(PLANTED, "planted.py")
    assert found == [
        "planted.py:3: the message holds a comparison, which is never checked",
        "planted.py:4: the message holds a comparison, which is never checked",
        "planted.py:5: the message holds a call of equal(), which is never checked",
        "planted.py:6: the message holds a call of is_file(), which is never checked",
        "planted.py:7: the message holds a `not`, which is never checked",
        "planted.py:8: assert of a non-empty tuple is always true",
    ]


def test_scanner_passes_ordinary_messages():
    """Messages that only show values (names, float(), f-strings, a tuple of names) pass, as
    do checks in the test itself and the empty tuple."""
    assert misplaced_checks(CLEAN, "clean.py") == []
