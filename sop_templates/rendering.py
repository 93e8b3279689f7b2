"""Jinja2 rendering of message content, always sandboxed.

Operators (not developers) write these templates, so the environment is the
immutable sandbox with ``StrictUndefined``: attribute tricks such as
``''.__class__.__mro__`` raise ``SecurityError`` and a misspelt variable is an
error, not an empty string in a customer's chat.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from sop_templates.schemas import RENDERED_FIELDS, TemplateSpec


class RenderError(ValueError):
    """Content could not be rendered; the message says where and why."""


_env = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
)


@lru_cache(maxsize=4096)
def _compile(source: str) -> Any:
    template = _env.from_string(source)
    # Jinja keeps a template's globals as a ChainMap over the environment's and
    # copies it into every render's context; iterating a ChainMap costs more than
    # the render itself. Nothing adds globals after start-up: a dict does.
    template.globals = dict(template.globals)
    return template


def render_string(source: str, context: dict[str, Any]) -> str:
    if "{" not in source:  # fast path: nothing to render
        return source
    try:
        return str(_compile(source).render(context))
    except TemplateSyntaxError as exc:
        raise RenderError(f"template syntax error on line {exc.lineno}: {exc.message}") from exc
    except SecurityError as exc:
        raise RenderError(f"not allowed in a message template: {exc}") from exc
    except UndefinedError as exc:
        raise RenderError(f"undefined variable: {exc.message}") from exc
    except Exception as exc:  # noqa: BLE001 - any filter/runtime error is the content's fault
        raise RenderError(f"{type(exc).__name__}: {exc}") from exc


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


def validate_content(spec: TemplateSpec) -> list[tuple[str, str]]:
    """Render every touchpoint against the sample context.

    Returns ``(location, message)`` pairs, e.g.
    ``("touchpoints[1].content[0].text", "undefined variable: 'coupon' is undefined")``.
    Attributes (``contact.attributes.city``) are per contact, so an undefined
    *attribute* is not an error here; anything else undefined is.
    """
    problems: list[tuple[str, str]] = []
    for i, touchpoint in enumerate(spec.touchpoints):
        context = sample_context(spec, touchpoint.name)
        for key in ("contact", "group", "target"):
            if context.get(key) is not None:
                context[key] = {**context[key], "attributes": _AnyAttributes()}
        for j, part in enumerate(touchpoint.content):
            raw = part.model_dump()
            for field in RENDERED_FIELDS[raw["kind"]]:
                value = raw.get(field)
                if not isinstance(value, str):
                    continue
                try:
                    render_string(value, context)
                except RenderError as exc:
                    problems.append((f"touchpoints[{i}].content[{j}].{field}", str(exc)))
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
