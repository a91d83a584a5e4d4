"""studies and study_trials (adaptive searches), jobs.study_id; jobs may end 'pruned'

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema. jobs.status is a plain string column (no CHECK), so 'pruned' needs no change there."""
    op.create_table(
        "studies",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column(
            "status",
            sa.Enum("running", "completed", "cancelled", name="studystatus", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("base", sa.JSON(), nullable=False),
        sa.Column("space", sa.JSON(), nullable=False),
        sa.Column("sampler", sa.JSON(), nullable=False),
        sa.Column("pruner", sa.JSON(), nullable=False),
        sa.Column("n_trials", sa.Integer(), nullable=False),
        sa.Column("max_concurrent", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("idempotency_key", sa.String(length=320), nullable=True),
        sa.Column("request_sha256", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    op.create_index(op.f("ix_studies_status"), "studies", ["status"], unique=False)
    op.create_index(op.f("ix_studies_owner"), "studies", ["owner"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("study_id", sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_study_id"), ["study_id"], unique=False)
        batch_op.create_foreign_key("fk_jobs_study_id_studies", "studies", ["study_id"], ["id"])
    op.create_table(
        "study_trials",
        sa.Column("study_id", sa.String(length=32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("system_attrs", sa.JSON(), nullable=False),
        sa.Column("pruned_at_epoch", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("study_id", "number"),
        sa.UniqueConstraint("job_id"),
    )


def downgrade() -> None:
    """Downgrade schema. Pruned jobs become cancelled: the older code knows no 'pruned'."""
    op.drop_table("study_trials")
    op.execute("UPDATE jobs SET status = 'cancelled' WHERE status = 'pruned'")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint("fk_jobs_study_id_studies", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_jobs_study_id"))
        batch_op.drop_column("study_id")
    op.drop_index(op.f("ix_studies_owner"), table_name="studies")
    op.drop_index(op.f("ix_studies_status"), table_name="studies")
    op.drop_table("studies")
