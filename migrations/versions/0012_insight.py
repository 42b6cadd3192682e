"""snapshot tiers (minute and hour roll-ups) and how far retention has rolled each account

Revision ID: 0012_insight
Revises: 0011_webhooks
Create Date: 2026-12-02 09:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0012_insight'
down_revision = '0011_webhooks'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('snapshot_retention',
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('minute_through', sa.DateTime(timezone=True), nullable=True),
    sa.Column('hour_through', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_snapshot_retention_account_id_accounts')),
    sa.PrimaryKeyConstraint('account_id', name=op.f('pk_snapshot_retention'))
    )
    with op.batch_alter_table('position_snapshots', schema=None) as batch_op:
        batch_op.add_column(sa.Column('resolution', sa.String(length=8), server_default='sync', nullable=False))
        batch_op.add_column(sa.Column('equity_min', sa.Numeric(precision=20, scale=4), nullable=True))
        batch_op.add_column(sa.Column('equity_max', sa.Numeric(precision=20, scale=4), nullable=True))
        batch_op.add_column(sa.Column('samples', sa.Integer(), server_default='1', nullable=False))
        batch_op.create_index('uq_position_snapshots_rollup', ['account_id', 'resolution', 'synced_at'], unique=True, postgresql_where=sa.text("resolution <> 'sync'"), sqlite_where=sa.text("resolution <> 'sync'"))



def downgrade():
    with op.batch_alter_table('position_snapshots', schema=None) as batch_op:
        batch_op.drop_index('uq_position_snapshots_rollup', postgresql_where=sa.text("resolution <> 'sync'"), sqlite_where=sa.text("resolution <> 'sync'"))
        batch_op.drop_column('samples')
        batch_op.drop_column('equity_max')
        batch_op.drop_column('equity_min')
        batch_op.drop_column('resolution')

    op.drop_table('snapshot_retention')
