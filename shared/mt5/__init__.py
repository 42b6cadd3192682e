"""The MetaTrader 5 seam.

Everything above this package talks to "an object that behaves like the MetaTrader5 module" (the terminal
protocol, `protocol.MetaTrader5Module`): the official package (`mt5://`), the official package in a
remote Python over RPyC (`mt5linux://host:port`), or TradeGuard's simulated terminal (`sim://`,
in-process, or `sim://host:port` for the `terminal` process). `gateway.Gateway` drives any of them and
hands plain frozen dataclasses to the rest of the code.
"""
