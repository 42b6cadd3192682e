"""alert_closes: a position is closed once per alert, not once ever

A close that failed (the market closed, Algo Trading off) or filled only in part left its position
open, and the unique key on (account_id, position_key) then dropped every later alert's close of it:
that alert ended `executed` with the position still open. One alert closes a position once; a later
alert, raised only after the earlier one has ended (one live alert per account), may close what is left.

Revision ID: 0013_closes_per_alert
Revises: 0012_insight
Create Date: 2026-12-01 15:00:00

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0013_closes_per_alert'
down_revision = '0012_insight'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('alert_closes', schema=None) as batch_op:
        batch_op.drop_constraint('uq_alert_closes_account_id_position_key', type_='unique')
        batch_op.create_unique_constraint('uq_alert_closes_alert_id_position_key', ['alert_id', 'position_key'])


def downgrade():
    # Only while no position has closes in two alerts.
    with op.batch_alter_table('alert_closes', schema=None) as batch_op:
        batch_op.drop_constraint('uq_alert_closes_alert_id_position_key', type_='unique')
        batch_op.create_unique_constraint('uq_alert_closes_account_id_position_key', ['account_id', 'position_key'])
