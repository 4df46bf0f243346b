"""Linkage links and blocking keys as WITHOUT ROWID tables on SQLite

A rowid table with a composite text primary key is two B-trees: the rows, by rowid, and
the primary-key index pointing into them. ``linkage_key`` is all primary key, so every key
row was stored twice and written to three B-trees (rows, primary key, record index);
``linkage_link`` is found by its primary key, so every look-up descended two B-trees. As
WITHOUT ROWID tables the rows live in the primary-key B-tree: one descent per look-up, two
B-trees per key row, a third less space for the keys. Both are read and written for every
record linked, at random places once 10^6 persons outgrow the page cache.

SQLite cannot change this in place: each table is rebuilt from its own reflected definition
(copied in primary-key order, the old one dropped, the new one renamed, its indexes
recreated). Neither table is referenced by a foreign key, so this is safe with
foreign_keys=ON inside the migration's transaction. PostgreSQL has no rowid tables:
nothing to do there.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ("linkage_link", "linkage_key")


def _rebuild(table: str, with_rowid: bool) -> None:
    bind = op.get_bind()
    old = sa.Table(table, sa.MetaData(), autoload_with=bind)
    indexes = sa.inspect(bind).get_indexes(table)
    new = old.to_metadata(old.metadata, name=f"_{table}_rebuild")  # with the tables it refers to
    for index in list(new.indexes):  # recreated under their own names once the old table is gone
        new.indexes.discard(index)
    new.dialect_kwargs["sqlite_with_rowid"] = with_rowid
    new.create(bind)
    cols = ", ".join(c.name for c in old.columns)
    order = ", ".join(c.name for c in old.primary_key.columns)
    op.execute(f"INSERT INTO {new.name} ({cols}) SELECT {cols} FROM {table} ORDER BY {order}")
    for index in indexes:
        op.drop_index(index["name"], table_name=table)
    op.drop_table(table)
    op.rename_table(new.name, table)
    for index in indexes:
        op.create_index(index["name"], table, index["column_names"], unique=bool(index["unique"]))


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in TABLES:
            _rebuild(table, with_rowid=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in TABLES:
            _rebuild(table, with_rowid=True)
