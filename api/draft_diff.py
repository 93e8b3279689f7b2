"""The draft of a template beside its live version, line by line (what an
approver reads before signing off): only the changed parts, with a little
context."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session

from sop_templates import service as templates_service
from sop_templates.models import SopTemplate

CONTEXT = 2


@dataclass
class DraftDiff:
    version: int
    same: bool
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # left, right, equal/changed


def _lines(spec: dict[str, Any]) -> list[str]:
    return json.dumps(spec, ensure_ascii=False, indent=2, sort_keys=True, default=str).splitlines()


def draft_diff(session: Session, template: SopTemplate) -> DraftDiff | None:
    """None when the template was never published."""
    if template.current_version_id is None:
        return None
    version = templates_service.current_version(session, template)
    live = templates_service.version_spec(version).model_dump(mode="json", exclude_none=True)
    try:
        from sop_templates.schemas import TemplateSpec

        draft = TemplateSpec.model_validate(template.draft).model_dump(
            mode="json", exclude_none=True
        )
    except ValueError:
        draft = template.draft
    left, right = _lines(live), _lines(draft)
    out = DraftDiff(version=version.version, same=left == right)
    matcher = difflib.SequenceMatcher(a=left, b=right, autojunk=False)
    for group in matcher.get_grouped_opcodes(CONTEXT):
        if out.rows:
            out.rows.append(("…", "…", "gap"))
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                out.rows += [
                    (a, b, "equal") for a, b in zip(left[i1:i2], right[j1:j2], strict=True)
                ]
                continue
            a, b = left[i1:i2], right[j1:j2]
            for k in range(max(len(a), len(b))):
                out.rows.append((a[k] if k < len(a) else "", b[k] if k < len(b) else "", "changed"))
    return out
