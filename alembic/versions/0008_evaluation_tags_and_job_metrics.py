"""models.evaluation; jobs.tags, jobs.note; jobs.test_acc, jobs.val_acc, jobs.train_seconds (for sorted,
filtered listings) with keyset indexes, filled in for the jobs already there

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("evaluation", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tags", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("note", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("test_acc", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("val_acc", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("train_seconds", sa.Float(), nullable=True))
        batch_op.create_index("ix_jobs_test_acc_id", ["test_acc", "id"])
        batch_op.create_index("ix_jobs_val_acc_id", ["val_acc", "id"])
        batch_op.create_index("ix_jobs_train_seconds_id", ["train_seconds", "id"])
        batch_op.create_index("ix_jobs_created_id", ["created_at", "id"])
    # The jobs already there: the kept model's accuracies when there is one, else the latest epoch's; the
    # time of every recorded epoch.
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.String),
        sa.column("test_acc", sa.Float),
        sa.column("val_acc", sa.Float),
        sa.column("train_seconds", sa.Float),
    )
    models = sa.table(
        "models", sa.column("job_id", sa.String), sa.column("test_acc", sa.Float), sa.column("val_acc", sa.Float)
    )
    metrics = sa.table(
        "epoch_metrics",
        sa.column("job_id", sa.String),
        sa.column("epoch", sa.Integer),
        sa.column("test_acc", sa.Float),
        sa.column("val_acc", sa.Float),
        sa.column("seconds", sa.Float),
    )
    newest = metrics.alias("newest")
    latest = sa.select(sa.func.max(newest.c.epoch)).where(newest.c.job_id == jobs.c.id).scalar_subquery()

    def from_latest(column: str) -> sa.ScalarSelect[float]:
        return (
            sa.select(metrics.c[column])
            .where(metrics.c.job_id == jobs.c.id, metrics.c.epoch == latest)
            .scalar_subquery()
        )

    def from_model(column: str) -> sa.ScalarSelect[float]:
        return sa.select(models.c[column]).where(models.c.job_id == jobs.c.id).scalar_subquery()

    has_model = sa.exists().where(models.c.job_id == jobs.c.id)
    op.execute(
        jobs.update().values(
            test_acc=sa.case((has_model, from_model("test_acc")), else_=from_latest("test_acc")),
            val_acc=sa.case((has_model, from_model("val_acc")), else_=from_latest("val_acc")),
            train_seconds=sa.select(sa.func.sum(metrics.c.seconds))
            .where(metrics.c.job_id == jobs.c.id)
            .scalar_subquery(),
        )
    )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_created_id")
        batch_op.drop_index("ix_jobs_train_seconds_id")
        batch_op.drop_index("ix_jobs_val_acc_id")
        batch_op.drop_index("ix_jobs_test_acc_id")
        batch_op.drop_column("train_seconds")
        batch_op.drop_column("val_acc")
        batch_op.drop_column("test_acc")
        batch_op.drop_column("note")
        batch_op.drop_column("tags")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("evaluation")
