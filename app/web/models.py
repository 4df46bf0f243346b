"""The page sessions that were ended (migration 0015): the session is a signed cookie, so a copy
of it would otherwise stay good until it expires; signing out names its id here, and a cookie
naming a revoked id is no session. Rows go once the session would have expired anyway."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class RevokedSession(Base):
    __tablename__ = "web_session_revoked"

    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)
