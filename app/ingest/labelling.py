"""Stamp sensitivity labels at ingest, as a security labelling service does, so that every
disclosure decision reads labels rather than re-deriving them from codes."""
from __future__ import annotations

from typing import Any

from consent import label_resource
from sqlalchemy.orm import Session

from app.ingest.hooks import Written


class SecurityLabelHook:
    def prepare(self, resource: dict[str, Any]) -> None:
        labels = label_resource(resource)
        if labels:
            meta = resource.setdefault("meta", {})
            meta["security"] = list(meta.get("security") or []) + labels

    def stored_with(self, session: Session, written: list[Written]) -> tuple[list, tuple[str, ...]]:
        return [], ()

    def after_write(self, session: Session, written: list[Written]) -> None:
        return None

    def writes_after_write(self) -> bool:
        return False
