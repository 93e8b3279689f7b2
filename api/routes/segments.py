"""Segment previews: how many targets a segment holds, and the first few."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from api.deps import SessionDep
from audiences import segment_queries, segments
from audiences.segments import Segment
from sop_templates import service as templates_service
from sop_templates.schemas import TemplateSpec
from sopbot.clock import ensure_utc

router = APIRouter(prefix="/api/segments", tags=["segments"])


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: Literal["contact", "group"] = "contact"
    segment: Segment
    limit: int = Field(20, ge=0, le=500)
    joined_since: datetime | None = Field(
        None, description="new_friends: only contacts added since (the template's publish time)"
    )

    @model_validator(mode="before")
    @classmethod
    def _kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("segment"), dict):
            target = data.get("target", "contact")
            data = {**data, "segment": segments.infer_segment_kind(data["segment"], target)}
        return data


def _out(preview: segment_queries.Preview, segment: Any) -> dict[str, Any]:
    return {
        "segment": segment.model_dump(mode="json"),
        "count": preview.count,
        "rows": preview.rows,
        "unknown_tags": preview.unknown_tags,
        "unknown_accounts": preview.unknown_accounts,
    }


@router.post("/preview")
def preview(body: PreviewIn, session: SessionDep) -> dict[str, Any]:
    """Count the active targets a segment holds now and list the first ``limit``.

    A new_friends segment enrolls only contacts added after its template goes
    live; without ``joined_since`` this shows every contact passing its filters.
    """
    if segments.SEGMENT_TARGET[body.segment.kind] != body.target:
        raise HTTPException(
            422,
            f"a {body.segment.kind} segment selects {segments.SEGMENT_TARGET[body.segment.kind]}s",
        )
    since = ensure_utc(body.joined_since) if body.joined_since else None
    result = segment_queries.preview(
        session, body.target, body.segment, limit=body.limit, joined_since=since
    )
    return _out(result, body.segment)


@router.get(
    "/templates/{template_id}",
    responses={
        409: {"description": "the template has no segment, or its draft no longer validates"}
    },
)
def template_preview(
    template_id: int, session: SessionDep, limit: int = Query(20, ge=0, le=500)
) -> dict[str, Any]:
    """Preview the segment of a template's draft (what publishing would use)."""
    template = templates_service.get_template(session, template_id)
    try:
        spec = TemplateSpec.model_validate(template.draft)
    except ValidationError as exc:  # a stored draft was valid when saved
        raise HTTPException(409, f"the draft no longer validates: {exc}") from None
    if spec.segment is None:
        raise HTTPException(409, f"template {template.name!r} has no segment")
    result = segment_queries.preview(session, spec.target, spec.segment, limit=limit)
    return _out(result, spec.segment)
