"""A Jinja sandbox that stops itself: every render has a time and a size budget.

Operators write message content, and one render runs inside a dispatch batch
next to every other template's deliveries, so a template must not be able to
hang a worker or fill its memory. The immutable sandbox already refuses attribute
tricks; on top of it this environment:

* checks the render's deadline at every loop iteration (``{% for %}`` is rewritten
  to iterate through the ``budget_iter`` filter), every call
  (functions, methods, macros -- so recursion too) and filter;
* refuses, before computing them, values longer than the size budget: string and
  list multiplication, ``+``, ``~``, ``%`` formatting, padding methods and
  filters (``center``, ``indent``, ``join``, ``replace``, ...) and huge numbers;
* stops streaming output once a part is longer than its budget.

Everything runs in the rendering thread: the budget is a ``ContextVar`` set by
:func:`render_within`, so concurrent renders in other threads keep their own.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes, pass_context
from jinja2.runtime import Context
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg
from jinja2.visitor import NodeTransformer

MAX_ITEMS = MAX_RANGE  # longest list/tuple a template may build (the sandbox's range cap)
MAX_INT_BITS = 100_000  # ~30,000 digits: more than any message needs


class RenderError(ValueError):
    """Content could not be rendered; the message says where and why."""


class RenderBudgetError(RenderError):
    """A render went over its time or size budget (a delivery ``failed`` with this reason)."""


class RenderTooSlow(RenderBudgetError):
    pass


class RenderTooLong(RenderBudgetError):
    pass


MAX_CALL_DEPTH = 50


@dataclass
class Budget:
    seconds: float
    max_chars: int
    deadline: float = 0.0
    depth: int = 0  # calls (macros, functions, methods) now in progress

    def check_time(self) -> None:
        if time.perf_counter() > self.deadline:
            raise RenderTooSlow(
                f"渲染超时：超过 {self.seconds * 1000:.0f} ms 的渲染预算 "
                f"(rendering took longer than its {self.seconds * 1000:.0f} ms budget: "
                "a loop, recursion or filter does too much work)"
            )

    def too_long(self, length: int, what: str = "text") -> RenderTooLong:
        return RenderTooLong(
            f"内容过长：{what} 超过 {self.max_chars:,} 个字符的上限 "
            f"({what} would be {length:,} characters, over the {self.max_chars:,} "
            "character budget of one message part)"
        )

    def check_text(self, length: int, what: str = "text") -> None:
        if length > self.max_chars:
            raise self.too_long(length, what)

    def counted(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """``iterable``, checking the deadline at every item."""
        for item in iterable:
            self.check_time()
            yield item

    def check_value(self, value: Any) -> Any:
        if isinstance(value, str):
            self.check_text(len(value))
        elif isinstance(value, list | tuple) and len(value) > MAX_ITEMS:
            raise self.too_long(len(value), "a list")
        elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise RenderTooLong(
                f"数字过大 (a number with {value.bit_length():,} bits is too large)"
            )
        return value


_current: ContextVar[Budget | None] = ContextVar("sopbot_render_budget", default=None)


# -- prechecks: refuse what would be too big before it is computed -------------------

# widths and precisions of %-formatting and of str.format fields
_PERCENT_SPEC = re.compile(r"%[-+ #0]*(\d*)(?:\.(\d+))?")
_BRACE_SPEC = re.compile(r"\{[^{}]*:[^{}\d]*(\d*)(?:[,_]?\.(\d+))?")


def _widest(fmt: str, spec: re.Pattern[str]) -> int:
    """The widest field a format string asks for (``%0100000000d`` → 100000000)."""
    widest = 0
    for match in spec.finditer(fmt):
        for digits in match.groups():
            if digits:
                widest = max(widest, int(digits) if len(digits) < 12 else 10**12)
    return widest


def _seq_len(value: Any) -> int | None:
    try:
        return len(value)
    except TypeError:
        return None


def _check_binop(b: Budget, operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(times, int):
                size = len(seq) * max(times, 0)
                if isinstance(seq, str):
                    b.check_text(size)
                elif size > MAX_ITEMS:
                    raise b.too_long(size, "a list")
        ints = isinstance(left, int) and isinstance(right, int)
        if ints and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise RenderTooLong("数字过大 (the product of these numbers is too large)")
    elif operator == "**":
        ints = isinstance(left, int) and isinstance(right, int) and abs(left) > 1
        if ints and right * left.bit_length() > MAX_INT_BITS:
            raise RenderTooLong(f"数字过大 ({left} ** {right} is too large)")
    elif operator == "+":
        if isinstance(left, str) and isinstance(right, str):
            b.check_text(len(left) + len(right))
        elif (
            isinstance(left, list | tuple)
            and isinstance(right, list | tuple)
            and len(left) + len(right) > MAX_ITEMS
        ):
            raise b.too_long(len(left) + len(right), "a list")
    elif operator == "%" and isinstance(left, str):
        b.check_text(_widest(left, _PERCENT_SPEC), "a formatted value")


def _check_str_method(b: Budget, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Padding, joining and replacing methods of a string (``'a'.center(10**8)``)."""
    obj = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
    owner = getattr(obj, "__self__", None)
    if not isinstance(owner, str):
        return
    name = getattr(obj, "__name__", "")
    values = [*args, *kwargs.values()]
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool):
            b.check_text(value, f"str.{name}()")
    if name in {"format", "format_map"}:
        b.check_text(_widest(owner, _BRACE_SPEC), "a formatted value")
    elif name == "join" and args:
        count = _seq_len(args[0])
        if count:
            b.check_text(len(owner) * (count - 1), "str.join()")
    elif name == "replace" and len(args) >= 2:
        _check_replace(b, owner, args[0], args[1])


def _check_replace(b: Budget, text: Any, old: Any, new: Any) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        hits = text.count(old) if old else len(text) + 1
        b.check_text(len(text) + hits * max(len(new) - len(old), 0), "replace")


def _check_filter(b: Budget, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    value, rest = (args[0], list(args[1:])) if args else (None, [])
    options = [*rest, *kwargs.values()]
    if name == "center":
        for width in options:
            if isinstance(width, int):
                b.check_text(width, "center")
    elif name == "indent" and isinstance(value, str):
        width = options[0] if options else 4
        pad = width if isinstance(width, int) else len(str(width))
        b.check_text(len(value) + pad * (value.count("\n") + 1), "indent")
    elif name == "format" and isinstance(value, str):
        b.check_text(_widest(value, _PERCENT_SPEC), "a formatted value")
        for option in options:
            if isinstance(option, int):
                b.check_text(option, "a formatted value")
    elif name == "join":
        separator = rest[0] if rest else kwargs.get("d", "")
        count = _seq_len(value)
        if isinstance(separator, str) and count:
            b.check_text(len(separator) * (count - 1), "join")
    elif name == "replace" and len(rest) >= 2:
        _check_replace(b, value, rest[0], rest[1])
    elif name == "wordwrap" and isinstance(value, str):
        wrap = kwargs.get("wrapstring", rest[2] if len(rest) > 2 else None)
        if isinstance(wrap, str):
            b.check_text(len(value) * (len(wrap) + 1), "wordwrap")


def _guarded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` checking the budget before and after it runs. Marked as needing
    the render context, which also keeps Jinja from running it while compiling
    (it folds constant filter calls, outside any budget)."""
    passes = _PassArg.from_obj(func)

    @pass_context
    def guarded(context: Context, *args: Any, **kwargs: Any) -> Any:
        lead: tuple[Any, ...] = ()
        if passes is _PassArg.context:
            lead = (context,)
        elif passes is _PassArg.eval_context:
            lead = (context.eval_ctx,)
        elif passes is _PassArg.environment:
            lead = (context.environment,)
        b = _current.get()
        if b is None:
            return func(*lead, *args, **kwargs)
        b.check_time()
        if name == "join" and args and _seq_len(args[0]) is None:
            args = (list(b.counted(args[0])), *args[1:])  # a generator's length
        _check_filter(b, name, args, kwargs)
        return b.check_value(func(*lead, *args, **kwargs))

    guarded.__name__ = guarded.__qualname__ = name
    return guarded


# -- the environment ---------------------------------------------------------------


class _Instrument(NodeTransformer):
    """Loops iterate through the ``budget_iter`` filter; ``~`` joins through
    ``budget_concat`` (filters are called directly, not through the sandbox's
    call checks, and cannot be redefined by a template)."""

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802 - visitor protocol
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "budget_iter", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        values = nodes.List(list(node.nodes), lineno=node.lineno)
        return nodes.Filter(values, "budget_concat", [], [], None, None, lineno=node.lineno)


class BudgetedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        # Jinja's optimizer folds constant expressions while compiling, outside
        # any budget (``'x'|center(10**8)`` would be built right there): off.
        super().__init__(optimized=False, **options)
        self.globals.pop("lipsum", None)  # filler text of any length
        self.filters = {name: _guarded_filter(name, f) for name, f in self.filters.items()}
        self.filters["budget_iter"] = _budget_iter
        self.filters["budget_concat"] = _budget_concat

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        return _Instrument().visit(tree)  # type: ignore[no-any-return]

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        b = _current.get()
        if b is not None:
            b.check_time()
            _check_binop(b, operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        b = _current.get()
        if b is None:
            return super().call(__context, __obj, *args, **kwargs)
        b.check_time()
        _check_str_method(b, __obj, args, kwargs)
        # Recursion fails here, fast and the same way everywhere, long before
        # Python's own limit (whose error unwinds a thousand template frames).
        if b.depth >= MAX_CALL_DEPTH:
            raise RenderBudgetError(
                f"渲染递归过深：调用嵌套超过 {MAX_CALL_DEPTH} 层 "
                f"(a macro or function calls itself more than {MAX_CALL_DEPTH} levels deep)"
            )
        b.depth += 1
        try:
            return b.check_value(super().call(__context, __obj, *args, **kwargs))
        finally:
            b.depth -= 1


def _budget_iter(iterable: Any) -> Any:
    b = _current.get()
    return iterable if b is None else b.counted(iterable)


@pass_context  # never folded while compiling
def _budget_concat(context: Context, values: list[Any]) -> str:
    texts = [str(v) for v in values]
    b = _current.get()
    if b is not None:
        b.check_text(sum(map(len, texts)))
    return "".join(texts)


def render_within(template: Any, context: dict[str, Any], seconds: float, max_chars: int) -> str:
    """Render ``template`` under a fresh budget, stopping once its output is
    longer than ``max_chars`` or it runs past ``seconds``."""
    b = Budget(seconds, max_chars, time.perf_counter() + seconds)
    token = _current.set(b)
    try:
        return _stream(template, context, b)
    finally:
        _current.reset(token)


def _stream(template: Any, context: dict[str, Any], b: Budget) -> str:
    out: list[str] = []
    length = 0
    for piece in template.root_render_func(template.new_context(context)):
        length += len(piece)
        if length > b.max_chars:
            raise b.too_long(length)
        out.append(piece)
    b.check_time()
    return "".join(out)
