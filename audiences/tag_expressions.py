"""Tag expressions: which tags a segment asks for (AND / OR / NOT).

Written as text (``spring-class-2027 and not purchased``, ``a & (b | !c)``,
``春季班 且 非 已购买`` — 且 / 或 / 非 are and / or / not; a tag with one of
these names is quoted) or structured (``{"all": [...]}``, ``{"any": [...]}``, ``{"not": ...}``), parsed
into a small tree that is matched in Python on one target's tags and turned
into SQL for whole tables. Nesting is limited (``MAX_DEPTH``): an expression is
written by a person, and a deeper one would only exhaust the interpreter's stack.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import core_schema
from sqlalchemy import and_, not_, or_
from sqlalchemy.sql.elements import ColumnElement


class TagExpr:
    """A boolean expression over tag names. Parse with :func:`parse_tag_expr`.

    Written as text (``spring-class-2027 and not purchased``, ``a & (b | !c)``)
    or structured (``{"all": [...]}``, ``{"any": [...]}``, ``{"not": ...}``).
    Stored and shown in its canonical text form.
    """

    def matches(self, tags: Collection[str]) -> bool:
        raise NotImplementedError

    def names(self) -> set[str]:
        """Every tag name the expression mentions."""
        raise NotImplementedError

    def to_sql(self, leaf: Callable[[str], ColumnElement[bool]]) -> ColumnElement[bool]:
        raise NotImplementedError

    def _text(self, parent: str) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self._text("")

    def __repr__(self) -> str:
        return f"TagExpr({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TagExpr) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    @classmethod
    def __get_pydantic_core_schema__(
        cls, _source: Any, _handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            parse_tag_expr,
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, _schema: core_schema.CoreSchema, _handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        return {
            "type": "string",
            "description": "tag expression: names with and / or / not and parentheses",
            "examples": ["spring-class-2027 and not purchased"],
        }


class _Tag(TagExpr):
    def __init__(self, name: str) -> None:
        self.name = name

    def matches(self, tags: Collection[str]) -> bool:
        return self.name in tags

    def names(self) -> set[str]:
        return {self.name}

    def to_sql(self, leaf: Callable[[str], ColumnElement[bool]]) -> ColumnElement[bool]:
        return leaf(self.name)

    def _text(self, parent: str) -> str:
        if _BARE_TAG.fullmatch(self.name) and self.name.lower() not in _KEYWORDS:
            return self.name
        return '"' + self.name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _All(TagExpr):
    def __init__(self, items: list[TagExpr]) -> None:
        self.items = items

    def matches(self, tags: Collection[str]) -> bool:
        return all(item.matches(tags) for item in self.items)

    def names(self) -> set[str]:
        return set().union(*(item.names() for item in self.items))

    def to_sql(self, leaf: Callable[[str], ColumnElement[bool]]) -> ColumnElement[bool]:
        return and_(*(item.to_sql(leaf) for item in self.items))

    def _text(self, parent: str) -> str:
        text = " and ".join(item._text("and") for item in self.items)
        return f"({text})" if parent == "not" else text


class _Any(TagExpr):
    def __init__(self, items: list[TagExpr]) -> None:
        self.items = items

    def matches(self, tags: Collection[str]) -> bool:
        return any(item.matches(tags) for item in self.items)

    def names(self) -> set[str]:
        return set().union(*(item.names() for item in self.items))

    def to_sql(self, leaf: Callable[[str], ColumnElement[bool]]) -> ColumnElement[bool]:
        return or_(*(item.to_sql(leaf) for item in self.items))

    def _text(self, parent: str) -> str:
        text = " or ".join(item._text("or") for item in self.items)
        return f"({text})" if parent in ("and", "not") else text


class _Not(TagExpr):
    def __init__(self, item: TagExpr) -> None:
        self.item = item

    def matches(self, tags: Collection[str]) -> bool:
        return not self.item.matches(tags)

    def names(self) -> set[str]:
        return self.item.names()

    def to_sql(self, leaf: Callable[[str], ColumnElement[bool]]) -> ColumnElement[bool]:
        return not_(self.item.to_sql(leaf))

    def _text(self, parent: str) -> str:
        return "not " + self.item._text("not")


_KEYWORDS = {"and", "or", "not", "且", "或", "非"}
# Chinese operators read as their English keywords (the canonical text keeps English)
_ZH_KEYWORDS = {"且": "and", "或": "or", "非": "not"}
_BARE_TAG = re.compile(r'[^\s()!&|"]+')
_TOKEN = re.compile(r'\s*(?:(?P<op>[()!&|])|"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<word>[^\s()!&|"]+))')
MAX_TAG_LENGTH = 100
MAX_DEPTH = 100  # nested parentheses / not / objects in one expression


def _too_deep() -> ValueError:
    return ValueError(
        f"标签表达式嵌套过深（最多 {MAX_DEPTH} 层）: the tag expression is nested more than "
        f"{MAX_DEPTH} levels deep (parentheses, not, all/any/not objects); simplify it"
    )


def tag_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise ValueError("empty tag name")
    if len(name) > MAX_TAG_LENGTH:
        raise ValueError(f"tag name {name[:20]!r}… is longer than {MAX_TAG_LENGTH} characters")
    return name


def parse_tag_expr(value: object, _depth: int = 0) -> TagExpr:
    """Parse the text or structured form of a tag expression (raises ``ValueError``,
    also for nesting deeper than ``MAX_DEPTH``)."""
    if _depth > MAX_DEPTH:
        raise _too_deep()
    if isinstance(value, TagExpr):
        return value
    if isinstance(value, str):
        return _parse_text(value)
    if isinstance(value, dict):
        if len(value) != 1:
            raise ValueError("a tag expression object has exactly one key: all, any or not")
        ((op, arg),) = value.items()
        if op in ("all", "any"):
            if not isinstance(arg, list) or not arg:
                raise ValueError(f"'{op}' needs a non-empty list of tag expressions")
            # in the structured form a string is one tag name, spaces and all
            items = [
                _Tag(tag_name(a)) if isinstance(a, str) else parse_tag_expr(a, _depth + 1)
                for a in arg
            ]
            return items[0] if len(items) == 1 else (_All(items) if op == "all" else _Any(items))
        if op == "not":
            return _Not(
                _Tag(tag_name(arg)) if isinstance(arg, str) else parse_tag_expr(arg, _depth + 1)
            )
        raise ValueError(f"unknown tag operator {op!r}; use all, any or not")
    if isinstance(value, list):
        raise ValueError(
            "a list of tags is ambiguous: write {all: [...]} (every tag) or {any: [...]} (one of them)"
        )
    raise ValueError(f"a tag expression is text or an object, not {type(value).__name__}")


def _parse_text(text: str) -> TagExpr:
    tokens: list[tuple[str, str]] = []  # (type, value): op / tag
    pos = 0
    stripped = text.rstrip()
    while pos < len(stripped):
        match = _TOKEN.match(stripped, pos)
        if not match or match.end() == pos:
            raise ValueError(f"cannot read the tag expression {text!r} at position {pos}")
        pos = match.end()
        if match.group("op"):
            op = match.group("op")
            tokens.append(("op", {"&": "and", "|": "or", "!": "not"}.get(op, op)))
        elif match.group("quoted") is not None:
            tokens.append(("tag", tag_name(re.sub(r"\\(.)", r"\1", match.group("quoted")))))
        else:
            word = match.group("word")
            if word.lower() in _KEYWORDS:
                tokens.append(("op", _ZH_KEYWORDS.get(word, word.lower())))
            else:
                tokens.append(("tag", tag_name(word)))
    if not tokens:
        raise ValueError("the tag expression is empty")
    parser = _Parser(tokens, text)
    expr = parser.parse_or()
    if parser.pos != len(tokens):
        raise ValueError(f"unexpected {tokens[parser.pos][1]!r} in the tag expression {text!r}")
    return expr


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], text: str) -> None:
        self.tokens = tokens
        self.text = text
        self.pos = 0
        self.depth = 0

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def parse_or(self) -> TagExpr:
        items = [self.parse_and()]
        while self._peek() == ("op", "or"):
            self.pos += 1
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else _Any(items)

    def parse_and(self) -> TagExpr:
        items = [self.parse_unary()]
        while self._peek() == ("op", "and"):
            self.pos += 1
            items.append(self.parse_unary())
        return items[0] if len(items) == 1 else _All(items)

    def parse_unary(self) -> TagExpr:
        token = self._peek()
        if token is None:
            raise ValueError(f"the tag expression {self.text!r} ends too early")
        self.pos += 1
        if token in (("op", "not"), ("op", "(")):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _too_deep()
            try:
                return self._nested(token)
            finally:
                self.depth -= 1
        if token[0] == "tag":
            return _Tag(token[1])
        raise ValueError(f"unexpected {token[1]!r} in the tag expression {self.text!r}")

    def _nested(self, token: tuple[str, str]) -> TagExpr:
        if token == ("op", "not"):
            return _Not(self.parse_unary())
        inner = self.parse_or()  # after "("
        if self._peek() != ("op", ")"):
            raise ValueError(f"missing ')' in the tag expression {self.text!r}")
        self.pos += 1
        return inner
