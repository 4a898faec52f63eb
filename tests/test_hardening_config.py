"""GetConfig never shows a secret: keys are read with their separators taken
out and matched against secret words, and passwords in URLs are masked in
every value; through the real Management.GetConfig of a served container."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import Host, make_container, start_sync_host

from pycontainer.agent._config import REDACTED, Config
from pycontainer.v1 import config_pb2, management_pb2

SECRET_KEYS = (
    "apikey",
    "apiKey",
    "service.api-key",
    "passwd",
    "db.pwd",
    "privatekey",
    "tls.private_key",
    "auth.bearer",
    "session.cookie",
    "aws.access_key_id",
    "aws.secret_access_key",
    "github.token",
    "oauth.client_secret",
    "smtp.password",
    "gcp.credentials",
    "http.authorization",
    "request.signature",
    "login.session",
)
PLAIN_KEYS = ("server.port", "author.name", "log.level", "db.host", "keyboard.layout")


def _served(config: Config) -> Iterator[Host]:
    host = start_sync_host(make_container(config=config))
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture
def secrets_host() -> Iterator[Host]:
    defaults: dict[str, object] = {key: f"value-of-{key}" for key in SECRET_KEYS + PLAIN_KEYS}
    defaults["database.url"] = "postgres://user:pw@host/db"
    defaults["cache.dsn"] = "redis://:s3cret@cache:6379/0 and amqp://guest:guest@mq//"
    defaults["plain.url"] = "https://user@example.com/path"
    environ = {
        "APP_DB__PASSWORD": "env-pw",
        "APP_STRIPE__APIKEY": "env-key",
        "APP_AUTH__BEARER": "env-bearer",
        "APP_BROKER__URL": "amqp://app:env-broker-pw@mq:5672/",
        "APP_REGION": "eu-west-1",
    }
    yield from _served(Config(defaults, env_prefix="APP", environ=environ))


def _report(host: Host) -> dict[str, config_pb2.ConfigEntry]:
    response = host.management.GetConfig(management_pb2.GetConfigRequest(), timeout=10)
    return {e.key: e for e in response.entries}


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_keys_are_redacted(secrets_host: Host, key: str) -> None:
    found = _report(secrets_host)[key]
    assert (found.value, found.redacted) == (REDACTED, True)


@pytest.mark.parametrize("key", PLAIN_KEYS)
def test_other_keys_are_shown(secrets_host: Host, key: str) -> None:
    found = _report(secrets_host)[key]
    assert (found.value, found.redacted) == (f"value-of-{key}", False)


def test_url_passwords_are_masked_whatever_the_key(secrets_host: Host) -> None:
    report = _report(secrets_host)
    assert report["database.url"].value == f"postgres://user:{REDACTED}@host/db"
    assert report["database.url"].redacted
    assert report["cache.dsn"].value == (
        f"redis://:{REDACTED}@cache:6379/0 and amqp://guest:{REDACTED}@mq//"
    )
    assert (report["plain.url"].value, report["plain.url"].redacted) == (
        "https://user@example.com/path",
        False,
    )


def test_environment_sources_are_redacted(secrets_host: Host) -> None:
    report = _report(secrets_host)
    env = config_pb2.CONFIG_SOURCE_ENVIRONMENT
    for key in ("db.password", "stripe.apikey", "auth.bearer"):
        assert (report[key].value, report[key].source) == (REDACTED, env), key
    assert report["broker.url"].value == f"amqp://app:{REDACTED}@mq:5672/"
    assert report["region"].value == "eu-west-1"
    text = str(list(report.values()))
    for secret in ("env-pw", "env-key", "env-bearer", "env-broker-pw", "s3cret", ":pw@"):
        assert secret not in text


def test_typed_read_errors_mask_url_passwords() -> None:
    config = Config({"database.url": "postgres://u:hunter2@h/db"})
    with pytest.raises(ValueError, match="expected an integer") as caught:
        config.get_int("database.url")
    assert "hunter2" not in str(caught.value)


def test_secret_words_are_configurable() -> None:
    config = Config({"session.cookie": "c", "db.pwd": "p"}, secret_words=["cookie"])
    assert Config({"x": 1}).is_secret("db.pwd")
    assert config.is_secret("session.cookie")
    assert not config.is_secret("db.pwd")
