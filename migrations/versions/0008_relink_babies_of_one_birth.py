"""Re-link the records that the multiple-birth rules can judge differently

Linkage now reads a multiple-birth label in a given name ("Twin 1", "Baby B"),
``Patient.multipleBirth[x]``, and keeps apart records that give different birth orders, a
labelled twin without the same given name, and unnamed records of different sex. Records
linked before that were judged without it: two unnamed twins may share a linked person.
This names every such record in the linkage queue, so that the worker (or the next reader
of linkage) links it again with the current rules. A record that no longer belongs with
its person moves out, and the move is recorded as a linkage event like any other.

No table changes. Only Patients and RelatedPersons that are linked and not deleted, and
whose current body mentions a multiple birth or a baby label, or whose stored given name
is empty, are queued; the rest would link exactly as before.

Revision ID: 0008
Revises: 0007
"""
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# lower-case fragments of a body or of stored features that the new rules can act on
_BODY_MARKERS = ("multiplebirth", "twin", "triplet", "quad", "baby", "infant")
_NO_GIVEN_NAME = '"g":[]'


def upgrade() -> None:
    conn = op.get_bind()
    selected = sa.text(
        "SELECT l.res_type, l.res_id FROM linkage_link l"
        " JOIN resource r ON r.res_type = l.res_type AND r.res_id = l.res_id"
        " WHERE NOT r.deleted AND ("
        + " OR ".join(f"lower(r.body) LIKE :m{i}" for i in range(len(_BODY_MARKERS)))
        + " OR l.features LIKE :no_given)"
        " ORDER BY l.res_type, l.res_id"
    )
    params = {f"m{i}": f"%{m}%" for i, m in enumerate(_BODY_MARKERS)}
    params["no_given"] = f"%{_NO_GIVEN_NAME}%"
    rows = conn.execute(selected, params).all()
    if not rows:
        return
    queue = sa.table(
        "linkage_queue",
        sa.column("res_type", sa.String),
        sa.column("res_id", sa.String),
        sa.column("enqueued_at", sa.DateTime(timezone=True)),
    )
    now = datetime.now(timezone.utc)
    for start in range(0, len(rows), 1000):
        op.bulk_insert(
            queue, [{"res_type": t, "res_id": i, "enqueued_at": now} for t, i in rows[start:start + 1000]]
        )


def downgrade() -> None:
    # Nothing to undo: queued records are linked again with whichever rules the code has.
    pass
