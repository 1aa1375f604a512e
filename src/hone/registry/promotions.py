"""Promotion decisions in the registry: which candidate was weighed against which tagged version, with
what figures, and whether the tag moved (`hone promote`; `hone runs show` lists them)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from hone.registry import store


class Promotion(store.Base):
    """One `hone promote` decision: the candidate against the run `name@tag` pointed at."""
    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    tag: Mapped[str] = mapped_column(String(100))
    candidate_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    champion_id: Mapped[Optional[str]] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    promoted: Mapped[bool] = mapped_column(Boolean)
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    reasons: Mapped[list] = mapped_column(JSON, default=list)    # one line per failed condition
    figures: Mapped[dict] = mapped_column(JSON, default=dict)    # per condition: scores, difference, interval
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    def to_json(self) -> dict[str, Any]:
        out = {column.name: getattr(self, column.name) for column in Promotion.__table__.columns}
        out["decided_at"] = self.decided_at.isoformat(timespec="seconds")
        return out


_created: set[str] = set()


def _session():
    db = store.session()
    url = store.database_url()
    if url not in _created:  # a registry made before this table existed gets it now
        store.Base.metadata.create_all(db.get_bind(), tables=[store.Base.metadata.tables["promotions"]])
        _created.add(url)
    return db


def record_promotion(name: str, tag: str, candidate_id: str, champion_id: str | None, promoted: bool,
                     forced: bool, reasons: list[str], figures: dict) -> dict:
    with _session() as db:
        row = Promotion(name=name, tag=tag, candidate_id=candidate_id, champion_id=champion_id, promoted=promoted,
                        forced=forced, reasons=reasons, figures=figures, decided_at=datetime.now(timezone.utc))
        db.add(row)
        db.commit()
        return row.to_json()


def promotions_of(run_id: str) -> list[dict]:
    """Decisions where the run was the candidate or the champion, oldest first."""
    with _session() as db:
        query = select(Promotion).where((Promotion.candidate_id == run_id) | (Promotion.champion_id == run_id))
        return [row.to_json() for row in db.scalars(query.order_by(Promotion.id))]
