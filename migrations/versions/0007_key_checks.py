"""key checks: a process whose keys cannot read them refuses to start

Revision ID: 0007_key_checks
Revises: 0006_reconciliation_once
Create Date: 2026-11-30 06:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0007_key_checks'
down_revision = '0006_reconciliation_once'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('key_checks',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('token', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_key_checks'))
    )


def downgrade():
    op.drop_table('key_checks')
