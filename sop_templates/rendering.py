"""Jinja2 rendering of message content, always sandboxed.

Operators (not developers) write these templates, so the environment is the
immutable sandbox with ``StrictUndefined``: attribute tricks such as
``''.__class__.__mro__`` raise ``SecurityError`` and a misspelt variable is an
error, not an empty string in a customer's chat.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, nodes
from jinja2.exceptions import SecurityError

from sop_templates.sandbox import (
    BudgetedEnvironment,
    RenderBudgetError,
    RenderError,
    render_within,
)
from sop_templates.schemas import RENDERED_FIELDS, TemplateSpec

__all__ = ["RenderBudgetError", "RenderError", "render_parts", "render_string"]

_env = BudgetedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


@lru_cache(maxsize=4096)
def _compile(source: str) -> Any:
    template = _env.from_string(source)
    # Jinja keeps a template's globals as a ChainMap over the environment's and
    # copies it into every render's context; iterating a ChainMap costs more than
    # the render itself. Nothing adds globals after start-up: a dict does.
    template.globals = dict(template.globals)
    return template


@lru_cache(maxsize=1)
def default_limits() -> tuple[float, int]:
    """(seconds, characters) one part's render may take, from the settings."""
    from sopbot.settings import Settings

    settings = Settings()
    return settings.render_budget_ms / 1000, settings.render_max_chars


def render_string(
    source: str, context: dict[str, Any], *, limits: tuple[float, int] | None = None
) -> str:
    """Render one field within its time and size budget (``limits`` or the settings')."""
    seconds, max_chars = limits or default_limits()
    if "{" not in source:  # fast path: nothing to render
        if len(source) > max_chars:
            raise RenderBudgetError(
                f"内容过长：超过 {max_chars:,} 个字符的上限 (text is {len(source):,} "
                f"characters, over the {max_chars:,} character budget of one message part)"
            )
        return source
    plain = _plain(source)
    if plain is not None:
        text = _substitute(plain, context)
        if text is not None and len(text) <= max_chars:
            return text
    try:
        return render_within(_compile(source), context, seconds, max_chars)
    except RenderError:
        raise
    except TemplateSyntaxError as exc:
        raise RenderError(f"template syntax error on line {exc.lineno}: {exc.message}") from exc
    except SecurityError as exc:
        raise RenderError(f"not allowed in a message template: {exc}") from exc
    except UndefinedError as exc:
        raise RenderError(_undefined_message(source, exc)) from exc
    except RecursionError as exc:
        raise RenderError("渲染递归过深 (a macro or loop calls itself too deeply)") from exc
    except Exception as exc:  # noqa: BLE001 - any filter/runtime error is the content's fault
        raise RenderError(f"{type(exc).__name__}: {exc}") from exc


# -- plain substitution ------------------------------------------------------------
#
# Most message templates are text with a few ``{{ contact.name }}``-style
# variables. Those are filled in directly, without running Jinja; the result is
# the same text Jinja gives. Anything else -- filters, tags, a value that is not
# plain text or a whole number, a missing field -- goes through Jinja as before.

_Piece = str | tuple[str, ...]


@lru_cache(maxsize=4096)
def _plain(source: str) -> tuple[_Piece, ...] | None:
    """``source`` as literal text and dotted variable paths, or None when it
    uses anything more than ``{{ name.field.field }}``."""
    try:
        tree = _env.parse(source)
    except TemplateSyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
        return None
    pieces: list[_Piece] = []
    for node in tree.body[0].nodes:
        if isinstance(node, nodes.TemplateData):
            pieces.append(node.data)
            continue
        path: list[str] = []
        while isinstance(node, nodes.Getattr):
            if node.attr.startswith("_") or hasattr(dict, node.attr):
                return None
            path.append(node.attr)
            node = node.node
        if not isinstance(node, nodes.Name):
            return None
        path.append(node.name)
        pieces.append(tuple(reversed(path)))
    return tuple(pieces)


def _substitute(pieces: tuple[_Piece, ...], context: dict[str, Any]) -> str | None:
    out = []
    for piece in pieces:
        if isinstance(piece, str):
            out.append(piece)
            continue
        value: Any = context
        for name in piece:
            if type(value) is not dict or name not in value:
                return None
            value = value[name]
        if type(value) is str:
            out.append(value)
        elif type(value) is int:
            out.append(str(value))
        else:
            return None
    return "".join(out)


def _undefined_message(source: str, exc: UndefinedError) -> str:
    """``'dict object' has no attribute 'nmae'`` as an operator reads it:
    ``未定义的变量 contact.nmae (undefined variable contact.nmae)``."""
    text = str(exc.message or exc)
    missing = text.rsplit("'", 2)[-2] if text.count("'") >= 2 else ""
    if "has no attribute" in text or "no element" in text:
        paths = sorted(_paths_ending(source, missing))
        name = " / ".join(paths) or missing
        return f"未定义的变量 {name}：没有这个字段 (undefined variable: {name} has no field {missing!r})"
    if " is undefined" in text:
        return f"未定义的变量 {missing} (undefined variable: {text})"
    return f"未定义的变量 (undefined variable: {text})"


def _paths_ending(source: str, attribute: str) -> set[str]:
    """Dotted paths in ``source`` whose last part is ``attribute`` (``contact.nmae``)."""
    try:
        tree = _env.parse(source)
    except TemplateSyntaxError:
        return set()
    found = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        last = node.attr if isinstance(node, nodes.Getattr) else getattr(node, "arg", None)
        last = getattr(last, "value", last)
        if last == attribute:
            found.add(_dotted(node))
    return found


def _dotted(node: nodes.Node) -> str:
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        return f"{_dotted(node.node)}.{node.attr}"
    if isinstance(node, nodes.Getitem):
        return f"{_dotted(node.node)}.{getattr(node.arg, 'value', '?')}"
    return "…"


def render_parts(parts: list[dict[str, Any]], context: dict[str, Any]) -> list[dict[str, Any]]:
    """Render every templated field of every content part."""
    out = []
    for part in parts:
        rendered = dict(part)
        for field in RENDERED_FIELDS.get(part["kind"], ()):
            value = part.get(field)
            if isinstance(value, str):
                rendered[field] = render_string(value, context)
        out.append(rendered)
    return out


def sample_context(spec: TemplateSpec, touchpoint_name: str = "touchpoint") -> dict[str, Any]:
    """A context with every variable a real send provides, for validation and preview."""
    contact = {
        "id": 0,
        "external_id": "wm_sample",
        "name": "张三",
        "joined_at": "2027-03-01 21:30",
        "attributes": {},
        "tags": [],
    }
    group = {
        "id": 0,
        "external_id": "wr_sample",
        "name": "示例门店群",
        "member_count": 120,
        "attributes": {},
        "tags": [],
    }
    return build_context(
        target_kind=spec.target,
        target=contact if spec.target == "contact" else group,
        template_name=spec.name,
        touchpoint_name=touchpoint_name,
        account={"external_id": "staff_sample", "name": "客服小王"},
        extra={"due_at": datetime(2027, 3, 2, 12, 0)},
    )


def build_context(
    *,
    target_kind: str,
    target: dict[str, Any],
    template_name: str,
    touchpoint_name: str,
    account: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    context: dict[str, Any] = {
        "target": target,
        "template": {"name": template_name},
        "touchpoint": {"name": touchpoint_name},
        "account": account or {},
    }
    # Both names are always defined so `{% if contact %}` works in shared snippets.
    context["contact"] = target if target_kind == "contact" else None
    context["group"] = target if target_kind == "group" else None
    if extra:
        context.update(extra)
    return context


def validate_content(
    spec: TemplateSpec, targets: list[dict[str, Any]] | None = None
) -> list[tuple[str, str]]:
    """Render every touchpoint against the sample context, then against each of
    ``targets`` (a few real contacts or groups of the segment, as
    ``audiences`` renders them), each part within its budget.

    Returns ``(location, message)`` pairs, e.g.
    ``("touchpoints[1].content[0].text", "未定义的变量 coupon (undefined variable: ...)")``.
    Attributes (``contact.attributes.city``) are per contact, so an undefined
    *attribute* is not an error against the sample; anything else undefined is.
    """
    problems: list[tuple[str, str]] = []
    for i, touchpoint in enumerate(spec.touchpoints):
        sample = sample_context(spec, touchpoint.name)
        for key in ("contact", "group", "target"):
            if sample.get(key) is not None:
                sample[key] = {**sample[key], "attributes": _AnyAttributes()}
        contexts = [(sample, "")]
        for target in targets or ():
            real = {**sample, "target": target, spec.target: target}
            contexts.append(
                (real, f" (for {spec.target} {target.get('name') or target.get('id')})")
            )
        for j, part in enumerate(touchpoint.content):
            raw = part.model_dump()
            for field in RENDERED_FIELDS[raw["kind"]]:
                value = raw.get(field)
                if not isinstance(value, str):
                    continue
                for context, whom in contexts:
                    try:
                        render_string(value, context)
                    except RenderError as exc:
                        where = f"touchpoints[{i}].content[{j}].{field}"
                        problems.append((where, f"{exc}{whom}"))
                        break
    return problems


class _AnyAttributes(dict[str, Any]):
    """Sample attributes: any key renders as a placeholder during validation."""

    def __getitem__(self, key: str) -> str:
        return f"<{key}>"

    def __getattr__(self, key: str) -> str:
        return f"<{key}>"

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return f"<{key}>"

    def __contains__(self, key: object) -> bool:
        return True
