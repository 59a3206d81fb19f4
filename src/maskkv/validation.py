"""Checks of user-supplied option values, shared by the library entry points and the command lines.

A bad value raises ``ValueError`` naming the option, the allowed range and the value given, before any
work starts. NaN and infinities are rejected explicitly: they pass every ``<``/``>`` test (NaN compares
False) and would otherwise run to the end and print garbage.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return "finite"


def check_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    hint: str = "",
) -> float | int:
    """``value`` as a finite real (or int with ``integer``) within the bounds, else ``ValueError`` naming ``name``.

    ``low``/``high`` are inclusive unless ``low_open``/``high_open``. ``hint`` is appended to the message
    (e.g. what ``0`` or ``None`` would mean instead). Booleans are not numbers here.
    """
    allowed = _interval(low, high, low_open, high_open)
    if integer:
        expected = f"an integer {allowed}" if allowed != "finite" else "an integer"
    elif allowed == "finite":
        expected = "a finite number"
    else:
        expected = allowed if low is not None and high is not None else f"{allowed} and finite"
    tail = f"; {hint}" if hint else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        raise ValueError(f"{name} must be {expected}, got {value!r} ({type(value).__name__}){tail}")
    number = int(value) if integer else float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be {expected}, got {value!r}{tail}")
    if (
        (low is not None and (number <= low if low_open else number < low))
        or (high is not None and (number >= high if high_open else number > high))
    ):
        raise ValueError(f"{name} must be {expected}, got {value!r}{tail}")
    return number


def check_optional(name: str, value: object, **bounds: object) -> float | int | None:
    """:func:`check_number` for options where ``None`` means "unset"."""
    return None if value is None else check_number(name, value, **bounds)  # type: ignore[arg-type]


def click_check(**bounds: Any) -> Callable[[Any, Any, Any], Any]:
    """A click option callback: the value through :func:`check_number`, a bad one as ``click.BadParameter``.

    For the command lines (``callback=click_check(low=0.0)``); the message names the flag.
    """

    def callback(ctx: Any, param: Any, value: Any) -> Any:
        import click

        if value is None:
            return None
        try:
            return check_number(param.opts[0], value, **bounds)
        except ValueError as err:
            raise click.BadParameter(str(err), ctx=ctx, param=param) from None

    return callback
