"""Tests of pycontainer.agent._config: layered configuration with provenance."""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import grpc
import pytest

from pycontainer._errors import RequestError
from pycontainer.agent._config import REDACTED, Config
from pycontainer.v1 import config_pb2, management_pb2

DEFAULT = config_pb2.CONFIG_SOURCE_DEFAULT
FILE = config_pb2.CONFIG_SOURCE_FILE
ENV = config_pb2.CONFIG_SOURCE_ENVIRONMENT
FLAG = config_pb2.CONFIG_SOURCE_FLAG
RUNTIME = config_pb2.CONFIG_SOURCE_RUNTIME


def entry(config: Config, key: str) -> config_pb2.ConfigEntry:
    (found,) = [e for e in config.entries() if e.key == key]
    return found


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------
# precedence and sources


def test_precedence_default_file_env_flag_runtime(tmp_path: Path) -> None:
    toml = write(
        tmp_path,
        "app.toml",
        '[server]\nport = 2\nhost = "file-host"\nworkers = 2\n[log]\nlevel = "info"\n',
    )
    config = Config(
        defaults={"server": {"port": 1, "host": "localhost", "workers": 1, "timeout": "5s"}},
        files=[toml],
        env_prefix="APP",
        flags={"server.port": 4, "server.workers": 4},
        environ={"APP_SERVER__PORT": "3", "APP_SERVER__HOST": "env-host", "OTHER_X": "1"},
    )
    config.set("server.port", 5)

    assert config.get("server.timeout") == "5s"
    assert config.get("log.level") == "info"
    assert config.get("server.host") == "env-host"
    assert config.get("server.workers") == 4
    assert config.get("server.port") == 5

    provenance = {e.key: (e.source, e.source_detail) for e in config.entries()}
    assert provenance == {
        "log.level": (FILE, str(toml)),
        "server.host": (ENV, "APP_SERVER__HOST"),
        "server.port": (RUNTIME, ""),
        "server.timeout": (DEFAULT, ""),
        "server.workers": (FLAG, "--server.workers"),
    }


def test_later_files_win_and_nested_tables_flatten(tmp_path: Path) -> None:
    first = write(tmp_path, "a.toml", '[db]\nhost = "a"\nport = 5432\n[db.pool]\nsize = 4\n')
    second = write(tmp_path, "b.json", json.dumps({"db": {"host": "b", "pool": {"size": 8}}}))
    config = Config(files=[first, second])
    assert config.keys() == ["db.host", "db.pool.size", "db.port"]
    assert config.get("db.host") == "b"
    assert config.get("db.pool.size") == 8
    assert config.get("db.port") == 5432
    assert entry(config, "db.host").source_detail == str(second)
    assert entry(config, "db.port").source_detail == str(first)


def test_dotted_and_nested_defaults_are_the_same_keys() -> None:
    config = Config(defaults={"a.b": 1, "c": {"d": {"e": 2}}, "f": [1, 2]})
    assert config.keys() == ["a.b", "c.d.e", "f"]
    assert config.get("f") == [1, 2]
    assert config.get("missing") is None
    assert config.get("missing", 7) == 7
    assert "c.d.e" in config
    assert "c.d" not in config


def test_env_mapping() -> None:
    config = Config(
        defaults={"server": {"maxConns": 10}},
        env_prefix="MYAPP_",
        environ={
            "MYAPP_SERVER__PORT": "9090",
            "MYAPP_LOG_LEVEL": "debug",
            "MYAPP_SERVER__MAXCONNS": "20",
            "MYAPP_": "ignored",
            "MYAPP_A____B": "ignored",
            "MYAPPX_Y": "ignored",
            "myapp_lower": "ignored",
        },
    )
    assert config.keys() == ["log_level", "server.maxConns", "server.port"]
    assert config.get("server.port") == "9090"
    assert config.get("log_level") == "debug"
    # A key known from defaults or files keeps its spelling.
    assert config.get_int("server.maxConns") == 20
    assert entry(config, "server.maxConns").source_detail == "MYAPP_SERVER__MAXCONNS"


def test_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PCTEST_SERVER__PORT", "7000")
    config = Config(env_prefix="PCTEST")
    assert config.get_int("server.port") == 7000
    assert entry(config, "server.port").source == ENV


def test_no_env_prefix_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVER__PORT", "7000")
    assert Config().keys() == []


def test_empty_env_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="env_prefix must not be empty"):
        Config(env_prefix="_", environ={})


def test_argparse_flags() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server.port", type=int)
    parser.add_argument("--log-level")
    parser.add_argument("--db--host")
    parser.add_argument("--verbose", action="store_true", default=None)
    parser.add_argument("--unused")
    flags = parser.parse_args(["--server.port", "8443", "--log-level", "warn", "--db--host", "h"])
    config = Config(defaults={"unused": "kept", "server": {"port": 80}}, flags=flags)
    assert config.get("server.port") == 8443
    assert config.get("log_level") == "warn"
    assert config.get("db.host") == "h"
    assert config.get("unused") == "kept"  # None means "not given"
    assert "verbose" not in config
    assert entry(config, "server.port").source_detail == "--server.port"
    assert entry(config, "log_level").source_detail == "--log-level"
    assert entry(config, "db.host").source_detail == "--db--host"


def test_runtime_set_mapping_and_detail() -> None:
    config = Config(defaults={"feature": {"x": False}})
    config.set("feature", {"x": True, "y": 2}, detail="admin")
    assert config.get("feature.x") is True
    assert config.get("feature.y") == 2
    assert entry(config, "feature.x").source == RUNTIME
    assert entry(config, "feature.x").source_detail == "admin"


# --------------------------------------------------------------------------
# files


def test_json_file(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", '{"a": {"b": true, "n": 1.5}}')
    config = Config(files=[path])
    assert config.get("a.b") is True
    assert config.get("a.n") == 1.5


def test_toml_values_render_as_text(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.toml",
        'name = "x"\nflag = true\nratio = 0.5\nlist = [1, "a"]\nwhen = 2024-01-02T03:04:05Z\n',
    )
    values = {e.key: e.value for e in Config(files=[path]).entries()}
    assert values == {
        "name": "x",
        "flag": "true",
        "ratio": "0.5",
        "list": '[1, "a"]',
        "when": "2024-01-02T03:04:05+00:00",
    }


def test_yaml_file(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "server:\n  port: 8080\n")
    assert Config(files=[path]).get("server.port") == 8080


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.toml", "a = \n", "config file .*bad.toml: "),
        ("bad.json", "{", "config file .*bad.json: "),
        ("list.json", "[1]", "the top level must be a table/object, not list"),
        ("c.ini", "[a]\n", "unknown file type; use .toml, .json, .yaml or .yml"),
    ],
)
def test_bad_files(tmp_path: Path, name: str, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Config(files=[write(tmp_path, name, text)])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Config(files=[tmp_path / "absent.toml"])


# --------------------------------------------------------------------------
# secrets


def test_secrets_are_redacted_in_entries_only() -> None:
    config = Config(
        defaults={
            "db": {"password": "hunter2", "user": "app"},
            "auth": {"API_KEY": "k", "refresh-token": "t", "tls": {"private-key": "p"}},
            "client_secret": "s",
            "aws.credentials": "c",
        }
    )
    report = {e.key: (e.value, e.redacted) for e in config.entries()}
    assert report == {
        "auth.API_KEY": (REDACTED, True),
        "auth.refresh-token": (REDACTED, True),
        "auth.tls.private-key": (REDACTED, True),
        "aws.credentials": (REDACTED, True),
        "client_secret": (REDACTED, True),
        "db.password": (REDACTED, True),
        "db.user": ("app", False),
    }
    assert config.get("db.password") == "hunter2"


def test_secret_keys_are_configurable() -> None:
    config = Config(
        defaults={"db.password": "p", "session.cookie": "c"},
        secret_keys=["*cookie*"],
        secret_words=(),
    )
    assert not entry(config, "db.password").redacted
    assert entry(config, "session.cookie").value == REDACTED


def test_typed_read_errors_do_not_show_secrets() -> None:
    config = Config(defaults={"db.password_retries": "hunter2"})
    with pytest.raises(ValueError, match="expected an integer") as caught:
        config.get_int("db.password_retries")
    assert "hunter2" not in str(caught.value)


# --------------------------------------------------------------------------
# typed reads


def test_typed_reads() -> None:
    config = Config(
        defaults={"n": 3, "f": 2, "b": True, "d": 1.5, "fi": 4.0},
        env_prefix="T",
        environ={"T_PORT": " 8080 ", "T_RATIO": "0.25", "T_ON": "Yes", "T_OFF": "0"},
    )
    assert config.get_int("n") == 3
    assert config.get_int("port") == 8080
    assert config.get_int("fi") == 4
    assert config.get_float("f") == 2.0
    assert config.get_float("ratio") == 0.25
    assert config.get_bool("b") is True
    assert config.get_bool("on") is True
    assert config.get_bool("off") is False
    assert config.get_duration("d") == datetime.timedelta(seconds=1.5)
    assert config.get_int("missing") is None
    assert config.get_int("missing", 5) == 5
    assert config.get_bool("missing", False) is False
    assert config.get_float("missing", 1.0) == 1.0
    assert config.get_duration("missing", datetime.timedelta(seconds=30)) == (
        datetime.timedelta(seconds=30)
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("30", "'30' has no unit: write 30s, 30ms or 30m"),
        ("-5s", "is negative"),
        ("1w", "is not a duration"),
    ],
)
def test_bad_duration_text_says_what_to_write(text: str, says: str) -> None:
    config = Config(defaults={"k": text})
    with pytest.raises(ValueError, match="config key 'k' \\(from default\\)") as caught:
        config.get_duration("k")
    assert says in str(caught.value)


def test_get_duration_from_sources() -> None:
    config = Config(
        defaults={"a": 5, "b": datetime.timedelta(minutes=1), "c": "1h"},
        env_prefix="T",
        environ={"T_TIMEOUT": "30", "T_GRACE": "250ms"},
    )
    assert config.get_duration("a") == datetime.timedelta(seconds=5)
    assert config.get_duration("b") == datetime.timedelta(minutes=1)
    assert config.get_duration("c") == datetime.timedelta(hours=1)
    assert config.get_duration("grace") == datetime.timedelta(milliseconds=250)
    with pytest.raises(ValueError, match="config key 'timeout' \\(from environment T_TIMEOUT\\)"):
        config.get_duration("timeout")


@pytest.mark.parametrize(
    ("method", "value", "expected"),
    [
        ("get_int", "eight", "expected an integer, got 'eight'"),
        ("get_int", True, "expected an integer, got True"),
        ("get_int", 1.5, "expected an integer, got 1.5"),
        ("get_float", "x", "expected a number, got 'x'"),
        ("get_bool", "maybe", "expected a boolean"),
        ("get_bool", 2, "expected a boolean"),
        ("get_duration", -1, "expected a duration"),
        ("get_duration", [1], "expected a duration"),
    ],
)
def test_bad_typed_reads(method: str, value: object, expected: str) -> None:
    config = Config(defaults={"k": value})
    with pytest.raises(ValueError, match="config key 'k' \\(from default\\)") as caught:
        getattr(config, method)("k")
    assert expected in str(caught.value)


# --------------------------------------------------------------------------
# reports and prefixes


def test_entries_sorted_and_prefix_filtered() -> None:
    config = Config(defaults={"z": 1, "server": {"port": 1, "host": "h"}, "serverless": True})
    assert [e.key for e in config.entries()] == [
        "server.host",
        "server.port",
        "serverless",
        "z",
    ]
    assert [e.key for e in config.entries("server.")] == ["server.host", "server.port"]
    assert [e.key for e in config.entries("server")] == [
        "server.host",
        "server.port",
        "serverless",
    ]
    assert config.entries("nothing") == []


def test_get_config_request() -> None:
    config = Config(defaults={"a.b": 1, "c": 2})
    response = config.get_config(management_pb2.GetConfigRequest(prefix="a"))
    assert [e.key for e in response.entries] == ["a.b"]
    assert response.entries[0].value == "1"
    assert response.entries[0].source == DEFAULT


@pytest.mark.parametrize(
    ("prefix", "keys"),
    [("a-b_c.D9", ["a-b_c.D9.k"]), ("", ["a-b_c.D9.k", "other"]), (".", [])],
)
def test_valid_prefixes(prefix: str, keys: list[str]) -> None:
    config = Config(defaults={"a-b_c.D9.k": 1, "other": 2})
    assert [e.key for e in config.entries(prefix)] == keys


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("server port", "prefix: must not contain whitespace, got 'server port'"),
        ("server\t", "must not contain whitespace"),
        ("a/b", "prefix: may contain only letters, digits, '_', '.' and '-', got 'a/b'"),
        ("a*", "may contain only letters"),
        ("ä", "may contain only letters"),
    ],
)
def test_invalid_prefixes(prefix: str, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        Config().get_config(management_pb2.GetConfigRequest(prefix=prefix))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field == "prefix"
    assert message in caught.value.message
