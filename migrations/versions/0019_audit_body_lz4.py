"""PostgreSQL keeps audit bodies compressed with LZ4 instead of pglz (PostgreSQL 14 and later,
when built with it, as Debian's and the PGDG packages are). A BALP body is ~2.5 kB of JSON,
over the size at which PostgreSQL compresses a value, so every read of the chain (verify,
export, the disclosure report) decompresses each body it reads; LZ4 does that several times
faster and compresses faster on append. Bodies already stored keep pglz until rewritten (the
audit is append-only: they stay as they are); new ones are LZ4. SQLite: nothing to do.

Revision ID: 0019_audit_body_lz4
Revises: 0018_source_key_by_value_unique
"""
from alembic import op

revision = "0019_audit_body_lz4"
down_revision = "0018_source_key_by_value_unique"
branch_labels = None
depends_on = None


def _set_compression(method: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql" or (bind.dialect.server_version_info or (0,)) < (14,):
        return
    # a server built without LZ4 refuses the method (feature_not_supported): the bodies stay pglz
    op.execute(f"""DO $$ BEGIN
        ALTER TABLE audit_event ALTER COLUMN body SET COMPRESSION {method};
    EXCEPTION WHEN feature_not_supported THEN
        RAISE NOTICE 'audit_event.body stays compressed with the server''s default: %', SQLERRM;
    END $$""")


def upgrade() -> None:
    _set_compression("lz4")


def downgrade() -> None:
    _set_compression("pglz")
