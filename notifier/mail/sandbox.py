"""The marketing sandbox: Jinja's SandboxedEnvironment with every operation metered.

Jinja's sandbox stops a template from reaching Python's internals, but not from spending the
process: nested loops, `'a' * 10**9`, `'x'|center(10**10)` or a string doubled forty times are all
"safe". Here every render runs on a `Budget` (one per e-mail, set with `metered()`):

- STEPS: each loop iteration, call, filter, operator, concatenation and emitted piece is one step;
- CHARS: every string or list the template builds (and everything it emits) is charged by its
  length, cumulatively; operations that can amplify (`*`, `%`, `format`, `center`, `ljust`,
  `rjust`, `zfill`, `indent`, `expandtabs`, `replace`, `join`, `wordwrap`, `batch`, `slice`,
  `extend`, `~`, `+`) are charged with their size BEFORE they build it, so nothing too big is
  ever allocated; an integer argument larger than what is left is refused;
- CPU_SECONDS: the thread's CPU time, checked every few steps.

Loops, `~` and output are metered by rewriting the parsed template (every `for` iterates through
a counting generator, every `~` and every output goes through a metered filter); calls, operators
and subscripts through the sandbox's hooks; filters by wrapping each one. A template that runs out
raises `OverBudget` (a `SecurityError`), whatever construct it uses. See docs/reliability.md.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.filters import FILTERS
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum, pass_context, pass_eval_context
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

MAX_STEPS = 100_000
MAX_CHARS = 4_000_000
CPU_SECONDS = 1.0
MAX_INT_BITS = 4096
# Filters whose work grows faster than their input in pure Python: their input is capped.
MAX_TEXT_FILTER_INPUT = 200_000
_CHECK_EVERY = 64  # steps between two looks at the CPU clock

# Filters whose integer arguments are sizes (a width, a count): one past the budget is refused.
# (Jinja's other filters take integers as values or bounds of what they are given.)
_SIZE_FILTERS = frozenset({"center", "indent", "wordwrap", "batch", "slice", "truncate"})

_ITER, _CONCAT, _EMIT = "notifier_metered_iter", "notifier_metered_concat", "notifier_metered_emit"


class OverBudget(SecurityError):
    """The template used more than its budget of steps, characters or CPU time."""


@dataclass
class Budget:
    """What one render may still spend; `step()` and `charge()` raise OverBudget past it."""

    steps: int = MAX_STEPS
    chars: int = MAX_CHARS
    cpu_seconds: float = CPU_SECONDS
    # Read from the thread's CPU clock (a system call) only from the first check on, every
    # _CHECK_EVERY steps: a short template never pays for it.
    deadline: float | None = field(default=None, init=False)

    def step(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise OverBudget(f"the template takes more than {MAX_STEPS} steps (loops, calls, filters)")
        if self.steps % _CHECK_EVERY == 0:
            now = time.thread_time()
            if self.deadline is None:
                self.deadline = now + self.cpu_seconds
            elif now > self.deadline:
                raise OverBudget(f"the template takes more than {self.cpu_seconds:g} s of CPU time")

    def charge(self, size: int) -> None:
        """Account for `size` characters or items built (call before building when possible)."""
        self.chars -= max(size, 0)
        if self.chars < 0:
            raise OverBudget(f"the template builds more than {MAX_CHARS} characters")

    def number(self, value: Any) -> None:
        """Refuse an integer argument larger than what is left (a width, a count, a repeat)."""
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > self.chars:
            raise OverBudget(f"the number {value} is too large for a newsletter template")


_CURRENT: ContextVar[Budget | None] = ContextVar("notifier_template_budget", default=None)


@contextmanager
def metered(budget: Budget | None = None) -> Iterator[Budget]:
    """Run the renders in the block on one budget (a fresh one unless given)."""
    budget = budget or Budget()
    token = _CURRENT.set(budget)
    try:
        yield budget
    finally:
        _CURRENT.reset(token)


def _budget() -> Budget:
    budget = _CURRENT.get()
    if budget is None:
        raise RuntimeError("a marketing template is rendered only inside sandbox.metered()")
    return budget


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple | dict | set | frozenset) else 0


def _text_size(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(str(value))


def _ints(budget: Budget, args: Iterable[Any]) -> None:
    for arg in args:
        budget.number(arg)


# --- estimates of what an amplifying operation will build --------------------------------------

_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[a-zA-Z%]")
_DIGITS = re.compile(r"\d+")


def _printf_size(fmt: str, args: Any) -> int:
    """An upper bound of `fmt % args` (every field as wide as the widest argument or width)."""
    values = (
        list(args.values()) if isinstance(args, dict) else list(args) if isinstance(args, tuple) else [args]
    )
    widest = max((_text_size(v) for v in values), default=0)
    fields = 0
    for match in _PRINTF.finditer(fmt):
        fields += 1
        for part in match.groups():
            if part == "*":
                widest = max([widest, *(abs(v) for v in values if isinstance(v, int))])
            elif part:
                widest = max(widest, int(part))
    return len(fmt) + fields * widest


def _format_size(fmt: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """An upper bound of `fmt.format(*args, **kwargs)`."""
    values = [*args, *kwargs.values()]
    widest = max((_text_size(v) for v in values), default=0)
    fields = 0
    for _, name, spec, _ in string.Formatter().parse(fmt):
        if name is None:
            continue
        fields += 1
        if spec and "{" in spec:
            widest = max([widest, *(abs(v) for v in values if isinstance(v, int))])
        for digits in _DIGITS.findall(spec or ""):
            widest = max(widest, int(digits))
    return len(fmt) + fields * (widest + 64)


def _replace_size(text: str, old: str, new: str, count: int = -1) -> int:
    times = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        times = min(times, count)
    return len(text) + times * max(len(new) - len(old), 0)


def _join_size(sep: str, items: list[Any]) -> int:
    return sum(_text_size(i) for i in items) + len(sep) * max(len(items) - 1, 0)


def _width(value: Any) -> int:
    return value if isinstance(value, int) else _text_size(value)


def _str_method_size(owner: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """What a `str` method may build, before it builds it (0 when it cannot outgrow its input)."""
    if name in ("center", "ljust", "rjust", "zfill") and args:
        return max(len(owner), _width(args[0]))
    if name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        return len(owner) + owner.count("\t") * max(_width(tabsize), 0)
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        return _replace_size(owner, args[0], args[1], args[2] if len(args) > 2 else -1)
    return 0


# --- the hooks ----------------------------------------------------------------------------------


def _metered_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` (a Jinja filter) charged by what it builds and refused before it builds too much."""
    takes_context = getattr(func, "jinja_pass_arg", None) is not None

    @wraps(func)
    def metered_filter(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        head, rest = (args[:2], args[2:]) if takes_context else (args[:1], args[1:])
        value = head[-1] if head else None
        if name in _SIZE_FILTERS:
            _ints(budget, rest)
            _ints(budget, kwargs.values())
        if name in ("urlize", "wordwrap", "title", "wordcount", "striptags") and (
            _text_size(value) > MAX_TEXT_FILTER_INPUT
        ):
            raise OverBudget(f"the {name} filter takes at most {MAX_TEXT_FILTER_INPUT} characters")
        if name == "join":
            items = list(value) if isinstance(value, Iterable) else value
            sep = rest[0] if rest else kwargs.get("d", "")
            budget.charge(_join_size(str(sep), items) if isinstance(items, list) else 0)
            args = (*head[:-1], items, *rest)
        elif name == "center":
            budget.charge(max(_text_size(value), _width(rest[0] if rest else kwargs.get("width", 80))))
        elif name == "indent":
            width = rest[0] if rest else kwargs.get("width", 4)
            text = str(value)
            budget.charge(len(text) + (text.count("\n") + 1) * max(_width(width), 0))
        elif name == "format":
            budget.charge(_printf_size(str(value), kwargs or tuple(rest)))
        elif name == "replace" and len(rest) >= 2:
            budget.charge(_replace_size(str(value), str(rest[0]), str(rest[1]), *rest[2:3]))
        elif name == "wordwrap":
            wrapstring = rest[2] if len(rest) > 2 else kwargs.get("wrapstring") or "\n"
            budget.charge(_text_size(value) * (1 + len(str(wrapstring))))
        elif name in ("batch", "slice") and rest:
            budget.charge(_width(rest[0]))
        result = func(*args, **kwargs)
        budget.charge(_size(result))
        return result

    return metered_filter


@pass_context
def _metered_iter(context: jinja2.runtime.Context, value: Any) -> Iterator[Any]:
    budget = _budget()
    budget.step()
    for item in value:
        budget.step()
        yield item


@pass_eval_context
def _metered_concat(eval_ctx: nodes.EvalContext, values: list[Any]) -> str:
    budget = _budget()
    budget.step()
    budget.charge(sum(_text_size(v) for v in values))
    return markup_join(values) if eval_ctx.autoescape else str_join(values)


@pass_context
def _metered_emit(context: jinja2.runtime.Context, value: Any) -> Any:
    budget = _budget()
    budget.step()
    budget.charge(_text_size(value))
    return value


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> Markup | str:
    if not (0 <= n <= 100 and 0 <= min <= max <= 1000):
        raise OverBudget("lipsum takes at most 100 paragraphs of at most 1000 words")
    return generate_lorem_ipsum(n, html, min, max)


class _Meter(NodeTransformer):
    """Rewrites a parsed template so that loops, `~` and output are metered. Literal text outside
    loops, macros and blocks runs once and is bounded by the source: it is left as it is."""

    _REPEATED = (nodes.For, nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.AssignBlock, nodes.Block)

    def __init__(self, environment: jinja2.Environment) -> None:
        self.environment = environment
        self.depth = 0

    def _wrap(self, node: nodes.Node, name: str) -> nodes.Filter:
        wrapped = nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)
        wrapped.set_environment(self.environment)
        return wrapped

    def generic_visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> nodes.Node:
        repeated = isinstance(node, self._REPEATED)
        self.depth += repeated
        try:
            return super().generic_visit(node, *args, **kwargs)
        finally:
            self.depth -= repeated

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = self._wrap(node.iter, _ITER)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return self._wrap(nodes.List(node.nodes, lineno=node.lineno), _CONCAT)

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [
            child if isinstance(child, nodes.TemplateData) and not self.depth else self._wrap(child, _EMIT)
            for child in node.nodes
        ]
        return node


class MeteredSandbox(SandboxedEnvironment):
    """Jinja's sandbox, metered (see the module's docstring). Render only inside `metered()`."""

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: _metered_filter(name, func) for name, func in FILTERS.items()}
        self.filters[_ITER] = _metered_iter
        self.filters[_CONCAT] = _metered_concat
        self.filters[_EMIT] = _metered_emit
        self.globals["lipsum"] = _lipsum

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        metered_tree = _Meter(self).visit(tree)
        assert isinstance(metered_tree, nodes.Template)
        return metered_tree

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.step()
        ints = isinstance(left, int) and isinstance(right, int)
        if (
            operator == "**"
            and ints
            and (abs(right) > 64 or abs(left).bit_length() * abs(right) > MAX_INT_BITS)
        ):
            raise OverBudget(f"a number over {MAX_INT_BITS} bits is too large for a newsletter template")
        if operator == "*":
            if ints and abs(left).bit_length() + abs(right).bit_length() > MAX_INT_BITS:
                raise OverBudget(f"a number over {MAX_INT_BITS} bits is too large for a newsletter template")
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    budget.number(times)
                    budget.charge(len(seq) * times)
        elif operator == "+":
            budget.charge(_size(left) + _size(right))
        elif operator == "%" and isinstance(left, str):
            budget.charge(_printf_size(left, right))
        return super().call_binop(context, operator, left, right)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(argument, slice) and isinstance(obj, Sized):
            budget = _budget()
            budget.step()
            budget.charge(len(range(*argument.indices(len(obj)))))
        return super().getitem(obj, argument)

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str | bytes | list | tuple | dict | set):
            _ints(budget, args)
            _ints(budget, kwargs.values())
            # What a method receives it may copy in (`extend`, `update`, `join`): charge it.
            budget.charge(sum(_size(a) for a in args) + sum(_size(v) for v in kwargs.values()))
            if isinstance(owner, str):
                name = getattr(__obj, "__name__", "")
                if name == "join" and args:
                    items = list(args[0])
                    budget.charge(_join_size(owner, items))
                    args = (items, *args[1:])
                else:
                    budget.charge(_str_method_size(owner, name, args, kwargs))
        result = super().call(__context, __obj, *args, **kwargs)
        budget.charge(_size(result))
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        fmt: str = value.__self__
        is_map = value.__name__ == "format_map"

        def metered_format(*args: Any, **kwargs: Any) -> str:
            budget = _budget()
            budget.step()
            if is_map:
                budget.charge(_format_size(fmt, (), dict(args[0]) if args else {}))
            else:
                budget.charge(_format_size(fmt, args, kwargs))
            return wrapper(*args, **kwargs)

        return metered_format
