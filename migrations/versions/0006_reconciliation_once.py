"""reconciliation_logs: matched/outside/closed once per position (partial unique index)

Revision ID: 0006_reconciliation_once
Revises: 0005_signals_client_index
Create Date: 2026-11-21 21:40:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0006_reconciliation_once'
down_revision = '0005_signals_client_index'
branch_labels = None
depends_on = None

_ONCE = "event_type <> 'divergence'"


def upgrade():
    # Under the old key (with the fingerprint) a matched/outside/closed event could be recorded again
    # for the same position whenever its fingerprint changed. Those repeats are what the new index
    # forbids: keep the first of each, so the index can be built.
    op.execute(
        f"""
        DELETE FROM reconciliation_logs WHERE {_ONCE} AND id NOT IN (
            SELECT min(id) FROM reconciliation_logs WHERE {_ONCE}
            GROUP BY account_id, event_type, position_ticket
        )
        """  # noqa: S608 - fixed text
    )
    with op.batch_alter_table('reconciliation_logs', schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f('uq_reconciliation_logs_account_id_event_type_position_ticket_fingerprint'),
            type_='unique',
        )
        batch_op.create_index(
            'uq_reconciliation_logs_once',
            ['account_id', 'event_type', 'position_ticket'],
            unique=True,
            postgresql_where=sa.text(_ONCE),
            sqlite_where=sa.text(_ONCE),
        )


def downgrade():
    with op.batch_alter_table('reconciliation_logs', schema=None) as batch_op:
        batch_op.drop_index('uq_reconciliation_logs_once')
        batch_op.create_unique_constraint(
            batch_op.f('uq_reconciliation_logs_account_id_event_type_position_ticket_fingerprint'),
            ['account_id', 'event_type', 'position_ticket', 'fingerprint'],
        )
