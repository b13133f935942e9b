"""Wait for a condition by polling it with a deadline (never a bare sleep).

`json_diff(expected, actual)` is a subset match in the spirit of FRR's
topotests json_cmp: every key and value in `expected` must be present in
`actual` (lists match element by element, extra keys are ignored). It returns
the mismatches as readable lines, empty when it matches.
"""
from __future__ import annotations

import time
from typing import Any, Callable


class Timeout(AssertionError):
    pass


def json_diff(expected: Any, actual: Any, path: str = "$") -> list[str]:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {type(actual).__name__}"]
        out = []
        for key, value in expected.items():
            if key not in actual:
                out.append(f"{path}.{key}: missing")
            else:
                out += json_diff(value, actual[key], f"{path}.{key}")
        return out
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{path}: expected a list, got {type(actual).__name__}"]
        if len(actual) < len(expected):
            return [f"{path}: expected at least {len(expected)} items, got {len(actual)}"]
        out = []
        for i, value in enumerate(expected):
            out += json_diff(value, actual[i], f"{path}[{i}]")
        return out
    if expected != actual:
        return [f"{path}: expected {expected!r}, got {actual!r}"]
    return []


def wait_until(fn: Callable[[], Any], timeout: float, interval: float = 0.1,
               what: str = "condition") -> Any:
    """Call `fn` until it returns a truthy value; raise Timeout with its last answer.

    `fn` may also return a list of problems: an empty list means done.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
            done = (last == []) if isinstance(last, list) else bool(last)
        except Exception as e:   # a daemon still starting answers with an error
            last, done = f"{type(e).__name__}: {e}", False
        if done:
            return last
        if time.monotonic() >= deadline:
            detail = "\n  ".join(last) if isinstance(last, list) else repr(last)
            raise Timeout(f"{what} not reached within {timeout:g}s; last answer:\n  {detail}")
        time.sleep(interval)


def wait_json(fn: Callable[[], Any], expected: Any, timeout: float, interval: float = 0.2,
              what: str = "JSON match") -> Any:
    """Retry `fn()` until its JSON answer contains `expected` (subset match)."""
    holder = {}

    def check():
        actual = fn()
        holder["actual"] = actual
        return json_diff(expected, actual)
    wait_until(check, timeout, interval, what)
    return holder["actual"]
