"""Blocking keys that survive a transposed postcode

Linkage now indexes every record also under its name pair and its postcode's characters in
sorted order (``ns:`` in ``app.linkage.matching.blocking_keys``), so that a record with a
transposed postcode (LS16 for LS61) and no usable date of birth still finds its match.
Records linked before have no such key, and a new record could not find them by it; this
adds the key to every linked record, computed from its stored features. Nothing is
re-linked: a key only adds a candidate for the records written from now on.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

from app.linkage.matching import blocking_keys
from app.linkage.service import key_hash, record_from_features

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_PREFIX = "ns:"
_BATCH = 2000

_links = sa.table(
    "linkage_link",
    sa.column("res_type", sa.String),
    sa.column("res_id", sa.String),
    sa.column("features", sa.Text),
)
_keys = sa.table(
    "linkage_key",
    sa.column("key_hash", sa.BigInteger),
    sa.column("res_type", sa.String),
    sa.column("res_id", sa.String),
)


def _transposition_keys():
    """Batches of linkage_key rows (key_hash, res_type, res_id) of the new kind, per linked record."""
    conn = op.get_bind()
    last = ("", "")
    while True:
        rows = conn.execute(
            sa.select(_links.c.res_type, _links.c.res_id, _links.c.features)
            .where(sa.tuple_(_links.c.res_type, _links.c.res_id) > sa.tuple_(*map(sa.literal, last)))
            .order_by(_links.c.res_type, _links.c.res_id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        last = (rows[-1].res_type, rows[-1].res_id)
        batch = []
        for res_type, res_id, features in rows:
            rec = record_from_features(f"{res_type}/{res_id}", features)
            hashes = {key_hash(k) for k in blocking_keys(rec) if k.startswith(_PREFIX)}
            batch.extend({"key_hash": h, "res_type": res_type, "res_id": res_id} for h in sorted(hashes))
        yield conn, batch


def _present(conn, batch) -> set[tuple[int, str, str]]:
    """Which of the batch's rows the table already holds (an upgrade run again after a downgrade
    that kept them, or a record linked by the new code before this ran)."""
    if not batch:
        return set()
    found = conn.execute(
        sa.select(_keys.c.key_hash, _keys.c.res_type, _keys.c.res_id).where(
            _keys.c.key_hash.in_(sorted({r["key_hash"] for r in batch}))
        )
    ).all()
    return {tuple(r) for r in found}


def upgrade() -> None:
    for conn, batch in _transposition_keys():
        present = _present(conn, batch)
        new = [r for r in batch if (r["key_hash"], r["res_type"], r["res_id"]) not in present]
        if new:
            conn.execute(sa.insert(_keys), new)


def downgrade() -> None:
    remove = sa.delete(_keys).where(
        _keys.c.key_hash == sa.bindparam("h"), _keys.c.res_type == sa.bindparam("t"), _keys.c.res_id == sa.bindparam("i")
    )
    for conn, batch in _transposition_keys():
        if batch:
            conn.execute(remove, [{"h": r["key_hash"], "t": r["res_type"], "i": r["res_id"]} for r in batch])
