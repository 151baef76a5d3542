"""portal sync outbox and state

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "sync_state",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_sync_state")),
    )
    op.create_table(
        "allergies",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("patient_id", sa.String(length=36), nullable=False),
        sa.Column("portal_id", sa.String(length=64), nullable=True),
        sa.Column("substance", sa.String(length=500), nullable=False),
        sa.Column("substance_system", sa.String(length=200), nullable=True),
        sa.Column("substance_code", sa.String(length=100), nullable=True),
        sa.Column("clinical_status", sa.String(length=32), nullable=True),
        sa.Column("criticality", sa.String(length=32), nullable=True),
        sa.Column("reaction", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
            name=op.f("fk_allergies_patient_id_patients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_allergies")),
        sa.UniqueConstraint("portal_id", name=op.f("uq_allergies_portal_id")),
    )
    with op.batch_alter_table("allergies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_allergies_patient_id"), ["patient_id"], unique=False)

    op.create_table(
        "outbox",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("case_id", sa.String(length=36), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("portal_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_outbox_case_id_cases"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outbox_case_id"), ["case_id"], unique=False)
        batch_op.create_index(
            "ix_outbox_state_due", ["state", "next_attempt_at", "created_at"], unique=False
        )

    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("portal_owner", sa.String(length=200), nullable=True))
        batch_op.add_column(
            sa.Column("portal_business_status", sa.String(length=200), nullable=True)
        )
        batch_op.add_column(sa.Column("portal_note", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("portal_notice", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("claim_state", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("portal_sync_error", sa.Text(), nullable=True))


def downgrade() -> None:

    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_column("portal_sync_error")
        batch_op.drop_column("claim_state")
        batch_op.drop_column("portal_notice")
        batch_op.drop_column("portal_note")
        batch_op.drop_column("portal_business_status")
        batch_op.drop_column("portal_owner")

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_state_due")
        batch_op.drop_index(batch_op.f("ix_outbox_case_id"))

    op.drop_table("outbox")
    with op.batch_alter_table("allergies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_allergies_patient_id"))

    op.drop_table("allergies")
    op.drop_table("sync_state")
