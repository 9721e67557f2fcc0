"""No secret leaks: tokens, client secrets and a database password, set to distinctive values,
appear in no output, no Dagster event, no file under DAGSTER_HOME and no exception text.

Syncs run as the real console script with DEBUG logging captured into the event log
(httpx, httpcore, SQLAlchemy, psycopg, orders_etl) and DAGSTER_HOME set, so every event
and log record is stored: working syncs that send every secret (fake Shopify accepts the
token, or the client credentials and issues a token; fake Business Central accepts its client
secret; PostgreSQL as a role with that password), a sync whose
sources both refuse their credentials (401), and syncs whose database cannot be reached
or refuses the role. The secrets are real inputs each time: the fakes saw them.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from orders_etl_tests.conftest import PG_URL
from orders_etl_tests.crash_harness import cli_env, debug_dagster_home, run_sync, shop
from orders_etl_tests.fake_business_central import FakeBusinessCentral
from orders_etl_tests.test_cli import closed_port

SHOP_TOKEN = "shpat_SECRETtoken_9d1c7e52"
SHOP_CLIENT_SECRET = "shpss_SECRETclient_4b2a81"
BC_SECRET = "bcSECRETclient_7f3e0c99"
DB_PASSWORD = "pgSECRETpw_61a9d4"
CLIENT_ID = "orders-etl-app"
SECRETS = (SHOP_TOKEN, SHOP_CLIENT_SECRET, BC_SECRET, DB_PASSWORD)
DAY = ("--start", "2026-03-01", "--end", "2026-03-01")


@pytest.fixture
def password_url(pg_url):
    """``pg_url`` as a new role that has the password DB_PASSWORD (dropped afterwards)."""
    role = f"etl_{uuid.uuid4().hex[:10]}"
    schema = sa.make_url(pg_url).query["options"].removeprefix("-csearch_path=")
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{DB_PASSWORD}'"))
        conn.execute(sa.text(f"GRANT ALL ON SCHEMA {schema} TO {role}"))
    try:
        yield (
            sa.make_url(pg_url).set(username=role, password=DB_PASSWORD).render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))
        admin.dispose()


def stored_texts(home: Path) -> list[tuple[str, bytes]]:
    """Every file under DAGSTER_HOME, and every stored event rendered as text."""
    found = [(str(path), path.read_bytes()) for path in home.rglob("*") if path.is_file()]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        for run in runs:
            found.append((f"run {run.run_id} config/tags", repr((run.run_config, run.tags)).encode()))
            for record in instance.all_logs(run.run_id):
                found.append((f"run {run.run_id} event", dg.serialize_value(record).encode()))
    assert len(runs) >= 2  # the working sync and the failing-source sync were recorded
    return found


def leaks(texts: list[tuple[str, bytes]], secrets: tuple[str, ...]) -> list[str]:
    return [
        f"{secret[:6]}... in {where}"
        for where, data in texts
        for secret in secrets
        if secret.encode() in data
    ]


@pytest.mark.timeout(180)
def test_no_secret_in_outputs_events_files_or_errors(password_url, tmp_path):
    home = debug_dagster_home(tmp_path / "dagster_home")
    role = sa.make_url(password_url).username
    outputs: list[tuple[str, bytes]] = []

    def sync(name: str, url: str, shop_url: str, bc: FakeBusinessCentral, client_credentials: bool = False):
        shopify = (
            {"SHOPIFY_CLIENT_ID": CLIENT_ID, "SHOPIFY_CLIENT_SECRET": SHOP_CLIENT_SECRET}
            if client_credentials
            else {"SHOPIFY_ACCESS_TOKEN": SHOP_TOKEN}
        )
        env = {k: v for k, v in cli_env(url, shop_url).items() if k != "SHOPIFY_ACCESS_TOKEN"} | shopify
        env |= dict(
            DAGSTER_HOME=str(home),
            BC_BASE_URL=bc.base_url,
            BC_COMPANY_ID=bc.company_id,
            BC_TENANT_ID=bc.tenant_id,
            BC_CLIENT_ID=bc.client_id,
            BC_CLIENT_SECRET=BC_SECRET,
            BC_TOKEN_URL=bc.token_url,
        )
        result = run_sync(env, *DAY, cwd=tmp_path)
        outputs.append((f"{name} stdout", result.stdout.encode()))
        outputs.append((f"{name} stderr", result.stderr.encode()))
        return result

    accepting_shop = shop(30, access_token=SHOP_TOKEN)
    granting_shop = shop(30, access_token=None, client_id=CLIENT_ID, client_secret=SHOP_CLIENT_SECRET)
    # Client credentials: the shop knows this app by another secret, so it refuses ours.
    refusing_shop = shop(30, access_token=None, client_id=CLIENT_ID, client_secret="shpss_another")
    try:
        with (
            FakeBusinessCentral(client_secret=BC_SECRET) as accepting_bc,
            FakeBusinessCentral(client_secret="a-different-secret") as refusing_bc,
        ):
            working = sync("working sync", password_url, accepting_shop.url, accepting_bc)
            assert working.returncode == 0, working.stderr
            assert f"into postgresql+psycopg://{role}:***@127.0.0.1" in working.stdout  # masked, shown
            assert accepting_shop.stats.graphql > 0 and accepting_bc.token_requests > 0  # secrets were used

            granted = sync("client credentials", password_url, granting_shop.url, accepting_bc, True)
            assert granted.returncode == 0, granted.stderr
            assert granting_shop.issued_tokens and granting_shop.stats.graphql > 0

            refused = sync("refused sources", password_url, refusing_shop.url, refusing_bc, True)
            assert refused.returncode == 1
            assert refusing_shop.stats.token_requests > 0 and refusing_bc.token_requests > 0
            assert "401" in refused.stderr or "refused" in refused.stderr

            unreachable = f"postgresql+psycopg://{role}:{DB_PASSWORD}@127.0.0.1:{closed_port()}/orders"
            down = sync("unreachable database", unreachable, accepting_shop.url, accepting_bc)
            assert down.returncode == 1
            assert down.stderr.startswith(f"orders-etl: store: cannot open postgresql+psycopg://{role}:***@")

            no_such = sa.make_url(password_url).set(database=f"missing_{uuid.uuid4().hex[:6]}")
            missing = sync(
                "missing database",
                no_such.render_as_string(hide_password=False),
                accepting_shop.url,
                accepting_bc,
            )
            assert missing.returncode == 1 and missing.stderr.count("\n") == 1
            assert f"{role}:***@" in missing.stderr and "does not exist" in missing.stderr

            issued = tuple(
                accepting_bc.all_tokens + refusing_bc.all_tokens + list(granting_shop.issued_tokens)
            )
    finally:
        for fake in (accepting_shop, granting_shop, refusing_shop):
            fake.stop()

    texts = outputs + stored_texts(home)
    # DEBUG records of the HTTP client and the database layer were captured into the events.
    assert any(b"send_request_headers.started" in data for where, data in texts if "event" in where)
    assert any(b"checked out from pool" in data for where, data in texts if "event" in where)
    assert leaks(texts, SECRETS + issued) == []
    # The check can fail: the password is in the URL the test handed the CLI.
    assert leaks([("environment", password_url.encode())], SECRETS) != []
