"""guards: account_sync figures, account_risk, guard_states, drawdown_alerts, alert_closes, market_quotes

Revision ID: 0010_guards
Revises: 0009_accounts_and_retries
Create Date: 2026-11-30 10:00:00

"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


# revision identifiers, used by Alembic.
revision = '0010_guards'
down_revision = '0009_accounts_and_retries'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MONEY = sa.Numeric(20, 4)
PRICE = sa.Numeric(20, 10)
VOLUME = sa.Numeric(14, 4)
WHEN = sa.DateTime(timezone=True)


def upgrade():
    with op.batch_alter_table('account_sync', schema=None) as batch_op:
        batch_op.add_column(sa.Column('equity', MONEY, nullable=True))
        batch_op.add_column(sa.Column('balance', MONEY, nullable=True))
        batch_op.add_column(sa.Column('margin', MONEY, nullable=True))
    op.create_table(
        'account_risk',
        sa.Column('account_id', sa.Integer(), sa.ForeignKey('accounts.id'), primary_key=True),
        sa.Column('settings', JSON, nullable=False),
        sa.Column('updated_by', sa.Integer(), sa.ForeignKey('users.id'), nullable=True),
        sa.Column('updated_at', WHEN, nullable=False),
    )
    op.create_table(
        'guard_states',
        sa.Column('account_id', sa.Integer(), sa.ForeignKey('accounts.id'), primary_key=True),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('limits', JSON, nullable=False),
        sa.Column('margin_streak', sa.Integer(), nullable=False),
        sa.Column('blocked_symbols', JSON, nullable=False),
        sa.Column('initial_balance', MONEY, nullable=True),
        sa.Column('broker_offset_seconds', sa.Integer(), nullable=False),
        sa.Column('equity', MONEY, nullable=True),
        sa.Column('balance', MONEY, nullable=True),
        sa.Column('margin_level', sa.Numeric(14, 4), nullable=True),
        sa.Column('currency', sa.String(3), nullable=True),
        sa.Column('read_at', WHEN, nullable=True),
        sa.Column('halted_at', WHEN, nullable=True),
        sa.Column('halted_reason', sa.String(200), nullable=True),
        sa.Column('halted_by_alert_id', sa.BigInteger(), nullable=True),
        sa.Column('halted_limit', sa.String(100), nullable=True),
        sa.Column('halted_resume', sa.String(16), nullable=True),
        sa.Column('updated_at', WHEN, nullable=False),
    )
    op.create_table(
        'drawdown_alerts',
        sa.Column('id', BIGINT, primary_key=True, autoincrement=True),
        sa.Column('account_id', sa.Integer(), sa.ForeignKey('accounts.id'), nullable=False),
        sa.Column('owner_id', sa.Integer(), sa.ForeignKey('users.id'), nullable=False),
        sa.Column('alert_type', sa.String(16), nullable=False),
        sa.Column('limit_name', sa.String(100), nullable=True),
        sa.Column('symbol', sa.String(32), nullable=True),
        sa.Column('reason', sa.String(300), nullable=False),
        sa.Column('currency', sa.String(3), nullable=False),
        sa.Column('drawdown_percent', sa.Numeric(9, 4), nullable=True),
        sa.Column('drawdown_amount', MONEY, nullable=True),
        sa.Column('equity', MONEY, nullable=False),
        sa.Column('threshold_percent', sa.Numeric(9, 4), nullable=True),
        sa.Column('margin_level', sa.Numeric(14, 4), nullable=True),
        sa.Column('positions_closed_count', sa.Integer(), nullable=False),
        sa.Column('total_loss', MONEY, nullable=False),
        sa.Column('action_taken', sa.String(32), nullable=True),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('close_at', WHEN, nullable=False),
        sa.Column('created_at', WHEN, nullable=False),
        sa.Column('executed_at', WHEN, nullable=True),
        sa.Column('details', JSON, nullable=False),
    )
    op.create_index(
        'uq_drawdown_alerts_live', 'drawdown_alerts', ['account_id'], unique=True,
        postgresql_where=sa.text("status IN ('pending', 'closing')"),
        sqlite_where=sa.text("status IN ('pending', 'closing')"),
    )
    op.create_index('ix_drawdown_alerts_owner_created', 'drawdown_alerts', ['owner_id', 'created_at'])
    op.create_table(
        'alert_closes',
        sa.Column('id', BIGINT, primary_key=True, autoincrement=True),
        sa.Column('alert_id', BIGINT, sa.ForeignKey('drawdown_alerts.id'), nullable=False),
        sa.Column('account_id', sa.Integer(), sa.ForeignKey('accounts.id'), nullable=False),
        sa.Column('trade_id', sa.Integer(), sa.ForeignKey('trades.id'), nullable=True),
        sa.Column('position_ticket', sa.BigInteger(), nullable=False),
        sa.Column('position_key', sa.String(64), nullable=False),
        sa.Column('symbol', sa.String(32), nullable=False),
        sa.Column('side', sa.String(4), nullable=False),
        sa.Column('volume', VOLUME, nullable=False),
        sa.Column('comment', sa.String(31), nullable=True, unique=True),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('retcode', sa.Integer(), nullable=True),
        sa.Column('close_price', PRICE, nullable=True),
        sa.Column('pnl', MONEY, nullable=True),
        sa.Column('deal_ticket', sa.BigInteger(), nullable=True),
        sa.Column('error', sa.String(300), nullable=True),
        sa.Column('created_at', WHEN, nullable=False),
        sa.Column('sent_at', WHEN, nullable=True),
        sa.Column('closed_at', WHEN, nullable=True),
        sa.UniqueConstraint('account_id', 'position_key'),
    )
    op.create_index('ix_alert_closes_alert_id', 'alert_closes', ['alert_id'])
    op.create_table(
        'market_quotes',
        sa.Column('server', sa.String(100), primary_key=True),
        sa.Column('symbol', sa.String(32), primary_key=True),
        sa.Column('bid', PRICE, nullable=False),
        sa.Column('ask', PRICE, nullable=False),
        sa.Column('spread_pips', sa.Numeric(12, 2), nullable=False),
        sa.Column('gap_pips', sa.Numeric(12, 2), nullable=False),
        sa.Column('quoted_at', WHEN, nullable=False),
        sa.Column('trading', sa.Boolean(), nullable=False),
        sa.Column('seen_at', WHEN, nullable=False),
    )
    # The pre-trade check of max_orders_per_minute counts an account's trades sent in the last minute.
    op.create_index('ix_trades_account_sent', 'trades', ['account_id', 'sent_at'])


def downgrade():
    op.drop_index('ix_trades_account_sent', table_name='trades')
    op.drop_table('market_quotes')
    op.drop_index('ix_alert_closes_alert_id', table_name='alert_closes')
    op.drop_table('alert_closes')
    op.drop_index('ix_drawdown_alerts_owner_created', table_name='drawdown_alerts')
    op.drop_index('uq_drawdown_alerts_live', table_name='drawdown_alerts')
    op.drop_table('drawdown_alerts')
    op.drop_table('guard_states')
    op.drop_table('account_risk')
    with op.batch_alter_table('account_sync', schema=None) as batch_op:
        batch_op.drop_column('margin')
        batch_op.drop_column('balance')
        batch_op.drop_column('equity')
