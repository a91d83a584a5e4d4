"""artifacts: the record (sha256, size, fencing token) of every checkpoint, ONNX export and resume state, and
their bytes when FMNIST_ARTIFACTS=database; the checkpoints already registered are recorded as files

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "artifacts",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "name"),
    )
    if op.get_bind().dialect.name == "postgresql":
        # Stored out of line without compression: safetensors of float weights do not compress, and trying
        # (pglz, over the whole value, since the header at its start compresses) tripled the time of writing
        # a 30 MB resume state (bench/artifacts.py).
        op.execute("ALTER TABLE artifacts ALTER COLUMN data SET STORAGE EXTERNAL")
    # Every model registered so far has its checkpoint in the home folder, with its digest on its row. ONNX
    # exports made before are not recorded: they are made again (and recorded) on their next request. Resume
    # states written before are not recorded either: a job requeued across this upgrade starts over.
    models = sa.table(
        "models",
        sa.column("id", sa.String),
        sa.column("sha256", sa.String),
        sa.column("size_bytes", sa.BigInteger),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    artifacts = sa.table(
        "artifacts",
        sa.column("kind", sa.String),
        sa.column("name", sa.String),
        sa.column("sha256", sa.String),
        sa.column("size_bytes", sa.BigInteger),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    op.execute(
        artifacts.insert().from_select(
            ["kind", "name", "sha256", "size_bytes", "created_at"],
            sa.select(sa.literal("checkpoint"), models.c.id, models.c.sha256, models.c.size_bytes, models.c.created_at),
        )
    )


def downgrade() -> None:
    """Downgrade schema: the bytes kept in the database go with the table."""
    op.drop_table("artifacts")
