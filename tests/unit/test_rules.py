from decimal import Decimal as D

import pytest

from shared.signals.rules import price_level_errors


@pytest.mark.parametrize(
    ("side", "price", "sl", "tp"),
    [
        ("buy", D("1.10"), D("1.09"), D("1.12")),
        ("sell", D("1.10"), D("1.12"), D("1.09")),
        ("buy", None, D("1.09"), D("1.12")),
        ("sell", None, D("1.12"), D("1.09")),
        ("buy", D("1.10"), None, None),
        ("buy", None, None, D("1.12")),
    ],
)
def test_levels_on_the_right_side_pass(side, price, sl, tp):
    assert price_level_errors(side, price, sl, tp) == {}


def test_buy_with_stop_above_price_names_sl():
    assert price_level_errors("buy", D("1.10"), D("1.11"), None) == {
        "sl": ["for a buy, sl must be below price"]
    }


def test_buy_with_target_below_price_names_tp():
    assert price_level_errors("buy", D("1.10"), None, D("1.05")) == {
        "tp": ["for a buy, tp must be above price"]
    }


def test_sell_with_both_levels_wrong_names_both():
    errors = price_level_errors("sell", D("1.10"), D("1.05"), D("1.20"))
    assert errors == {
        "sl": ["for a sell, sl must be above price"],
        "tp": ["for a sell, tp must be below price"],
    }


def test_level_equal_to_price_is_refused():
    assert "sl" in price_level_errors("buy", D("1.10"), D("1.10"), None)
    assert "tp" in price_level_errors("sell", D("1.10"), None, D("1.10"))


def test_without_price_sl_and_tp_are_compared_with_each_other():
    assert price_level_errors("buy", None, D("1.2"), D("1.1")) == {"sl": ["for a buy, sl must be below tp"]}
    assert price_level_errors("sell", None, D("1.1"), D("1.2")) == {"sl": ["for a sell, sl must be above tp"]}
