# ruff: noqa: E501, RUF001, W291, W293
# (the documentation's examples are kept verbatim: long lines, trailing blanks, a Cyrillic letter in a word)
"""The official documentation's examples run unchanged against the `terminal` process.

Each example below is the Python example of the function's page in the MetaTrader5 documentation
(mql5.com, "Python Integration"; the text as mt5linux's docstrings copy it), character for character but
for two things:

- how `mt5` is obtained: not `import MetaTrader5 as mt5` (the package is Windows-only) but
  `shared.mt5.sim.client.connect`, the `terminal` process's MetaTrader5 module with its numpy arrays
  copied as arrays (without pickle), already logged in to an account, as a desktop terminal is when a
  script starts (the examples call `initialize()` without a login);
- copy_ticks_range's example asks for AUDUSD, which the simulator does not trade: it asks for EURUSD here.

The examples ask for 2020's history, which a simulator started today has not got: they run as written
(and must still print the official columns), and once more with today's date, where they must print data.
"""

from __future__ import annotations

import contextlib
import io
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.mt5.sim.client import RemoteMetaTrader5, connect
from tests.processes import terminal_server

ORDER_CALC_MARGIN = """
import MetaTrader5 as mt5
# display data on the MetaTrader 5 package
print("MetaTrader5 package author: ",mt5.__author__)
print("MetaTrader5 package version: ",mt5.__version__)
 
# establish connection to MetaTrader 5 terminal
if not mt5.initialize():
    print("initialize() failed, error code =",mt5.last_error())
    quit()
 
# get account currency
account_currency=mt5.account_info().currency
print("Account сurrency:",account_currency)
 
# arrange the symbol list
symbols=("EURUSD","GBPUSD","USDJPY", "USDCHF","EURJPY","GBPJPY")
print("Symbols to check margin:", symbols)
action=mt5.ORDER_TYPE_BUY
lot=0.1
for symbol in symbols:
    symbol_info=mt5.symbol_info(symbol)
    if symbol_info is None:
        print(symbol,"not found, skipped")
        continue
    if not symbol_info.visible:
        print(symbol, "is not visible, trying to switch on")
        if not mt5.symbol_select(symbol,True):
            print("symbol_select({}}) failed, skipped",symbol)
            continue
    ask=mt5.symbol_info_tick(symbol).ask
    margin=mt5.order_calc_margin(action,symbol,lot,ask)
    if margin != None:
        print("   {} buy {} lot margin: {} {}".format(symbol,lot,margin,account_currency));
    else:
        print("order_calc_margin failed: , error code =", mt5.last_error())
 
# shut down connection to the MetaTrader 5 terminal
mt5.shutdown()
"""

ORDER_CALC_PROFIT = """
import MetaTrader5 as mt5
# display data on the MetaTrader 5 package
print("MetaTrader5 package author: ",mt5.__author__)
print("MetaTrader5 package version: ",mt5.__version__)
 
# establish connection to MetaTrader 5 terminal
if not mt5.initialize():
    print("initialize() failed, error code =",mt5.last_error())
    quit()
 
# get account currency
account_currency=mt5.account_info().currency
print("Account сurrency:",account_currency)
 
# arrange the symbol list
symbols = ("EURUSD","GBPUSD","USDJPY")
print("Symbols to check margin:", symbols)
# estimate profit for buying and selling
lot=1.0
distance=300
for symbol in symbols:
    symbol_info=mt5.symbol_info(symbol)
    if symbol_info is None:
        print(symbol,"not found, skipped")
        continue
    if not symbol_info.visible:
        print(symbol, "is not visible, trying to switch on")
        if not mt5.symbol_select(symbol,True):
            print("symbol_select({}}) failed, skipped",symbol)
            continue
    point=mt5.symbol_info(symbol).point
    symbol_tick=mt5.symbol_info_tick(symbol)
    ask=symbol_tick.ask
    bid=symbol_tick.bid
    buy_profit=mt5.order_calc_profit(mt5.ORDER_TYPE_BUY,symbol,lot,ask,ask+distance*point)
    if buy_profit!=None:
        print("   buy {} {} lot: profit on {} points => {} {}".format(symbol,lot,distance,buy_profit,account_currency));
    else:
        print("order_calc_profit(ORDER_TYPE_BUY) failed, error code =",mt5.last_error())
    sell_profit=mt5.order_calc_profit(mt5.ORDER_TYPE_SELL,symbol,lot,bid,bid-distance*point)
    if sell_profit!=None:
        print("   sell {} {} lots: profit on {} points => {} {}".format(symbol,lot,distance,sell_profit,account_currency));
    else:
        print("order_calc_profit(ORDER_TYPE_SELL) failed, error code =",mt5.last_error())
    print()
 
# shut down connection to the MetaTrader 5 terminal
mt5.shutdown()
"""

COPY_TICKS_FROM = """
from datetime import datetime
import MetaTrader5 as mt5
# display data on the MetaTrader 5 package
print("MetaTrader5 package author: ",mt5.__author__)
print("MetaTrader5 package version: ",mt5.__version__)
 
# import the 'pandas' module for displaying data obtained in the tabular form
import pandas as pd
pd.set_option('display.max_columns', 500) # number of columns to be displayed
pd.set_option('display.width', 1500)      # max table width to display
# import pytz module for working with time zone
import pytz
 
# establish connection to MetaTrader 5 terminal
if not mt5.initialize():
    print("initialize() failed, error code =",mt5.last_error())
    quit()
 
# set time zone to UTC
timezone = pytz.timezone("Etc/UTC")
# create 'datetime' object in UTC time zone to avoid the implementation of a local time zone offset
utc_from = datetime(2020, 1, 10, tzinfo=timezone)
# request 100 000 EURUSD ticks starting from 10.01.2019 in UTC time zone
ticks = mt5.copy_ticks_from("EURUSD", utc_from, 100000, mt5.COPY_TICKS_ALL)
print("Ticks received:",len(ticks))
 
# shut down connection to the MetaTrader 5 terminal
mt5.shutdown()
 
# display data on each tick on a new line
print("Display obtained ticks 'as is'")
count = 0
for tick in ticks:
    count+=1
    print(tick)
    if count >= 10:
        break
 
# create DataFrame out of the obtained data
ticks_frame = pd.DataFrame(ticks)
# convert time in seconds into the datetime format
ticks_frame['time']=pd.to_datetime(ticks_frame['time'], unit='s')
 
# display data
print("\\nDisplay dataframe with ticks")
print(ticks_frame.head(10))  
"""

COPY_TICKS_RANGE = """
from datetime import datetime
import MetaTrader5 as mt5
# display data on the MetaTrader 5 package
print("MetaTrader5 package author: ",mt5.__author__)
print("MetaTrader5 package version: ",mt5.__version__)
 
# import the 'pandas' module for displaying data obtained in the tabular form
import pandas as pd
pd.set_option('display.max_columns', 500) # number of columns to be displayed
pd.set_option('display.width', 1500)      # max table width to display
# import pytz module for working with time zone
import pytz
 
# establish connection to MetaTrader 5 terminal
if not mt5.initialize():
    print("initialize() failed, error code =",mt5.last_error())
    quit()
 
# set time zone to UTC
timezone = pytz.timezone("Etc/UTC")
# create 'datetime' objects in UTC time zone to avoid the implementation of a local time zone offset
utc_from = datetime(2020, 1, 10, tzinfo=timezone)
utc_to = datetime(2020, 1, 11, tzinfo=timezone)
# request AUDUSD ticks within 11.01.2020 - 11.01.2020
ticks = mt5.copy_ticks_range("AUDUSD", utc_from, utc_to, mt5.COPY_TICKS_ALL)
print("Ticks received:",len(ticks))
 
# shut down connection to the MetaTrader 5 terminal
mt5.shutdown()
 
# display data on each tick on a new line
print("Display obtained ticks 'as is'")
count = 0
for tick in ticks:
    count+=1
    print(tick)
    if count >= 10:
        break
 
# create DataFrame out of the obtained data
ticks_frame = pd.DataFrame(ticks)
# convert time in seconds into the datetime format
ticks_frame['time']=pd.to_datetime(ticks_frame['time'], unit='s')
 
# display data
print("\\nDisplay dataframe with ticks")
print(ticks_frame.head(10)) 
"""

COPY_RATES_FROM = """
from datetime import datetime
import MetaTrader5 as mt5
# display data on the MetaTrader 5 package
print("MetaTrader5 package author: ",mt5.__author__)
print("MetaTrader5 package version: ",mt5.__version__)
 
# import the 'pandas' module for displaying data obtained in the tabular form
import pandas as pd
pd.set_option('display.max_columns', 500) # number of columns to be displayed
pd.set_option('display.width', 1500)      # max table width to display
# import pytz module for working with time zone
import pytz
 
# establish connection to MetaTrader 5 terminal
if not mt5.initialize():
    print("initialize() failed, error code =",mt5.last_error())
    quit()
 
# set time zone to UTC
timezone = pytz.timezone("Etc/UTC")
# create 'datetime' object in UTC time zone to avoid the implementation of a local time zone offset
utc_from = datetime(2020, 1, 10, tzinfo=timezone)
# get 10 EURUSD H4 bars starting from 01.10.2020 in UTC time zone
rates = mt5.copy_rates_from("EURUSD", mt5.TIMEFRAME_H4, utc_from, 10)
 
# shut down connection to the MetaTrader 5 terminal
mt5.shutdown()
# display each element of obtained data in a new line
print("Display obtained data 'as is'")
for rate in rates:
    print(rate)
 
# create DataFrame out of the obtained data
rates_frame = pd.DataFrame(rates)
# convert time in seconds into the datetime format
rates_frame['time']=pd.to_datetime(rates_frame['time'], unit='s')
                           
# display data
print("\\nDisplay dataframe with data")
print(rates_frame)  
"""

COPY_RATES_FROM_POS = """
from datetime import datetime
import MetaTrader5 as mt5
# display data on the MetaTrader 5 package
print("MetaTrader5 package author: ",mt5.__author__)
print("MetaTrader5 package version: ",mt5.__version__)
 
# import the 'pandas' module for displaying data obtained in the tabular form
import pandas as pd
pd.set_option('display.max_columns', 500) # number of columns to be displayed
pd.set_option('display.width', 1500)      # max table width to display
 
# establish connection to MetaTrader 5 terminal
if not mt5.initialize():
    print("initialize() failed, error code =",mt5.last_error())
    quit()
 
# get 10 GBPUSD D1 bars from the current day
rates = mt5.copy_rates_from_pos("GBPUSD", mt5.TIMEFRAME_D1, 0, 10)
 
# shut down connection to the MetaTrader 5 terminal
mt5.shutdown()
# display each element of obtained data in a new line
print("Display obtained data 'as is'")
for rate in rates:
    print(rate)
 
# create DataFrame out of the obtained data
rates_frame = pd.DataFrame(rates)
# convert time in seconds into the datetime format
rates_frame['time']=pd.to_datetime(rates_frame['time'], unit='s')
 
# display data
print("\\nDisplay dataframe with data")
print(rates_frame) 
"""

COPY_RATES_RANGE = """
from datetime import datetime
import MetaTrader5 as mt5
# display data on the MetaTrader 5 package
print("MetaTrader5 package author: ",mt5.__author__)
print("MetaTrader5 package version: ",mt5.__version__)
 
# import the 'pandas' module for displaying data obtained in the tabular form
import pandas as pd
pd.set_option('display.max_columns', 500) # number of columns to be displayed
pd.set_option('display.width', 1500)      # max table width to display
# import pytz module for working with time zone
import pytz
 
# establish connection to MetaTrader 5 terminal
if not mt5.initialize():
    print("initialize() failed, error code =",mt5.last_error())
    quit()
 
# set time zone to UTC
timezone = pytz.timezone("Etc/UTC")
# create 'datetime' objects in UTC time zone to avoid the implementation of a local time zone offset
utc_from = datetime(2020, 1, 10, tzinfo=timezone)
utc_to = datetime(2020, 1, 11, hour = 13, tzinfo=timezone)
# get bars from USDJPY M5 within the interval of 2020.01.10 00:00 - 2020.01.11 13:00 in UTC time zone
rates = mt5.copy_rates_range("USDJPY", mt5.TIMEFRAME_M5, utc_from, utc_to)
 
# shut down connection to the MetaTrader 5 terminal
mt5.shutdown()
 
# display each element of obtained data in a new line
print("Display obtained data 'as is'")
counter=0
for rate in rates:
    counter+=1
    if counter<=10:
        print(rate)
 
# create DataFrame out of the obtained data
rates_frame = pd.DataFrame(rates)
# convert time in seconds into the 'datetime' format
rates_frame['time']=pd.to_datetime(rates_frame['time'], unit='s')
 
# display data
print("\\nDisplay dataframe with data")
print(rates_frame.head(10))
"""

TICK_COLUMNS = ["time", "bid", "ask", "last", "volume", "time_msc", "flags", "volume_real"]
RATE_COLUMNS = ["time", "open", "high", "low", "close", "tick_volume", "spread", "real_volume"]
# The examples' only dates: 2020-01-10, their start, and 2020-01-11, the end of a range.
_START_2020, _END_2020 = "datetime(2020, 1, 10", "datetime(2020, 1, 11"


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with terminal_server(args=["--no-state-file"]) as port:
        feed = connect("127.0.0.1", port)
        try:
            assert feed.initialize(login=730001, password="x", server="TradeGuard-Sim")
            for _ in range(6):  # a few seconds of feed, so the history has ticks
                for symbol in ("EURUSD", "GBPUSD", "USDJPY"):
                    feed.symbol_info_tick(symbol)
                time.sleep(0.5)
        finally:
            feed.close()
        yield port


def run(example: str, port: int, *, today: bool = False, from_tomorrow: bool = False) -> str:
    """The example's output. Its `import MetaTrader5 as mt5` is the one line replaced: `mt5` is given."""
    mt5: RemoteMetaTrader5 = connect("127.0.0.1", port)
    try:
        assert mt5.initialize(login=730001, password="x", server="TradeGuard-Sim")
        source = example.replace("import MetaTrader5 as mt5\n", "", 1)
        assert "MetaTrader5" not in source.replace('"MetaTrader5 package', "")
        if today:  # the same example on the simulator's own history: from today (or tomorrow) on
            start = datetime.now(UTC) + timedelta(days=1 if from_tomorrow else 0)
            end = start + timedelta(days=1)
            source = source.replace(_START_2020, f"datetime({start.year}, {start.month}, {start.day}")
            source = source.replace(_END_2020, f"datetime({end.year}, {end.month}, {end.day}")
        out = io.StringIO()
        namespace: dict[str, Any] = {"mt5": mt5, "__name__": "__main__"}
        with contextlib.redirect_stdout(out):
            exec(compile(source, "<documentation example>", "exec"), namespace)  # noqa: S102
        return out.getvalue()
    finally:
        mt5.close()


def test_order_calc_margin(port: int) -> None:
    out = run(ORDER_CALC_MARGIN, port)
    assert "Account сurrency: USD" in out
    margins = dict(re.findall(r"   (\w+) buy 0\.1 lot margin: ([\d.]+) USD", out))
    assert set(margins) == {"EURUSD", "GBPUSD", "USDJPY"}
    assert 100 < float(margins["EURUSD"]) < 120 and float(margins["USDJPY"]) == 100.0  # 10000 USD at 1:100
    assert "USDCHF not found, skipped" in out and "failed" not in out


def test_order_calc_profit(port: int) -> None:
    out = run(ORDER_CALC_PROFIT, port)
    profits = re.findall(r"(buy|sell) (\w+) 1\.0 lots?: profit on 300 points => (-?[\d.]+) USD", out)
    assert len(profits) == 6, out
    by = {(side, symbol): float(value) for side, symbol, value in profits}
    assert by["buy", "EURUSD"] == by["sell", "GBPUSD"] == 300.0  # 300 points of 0.00001 on 100000
    assert 150 < by["buy", "USDJPY"] < 250  # 30000 JPY, converted


def assert_frame(out: str, columns: list[str], *, rows: bool) -> None:
    header = next(line for line in out.splitlines() if "time" in line and columns[-1] in line)
    if header.startswith("Columns: ["):  # an empty frame names its columns as a list
        assert [c.strip() for c in header.removeprefix("Columns: [").removesuffix("]").split(",")] == columns
    else:
        assert header.split()[-len(columns) :] == columns, header
    assert ("Empty DataFrame" not in out) == rows, out


@pytest.mark.parametrize("today", [False, True], ids=["as written", "today"])
def test_copy_ticks_from(port: int, today: bool) -> None:
    out = run(COPY_TICKS_FROM, port, today=today)
    received = int(re.search(r"Ticks received: (\d+)", out).group(1))  # type: ignore[union-attr]
    assert received > 1  # 2020 is long before the feed started: every tick since, as the example asks
    assert_frame(out, TICK_COLUMNS, rows=True)


@pytest.mark.parametrize("today", [False, True], ids=["as written", "today"])
def test_copy_ticks_range(port: int, today: bool) -> None:
    out = run(COPY_TICKS_RANGE.replace('"AUDUSD"', '"EURUSD"'), port, today=today)
    received = int(re.search(r"Ticks received: (\d+)", out).group(1))  # type: ignore[union-attr]
    assert (received > 0) == today
    assert_frame(out, TICK_COLUMNS, rows=today)


@pytest.mark.parametrize("today", [False, True], ids=["as written", "today"])
def test_copy_rates_from(port: int, today: bool) -> None:
    # copy_rates_from counts back from its date: from tomorrow 00:00 UTC, the bars of the feed (started
    # today); as written (2020), none.
    out = run(COPY_RATES_FROM, port, today=today, from_tomorrow=today)
    assert "Display dataframe with data" in out
    assert_frame(out, RATE_COLUMNS, rows=today)


def test_copy_rates_from_pos(port: int) -> None:
    out = run(COPY_RATES_FROM_POS, port)
    assert_frame(out, RATE_COLUMNS, rows=True)
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert re.search(rf"^0\s+{today}\s+1\.\d+", out, re.MULTILINE), out  # today's D1 bar, of GBPUSD


@pytest.mark.parametrize("today", [False, True], ids=["as written", "today"])
def test_copy_rates_range(port: int, today: bool) -> None:
    out = run(COPY_RATES_RANGE, port, today=today)
    assert_frame(out, RATE_COLUMNS, rows=today)
