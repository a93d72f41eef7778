"""The template sandbox, bounded: no value a template builds may grow past a size a message
could ever need, and the check happens *before* the value is built.

Jinja's own sandbox keeps templates away from Python internals and caps ``range()``, but
``'a' * 10**9``, ``10 ** 10**9``, ``'x' | center(10**9)`` or ``'%999999999d' % 1`` would still
allocate gigabytes, and Jinja folds constant expressions when it compiles, so a flow file could
stall the process that merely validates it. Here the operators are intercepted (an intercepted
operator is also never folded at compile time) and the padding and joining filters and string
methods are checked on their arguments; a refusal is a :class:`ValueTooBig`, which a render
reports as a failed render and a load as ``file:line``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import jinja2
from jinja2 import filters as jfilters
from jinja2.sandbox import ImmutableSandboxedEnvironment

#: The most characters (or list items) one value in a template may have: about 650 SMS
#: segments, far more than any message may be, while a CRM answer (64 KiB at most) still fits.
MAX_VALUE = 100_000
#: The largest whole number a template may compute (about 4,900 decimal digits).
MAX_INT_BITS = 16_384
#: Widths and precisions: ``%-08.3f`` (and ``%(name)5s``), and the spec of ``{0:>12.3}``.
_PCT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d*)(?:\.(\d*))?")
_BRACE_SPEC = re.compile(r"\{[^{}:]*:([^{}]*)\}")
_DIGITS = re.compile(r"\d+")
_ARG_WIDTH = re.compile(r"%[-#0 +]*\*|%[-#0 +]*\d*\.\*|\{[^{}]*\{")


class ValueTooBig(ValueError):
    """A template would build a value over the bounds above."""


def _size(value: object) -> int | None:
    """The length of a text or sequence value, None for anything else."""
    return len(value) if isinstance(value, str | list | tuple) else None


def _refuse_size(n: int, what: str = "a value") -> None:
    if n > MAX_VALUE:
        raise ValueTooBig(f"{what} of {n:,} characters is too long (the limit is {MAX_VALUE:,})")


def _check_format(fmt: str, args: Iterable[Any] = ()) -> None:
    """``'%999999999d'`` or ``'{:>999999999}'``: a width or precision that pads past the bound;
    or one taken from the arguments (``'%*d'``, ``'{0:{1}}'``) when an argument is that big."""
    specs = [w for m in _PCT_SPEC.finditer(fmt) for w in m.groups() if w]
    specs += [d for spec in _BRACE_SPEC.findall(fmt) for d in _DIGITS.findall(spec)]
    for digits in specs:
        if len(digits) > 6 or int(digits) > MAX_VALUE:
            _refuse_size(int(digits[:12]), "a padded value")
    if _ARG_WIDTH.search(fmt):
        for a in args:
            if isinstance(a, int) and a > MAX_VALUE:
                _refuse_size(a, "a padded value")


def check_binop(op: str, left: Any, right: Any) -> None:
    """Refuse ``left op right`` if its result would be over the bounds (before computing it)."""
    if op == "*":
        for seq, n in ((left, right), (right, left)):
            size = _size(seq)
            if size is not None and isinstance(n, int):
                _refuse_size(size * n)
        if isinstance(left, int) and isinstance(right, int):
            _check_bits(abs(left).bit_length() + abs(right).bit_length())
    elif op == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        _check_bits(right * math.log2(abs(left)))
    elif op == "+":
        a, b = _size(left), _size(right)
        if a is not None and b is not None:
            _refuse_size(a + b)
    elif op == "%" and isinstance(left, str):
        _check_format(left, right if isinstance(right, tuple) else (right,))


def _check_bits(bits: float) -> None:
    if bits > MAX_INT_BITS:
        raise ValueTooBig(f"a number of about {int(bits * 0.30103):,} digits is too large")


def _estimate_join(sep: str, items: Iterable[Any]) -> list[Any]:
    seq = list(items)
    _refuse_size(len(sep) * max(len(seq) - 1, 0) + sum(len(str(x)) for x in seq))
    return seq


def _estimate_replace(s: str, old: str, new: str, count: int = -1) -> None:
    hits = s.count(old) if old else len(s) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    _refuse_size(len(s) + hits * max(len(new) - len(old), 0))


def _width(s: str, width: object = 0, *args: object, **kwargs: object) -> None:
    _refuse_size(width if isinstance(width, int) else 0)


def _tabs(s: str, size: object = 8, *args: object, **kwargs: object) -> None:
    _refuse_size(len(s) + s.count("\t") * (size if isinstance(size, int) else 0))


def _replace(s: str, old: object = "", new: object = "", count: object = -1, *args: object) -> None:
    _estimate_replace(s, str(old), str(new), count if isinstance(count, int) else -1)


def _format(s: str, *args: object, **kwargs: object) -> None:
    values = [*args, *kwargs.values()]
    if len(args) == 1 and isinstance(args[0], dict):  # format_map
        values += list(args[0].values())
    _check_format(s, values)


#: str methods that can build a large value from small arguments, checked before they run.
_STR_CHECKS: dict[str, Callable[..., None]] = {
    "ljust": _width, "rjust": _width, "center": _width, "zfill": _width, "expandtabs": _tabs,
    "replace": _replace, "format": _format, "format_map": _format,
}  # fmt: skip


def _filter_center(value: str, width: int = 80) -> str:
    _refuse_size(width if isinstance(width, int) else 0)
    return jfilters.do_center(value, width)


def _filter_indent(s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    pad = width if isinstance(width, int) else len(str(width))
    _refuse_size(len(str(s)) + pad * (str(s).count("\n") + 1))
    return jfilters.do_indent(s, width, first, blank)


def _filter_format(value: str, *args: Any, **kwargs: Any) -> str:
    _check_format(str(value), [*args, *kwargs.values()])
    return jfilters.do_format(value, *args, **kwargs)


def _filter_batch(value: Iterable[Any], linecount: int, fill_with: Any = None) -> Any:
    _refuse_size(linecount if isinstance(linecount, int) else 0, "a batch")
    return jfilters.do_batch(value, linecount, fill_with)


def _filter_slice(value: Iterable[Any], slices: int, fill_with: Any = None) -> Any:
    _refuse_size(slices if isinstance(slices, int) else 0, "a slicing")
    return jfilters.do_slice(value, slices, fill_with)


@jinja2.pass_eval_context
def _filter_join(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: Any = None) -> str:
    seq = list(value)
    if attribute is None:
        _estimate_join(str(d), seq)
    return str(jfilters.do_join(eval_ctx, seq, d, attribute))


@jinja2.pass_eval_context
def _filter_replace(eval_ctx: Any, s: str, old: str, new: str, count: int | None = None) -> str:
    _estimate_replace(str(s), str(old), str(new), -1 if count is None else count)
    return jfilters.do_replace(eval_ctx, s, old, new, count)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with sizes checked before values are built (see above)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters.update(
            center=_filter_center,
            indent=_filter_indent,
            format=_filter_format,
            join=_filter_join,
            replace=_filter_replace,
            batch=_filter_batch,
            slice=_filter_slice,
        )
        self.globals.pop("lipsum", None)  # lipsum(10**9) writes gigabytes of Latin

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(
        __self,
        __context: jinja2.runtime.Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        target = getattr(__obj, "__wrapped__", __obj)  # str.format comes wrapped by the sandbox
        owner = getattr(target, "__self__", None)
        check = _STR_CHECKS.get(getattr(target, "__name__", "")) if isinstance(owner, str) else None
        if check is not None:
            check(owner, *args, **kwargs)
        if isinstance(owner, str) and getattr(target, "__name__", "") == "join" and args:
            args = (_estimate_join(owner, args[0]), *args[1:])
        return super().call(__context, __obj, *args, **kwargs)
