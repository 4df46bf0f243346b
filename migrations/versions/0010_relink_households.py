"""Re-link the records that the household scoring can judge differently

Linkage now scores two records that give one home (same postcode and first address line)
as two records of one household (``app.linkage.matching.HouseholdParams``): the residence
becomes the prior, and surname, sex and birth date are weighed against what household
members share. Before, each of those counted as independent evidence, so a newborn "Baby
Smith" could be linked with her mother, or a father with his same-named son. This names
every record of such a linked person in the linkage queue, so the worker (or the next
reader of linkage) links it again with the current rules; a record that no longer belongs
moves out, recorded as a linkage event like any other.

Only members of a linked person with two or more records, two of which share a postcode,
and whose birth dates or given names are not all the same (or missing on one) are queued:
the rest would link exactly as before. No table changes.

Revision ID: 0010
Revises: 0009
"""
import json
from datetime import datetime, timezone
from itertools import groupby

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _could_part(members: list[dict]) -> bool:
    postcodes = [m.get("p") for m in members if m.get("p")]
    if len(postcodes) == len(set(postcodes)):
        return False  # no two records give one postcode: no household was counted twice
    births = {m.get("d") for m in members}
    givens = {tuple(m.get("g") or ()) for m in members}
    return len(births) > 1 or len(givens) > 1 or () in givens


def _persons(conn, batch: int = 5000):
    """(person_id, [rows]) for every linked person, read in pages of linkage_link."""
    links = sa.table("linkage_link", *(sa.column(c) for c in ("person_id", "res_type", "res_id", "features")))
    last = ("", "", "")
    carry: list = []
    while True:
        rows = conn.execute(
            sa.select(links.c.person_id, links.c.res_type, links.c.res_id, links.c.features)
            .where(sa.tuple_(links.c.person_id, links.c.res_type, links.c.res_id) > sa.tuple_(*map(sa.literal, last)))
            .order_by(links.c.person_id, links.c.res_type, links.c.res_id)
            .limit(batch)
        ).all()
        if not rows:
            break
        last = tuple(rows[-1][:3])
        for pid, group in groupby(carry + rows, key=lambda r: r[0]):
            carry = list(group)
            if pid != last[0]:
                yield pid, carry
                carry = []
    if carry:
        yield carry[0][0], carry


def upgrade() -> None:
    conn = op.get_bind()
    queued = []
    for _, group in _persons(conn):
        if len(group) > 1 and _could_part([json.loads(r[3]) for r in group]):
            queued += [(r[1], r[2]) for r in group]
    if not queued:
        return
    queue = sa.table(
        "linkage_queue",
        sa.column("res_type", sa.String),
        sa.column("res_id", sa.String),
        sa.column("enqueued_at", sa.DateTime(timezone=True)),
    )
    now = datetime.now(timezone.utc)
    for start in range(0, len(queued), 1000):
        op.bulk_insert(queue, [{"res_type": t, "res_id": i, "enqueued_at": now} for t, i in queued[start:start + 1000]])


def downgrade() -> None:
    # Nothing to undo: queued records are linked again with whichever rules the code has.
    pass
