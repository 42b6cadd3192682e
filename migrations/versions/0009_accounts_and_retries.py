"""accounts: one MT5 account (login, server) registered once; trades: last_error and next_retry_at

Revision ID: 0009_accounts_and_retries
Revises: 0008_reconciliation_identity
Create Date: 2026-11-30 08:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0009_accounts_and_retries'
down_revision = '0008_reconciliation_identity'
branch_labels = None
depends_on = None


def _refuse_duplicate_accounts():
    """Existing copies of one MT5 account stop the upgrade, named, rather than being deleted here: each
    copy may have its own trades, strategy clients, signals and history, and which of them is the one to
    keep is the owners' decision, not the migration's. The operator deletes (or corrects the login or
    server of) all but one of each, then runs the upgrade again."""
    bind = op.get_bind()
    duplicated = bind.execute(
        sa.text(
            "SELECT login, server FROM accounts GROUP BY login, server HAVING count(*) > 1 "
            "ORDER BY login, server"
        )
    ).all()
    if not duplicated:
        return
    lines = []
    for login, server in duplicated:
        ids = bind.execute(
            sa.text("SELECT id FROM accounts WHERE login = :login AND server = :server ORDER BY id"),
            {"login": login, "server": server},
        ).scalars()
        lines.append(f"login {login} on server {server!r}: accounts {', '.join(map(str, ids))}")
    raise RuntimeError(
        "these MT5 accounts are registered more than once, which TradeGuard now refuses (each copy sees "
        "the others' trades as outside positions); keep one account of each and delete the others (or "
        "correct their login or server), then run the upgrade again:\n  " + "\n  ".join(lines)
    )


def upgrade():
    _refuse_duplicate_accounts()
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.create_unique_constraint(batch_op.f('uq_accounts_login_server'), ['login', 'server'])

    with op.batch_alter_table('trades', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_error', sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column('next_retry_at', sa.DateTime(timezone=True), nullable=True))


def downgrade():
    with op.batch_alter_table('trades', schema=None) as batch_op:
        batch_op.drop_column('next_retry_at')
        batch_op.drop_column('last_error')

    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_accounts_login_server'), type_='unique')
