"""reconciliation identity: events once per position key, trades' position_key and vanished_at, opened_from

reconciliation_logs get position_key (login, server, identifier and open time of the position; events
already recorded get "ticket:<position_ticket>"), and the once-per-position index moves from the ticket
to it; reconciliation_logs.opened_by is renamed opened_from, the name the positions view uses; trades
get position_key (their position's, once found) and vanished_at.

Revision ID: 0008_reconciliation_identity
Revises: 0007_key_checks
Create Date: 2026-12-02 09:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0008_reconciliation_identity'
down_revision = '0007_key_checks'
branch_labels = None
depends_on = None

_ONCE = "event_type <> 'divergence'"
# The key of an event recorded before keys were kept: its ticket, which was unique per account and event
# type under the old index, and never equal to a real key (a 64-digit hex digest).
_LEGACY_KEY = "'ticket:' || CAST(position_ticket AS VARCHAR(20))"


def upgrade():
    with op.batch_alter_table('reconciliation_logs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('position_key', sa.String(length=64), nullable=True))
        batch_op.alter_column('opened_by', new_column_name='opened_from',
                              existing_type=sa.String(length=16), existing_nullable=True)
    op.execute(f"UPDATE reconciliation_logs SET position_key = {_LEGACY_KEY}")  # noqa: S608 - fixed text
    with op.batch_alter_table('reconciliation_logs', schema=None) as batch_op:
        batch_op.alter_column('position_key', existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_index('uq_reconciliation_logs_once')
        batch_op.create_index(
            'uq_reconciliation_logs_once',
            ['account_id', 'event_type', 'position_key'],
            unique=True,
            postgresql_where=sa.text(_ONCE),
            sqlite_where=sa.text(_ONCE),
        )

    with op.batch_alter_table('trades', schema=None) as batch_op:
        batch_op.add_column(sa.Column('position_key', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('vanished_at', sa.DateTime(timezone=True), nullable=True))


def downgrade():
    with op.batch_alter_table('trades', schema=None) as batch_op:
        batch_op.drop_column('vanished_at')
        batch_op.drop_column('position_key')

    # Back to one event per ticket: of the events the old index would refuse (a ticket given again by
    # a restarted terminal), the first of each is kept.
    op.execute(
        f"""
        DELETE FROM reconciliation_logs WHERE {_ONCE} AND id NOT IN (
            SELECT min(id) FROM reconciliation_logs WHERE {_ONCE}
            GROUP BY account_id, event_type, position_ticket
        )
        """  # noqa: S608 - fixed text
    )
    with op.batch_alter_table('reconciliation_logs', schema=None) as batch_op:
        batch_op.drop_index('uq_reconciliation_logs_once')
        batch_op.create_index(
            'uq_reconciliation_logs_once',
            ['account_id', 'event_type', 'position_ticket'],
            unique=True,
            postgresql_where=sa.text(_ONCE),
            sqlite_where=sa.text(_ONCE),
        )
        batch_op.alter_column('opened_from', new_column_name='opened_by',
                              existing_type=sa.String(length=16), existing_nullable=True)
        batch_op.drop_column('position_key')
