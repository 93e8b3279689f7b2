"""Fuzz every operation of the app's own OpenAPI document with schemathesis:
no 5xx, and every response conforms to the documented schema.

The default run tries QUICK_EXAMPLES schema-valid cases per operation; the
``slow`` run (CI: ``pytest -m slow``) SOPBOT_FUZZ_EXAMPLES (default 20) valid
and invalid ones. Both on a database seeded with a published template, a
contact, a group and their deliveries so that ids 1 lead somewhere."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest
import schemathesis
from auth_helpers import make_auth_headers
from factories import add_contact, add_group, enroll, new_friend_spec, publish, store_menu_spec
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.generation.modes import GenerationMode
from schemathesis.python import asgi

from api.app import create_app

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
EXAMPLES = int(os.environ.get("SOPBOT_FUZZ_EXAMPLES", "20"))
QUICK_EXAMPLES = 5


@pytest.fixture
def api_schema(engine, clock, settings):
    clock.set(T0)
    template_id = publish(engine, new_friend_spec(), T0)
    contact = add_contact(engine, "wm_fuzz", "模糊", T0)
    enroll(engine, template_id, [(contact, T0)], T0)
    publish(engine, store_menu_spec(), T0)
    add_group(engine, "wr_fuzz", "门店群", T0)
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    fuzz_schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # Examples and fuzzing only: the coverage phase adds hundreds of boundary
    # cases per operation, too slow for every CI run.
    fuzz_schema.config.phases.coverage.enabled = False
    yield fuzz_schema
    asgi.shutdown_lifespans()  # schemathesis started the app's lifespan; end it here


class _Admin:
    """An admin's token, so the fuzzing gets past the role checks into the routes.
    A case may revoke it (DELETE /api/tokens/{id}) or end its user's access; every
    later case would then only meet the 401 of the auth check, so a new admin
    takes over when that happens."""

    def __init__(self, engine) -> None:
        self.engine, self.count = engine, 0
        self.headers = self.renew()

    def renew(self) -> dict[str, str]:
        self.count += 1
        self.headers = make_auth_headers(self.engine, T0, username=f"fuzz-admin-{self.count}")
        return self.headers


@pytest.fixture
def positive_api_schema(api_schema):
    """Schema-valid requests only: the default run's short fuzz. Invalid data is
    tried in the slow run (a short run's few invalid cases land on different
    parameters from run to run)."""
    api_schema.config.generation.modes = [GenerationMode.POSITIVE]
    return api_schema


@pytest.fixture
def admin(engine) -> _Admin:
    return _Admin(engine)


schema = schemathesis.pytest.from_fixture("api_schema")
positive_schema = schemathesis.pytest.from_fixture("positive_api_schema")


def _fuzzed(max_examples: int):
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,  # the same cases every run: a failure reproduces
        # No shrinking: on these nested bodies it can take minutes; the report
        # still names the request (with a curl line) that failed.
        phases=[Phase.explicit, Phase.generate],
    )


def _check(case, admin: _Admin) -> None:
    response = case.call(headers=admin.headers)
    if response.status_code == 401:  # an earlier case revoked the token: a new admin
        response = case.call(headers=admin.renew())
    # Every check schemathesis has (no 5xx, response schema, documented status
    # codes and content types, negative data refused, auth enforced, ...) but
    # "schema-valid data accepted": a body the schema allows may still break a
    # rule only the domain knows (a duplicate name is 409, an unknown account or
    # a cron that never fires 422), and saying so is the route's job.
    case.validate_response(
        response, headers=admin.headers, excluded_checks=[positive_data_acceptance]
    )


@positive_schema.parametrize()
@_fuzzed(QUICK_EXAMPLES)
def test_no_server_error_and_responses_match_the_schema(case, admin):
    _check(case, admin)


@pytest.mark.slow
@schema.parametrize()
@_fuzzed(EXAMPLES)
def test_no_server_error_and_responses_match_the_schema_at_length(case, admin):
    _check(case, admin)


def test_an_id_past_64_bits_is_a_client_error(engine, clock, settings):
    """Found by the fuzzing above: SQLite cannot bind it (OverflowError → 500)."""
    from fastapi.testclient import TestClient

    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with TestClient(app) as client:
        client.headers.update(make_auth_headers(engine, T0))
        for method in ("GET", "PUT", "POST"):
            url = "/api/templates/9223372036854775808" + ("/reject" if method == "POST" else "")
            response = client.request(method, url, json=new_friend_spec())
            assert 400 <= response.status_code < 500, (method, response.text)


def test_domain_422s_are_documented(engine, clock, settings):
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    shape = app.openapi()["components"]["schemas"]["HTTPValidationError"]["properties"]
    assert {"type": "string"} in shape["detail"]["anyOf"] and "errors" in shape
