"""jobs.pack_key: the shape a job shares with the jobs it may train beside (models.packed.pack_digest)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema. Jobs queued before it have no key: each trains alone."""
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("pack_key", sa.String(length=32), nullable=True))
        batch.create_index("ix_jobs_status_pack_key_created", ["status", "pack_key", "created_at"])


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_status_pack_key_created")
        batch.drop_column("pack_key")
