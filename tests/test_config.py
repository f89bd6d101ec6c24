"""Settings from QQBOT_* variables and TOML files: values, defaults, precedence, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from qqbot_gateway import config
from qqbot_gateway.adapter.client import Secret
from qqbot_gateway.adapter.protocol import Intents
from qqbot_gateway.cli import build_parser
from qqbot_gateway.config import SETTING_NAMES, ConfigError, Settings, load_settings

BASE = {"QQBOT_APP_ID": "102030405", "QQBOT_CLIENT_SECRET": "very-secret-value"}


def load(env: dict[str, str] | None = None, path: Path | None = None) -> Settings:
    warnings: list[str] = []
    settings = load_settings(path, env={**BASE, **(env or {})}, warn=warnings.append)
    assert not warnings, warnings
    return settings


def error(env: dict[str, str] | None = None, path: Path | None = None, base: bool = True) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={**(BASE if base else {}), **(env or {})}, warn=lambda _: None)
    return str(info.value)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "qqbot.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    s = load()
    assert s.app_id == "102030405"
    assert s.client_secret == Secret("very-secret-value")
    assert s.intents == int(Intents.public_default())
    assert s.shard_count == 1 and s.shard_ids is None
    assert s.http_addr == ("0.0.0.0", 8080)  # noqa: S104 - the documented default
    assert s.liveness_grace == 300.0 and s.loop_lag_threshold == 2.0
    assert s.log_format == "auto" and s.log_level == "INFO"
    assert s.api_base == "https://api.sgroup.qq.com"
    assert s.token_url == "https://bots.qq.com/app/getAppAccessToken"
    assert s.gateway_url is None
    assert s.ack_probes == 2
    assert s.ws_ping is True
    assert s.handler_queue_size == 1000
    assert s.drain_timeout == 10.0
    assert s.trace_sample_ratio == 0.01 and s.trace_slow_handler == 1.0


def test_every_variable() -> None:
    s = load(
        {
            "QQBOT_INTENTS": "GUILDS, direct_message",
            "QQBOT_SHARD_COUNT": "4",
            "QQBOT_SHARD_ID": "1,3",
            "QQBOT_HTTP_ADDR": "127.0.0.1:0",
            "QQBOT_LIVENESS_GRACE": "120",
            "QQBOT_LOOP_LAG_THRESHOLD": "1.5",
            "QQBOT_LOG_FORMAT": "JSON",
            "QQBOT_LOG_LEVEL": "debug",
            "QQBOT_API_BASE": "https://sandbox.api.sgroup.qq.com/",
            "QQBOT_TOKEN_URL": "http://127.0.0.1:9/app/getAppAccessToken",
            "QQBOT_GATEWAY_URL": "wss://api.sgroup.qq.com/websocket",
            "QQBOT_ACK_PROBES": "3",
            "QQBOT_WS_PING": "off",
            "QQBOT_HANDLER_QUEUE_SIZE": "50",
            "QQBOT_DRAIN_TIMEOUT": "0",
            "QQBOT_TRACE_SAMPLE_RATIO": "1",
            "QQBOT_TRACE_SLOW_HANDLER": "0.25",
            "QQBOT_STATUS_PAGE": "off",
        }
    )
    assert s.intents == int(Intents.GUILDS | Intents.DIRECT_MESSAGE)
    assert s.shard_count == 4 and s.shard_ids == (1, 3)
    assert s.http_addr == ("127.0.0.1", 0)
    assert s.liveness_grace == 120.0 and s.loop_lag_threshold == 1.5
    assert s.log_format == "json" and s.log_level == "DEBUG"
    assert s.api_base == "https://sandbox.api.sgroup.qq.com"
    assert s.gateway_url == "wss://api.sgroup.qq.com/websocket"
    assert s.ack_probes == 3
    assert s.ws_ping is False
    assert s.handler_queue_size == 50
    assert s.drain_timeout == 0.0
    tel = s.telemetry_config()
    assert tel.trace_sample_ratio == 1.0 and tel.trace_slow_handler == 0.25
    assert s.status_page is False and s.telemetry_config().status_page is False


def test_client_and_telemetry_config() -> None:
    s = load(
        {
            "QQBOT_SHARD_COUNT": "2",
            "QQBOT_SHARD_ID": "1",
            "QQBOT_ACK_PROBES": "0",
            "QQBOT_WS_PING": "off",
            "QQBOT_HTTP_ADDR": "[::1]:9100",
            "QQBOT_LIVENESS_GRACE": "60",
        }
    )
    cfg = s.client_config()
    assert cfg.app_id == "102030405" and cfg.client_secret.get() == "very-secret-value"
    assert cfg.shards == (1,) and cfg.shard_count == 2
    assert cfg.liveness.ack_probes == 0
    assert cfg.liveness.ws_ping is False
    tel = s.telemetry_config()
    assert (tel.http_host, tel.http_port) == ("::1", 9100)
    assert tel.liveness_grace == 60.0
    off = load({"QQBOT_HTTP_ADDR": "off"}).telemetry_config()
    assert off.http_port is None


def test_intents_as_number() -> None:
    assert load({"QQBOT_INTENTS": "0x2001000"}).intents == 0x2001000
    assert load({"QQBOT_INTENTS": "4097"}).intents == 4097


def test_http_addr_forms() -> None:
    every_interface = "0.0.0.0"  # noqa: S104 - what ":port" means
    assert load({"QQBOT_HTTP_ADDR": ":9000"}).http_addr == (every_interface, 9000)
    assert load({"QQBOT_HTTP_ADDR": "OFF"}).http_addr is None


def test_secret_is_never_shown() -> None:
    s = load()
    assert "very-secret-value" not in repr(s)
    assert "very-secret-value" not in str(s)
    assert "very-secret-value" not in repr(s.client_config())


def test_secret_from_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("  from-a-file\n", encoding="utf-8")
    s = load_settings(
        env={"QQBOT_APP_ID": "1", "QQBOT_CLIENT_SECRET_FILE": str(secret)}, warn=print
    )
    assert s.client_secret == Secret("from-a-file")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"QQBOT_SHARD_COUNT": "x"}, "QQBOT_SHARD_COUNT: expected a positive integer, got 'x'"),
        ({"QQBOT_SHARD_COUNT": "0"}, "QQBOT_SHARD_COUNT: expected a positive integer, got '0'"),
        ({"QQBOT_INTENTS": "GUILDS,NOPE"}, "QQBOT_INTENTS: unknown intent 'NOPE'"),
        ({"QQBOT_INTENTS": "-1"}, "QQBOT_INTENTS: intents must be a positive bit mask"),
        ({"QQBOT_SHARD_ID": "a,b"}, "QQBOT_SHARD_ID: expected shard ids"),
        ({"QQBOT_SHARD_ID": "1,1", "QQBOT_SHARD_COUNT": "2"}, "QQBOT_SHARD_ID: shard ids must"),
        ({"QQBOT_SHARD_ID": "2", "QQBOT_SHARD_COUNT": "2"}, "QQBOT_SHARD_ID: shard id 2 is"),
        ({"QQBOT_HTTP_ADDR": "8080"}, "QQBOT_HTTP_ADDR: expected host:port or 'off'"),
        ({"QQBOT_HTTP_ADDR": "h:99999"}, "QQBOT_HTTP_ADDR: port must be 0..65535"),
        ({"QQBOT_LIVENESS_GRACE": "-3"}, "QQBOT_LIVENESS_GRACE: expected a positive number"),
        ({"QQBOT_LOOP_LAG_THRESHOLD": "nan"}, "QQBOT_LOOP_LAG_THRESHOLD: expected a positive"),
        ({"QQBOT_LOG_FORMAT": "xml"}, "QQBOT_LOG_FORMAT: expected one of auto, json, console"),
        ({"QQBOT_LOG_LEVEL": "loud"}, "QQBOT_LOG_LEVEL: expected one of DEBUG"),
        ({"QQBOT_API_BASE": "ftp://x"}, "QQBOT_API_BASE: expected a http:// or https:// URL"),
        ({"QQBOT_TOKEN_URL": "bots.qq.com"}, "QQBOT_TOKEN_URL: expected a http://"),
        ({"QQBOT_GATEWAY_URL": "http://x/ws"}, "QQBOT_GATEWAY_URL: expected a ws:// or wss://"),
        ({"QQBOT_ACK_PROBES": "-1"}, "QQBOT_ACK_PROBES: expected an integer from 0 to 10"),
        ({"QQBOT_WS_PING": "30"}, "QQBOT_WS_PING: expected true or false"),
        ({"QQBOT_HANDLER_QUEUE_SIZE": "1.5"}, "QQBOT_HANDLER_QUEUE_SIZE: expected a positive"),
        ({"QQBOT_DRAIN_TIMEOUT": "soon"}, "QQBOT_DRAIN_TIMEOUT: expected a number of seconds"),
        ({"QQBOT_TRACE_SAMPLE_RATIO": "2"}, "QQBOT_TRACE_SAMPLE_RATIO: expected a number from 0"),
        ({"QQBOT_TRACE_SLOW_HANDLER": "0"}, "QQBOT_TRACE_SLOW_HANDLER: expected a positive"),
        ({"QQBOT_CLIENT_SECRET_FILE": "/nonexistent/s"}, "QQBOT_CLIENT_SECRET_FILE: file not"),
        ({"QQBOT_STATUS_PAGE": "maybe"}, "QQBOT_STATUS_PAGE: expected true or false, got 'maybe'"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], expected: str) -> None:
    base = dict(BASE)
    if "QQBOT_CLIENT_SECRET_FILE" in env:
        base.pop("QQBOT_CLIENT_SECRET")
    with pytest.raises(ConfigError) as info:
        load_settings(env={**base, **env}, warn=lambda _: None)
    assert str(info.value).startswith(expected), str(info.value)


def test_missing_credentials() -> None:
    s = load_settings(env={}, warn=print)
    with pytest.raises(ConfigError, match=r"^QQBOT_APP_ID: required"):
        s.require_credentials()
    s = load_settings(env={"QQBOT_APP_ID": "1"}, warn=print)
    with pytest.raises(ConfigError, match=r"^QQBOT_CLIENT_SECRET: required"):
        s.client_config()


def test_toml_file_and_env_precedence(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'app_id = "42"\nclient_secret = "file-secret"\nshard_count = 3\nshard_id = [0, 2]\n'
        'intents = ["GUILDS", "GROUP_AND_C2C_EVENT"]\nhttp_addr = "127.0.0.1:9999"\n'
        "liveness_grace = 30\nws_ping = false\n",
    )
    s = load_settings(path, env={"QQBOT_SHARD_COUNT": "5"}, warn=print)
    assert s.app_id == "42" and s.client_secret == Secret("file-secret")
    assert s.shard_count == 5 and s.shard_ids == (0, 2)
    assert s.intents == int(Intents.GUILDS | Intents.GROUP_AND_C2C_EVENT)
    assert s.http_addr == ("127.0.0.1", 9999)
    assert s.liveness_grace == 30.0 and s.ws_ping is False
    # The environment's secret (either spelling) replaces the file's.
    secret = tmp_path / "s"
    secret.write_text("env-file-secret", encoding="utf-8")
    s = load_settings(path, env={"QQBOT_CLIENT_SECRET_FILE": str(secret)}, warn=print)
    assert s.client_secret == Secret("env-file-secret")


def test_config_file_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, 'app_id = "77"\n')
    s = load_settings(env={"QQBOT_CONFIG": str(path)}, warn=print)
    assert s.app_id == "77"


def test_toml_unknown_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'app_id = "1"\nshard_cuont = 2\n')
    message = error(path=path)
    assert message.startswith(f"shard_cuont (in {path}): unknown setting")
    assert "did you mean shard_count?" in message


def test_toml_bad_value_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'shard_count = "many"\n')
    assert error(path=path, base=False).startswith(
        f"shard_count (in {path}): expected a positive integer, got 'many'"
    )


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    path = write(tmp_path, "app_id = \n")
    assert error(path=path).startswith(f"--config: {path} is not valid TOML")
    assert error(path=tmp_path / "none.toml").startswith("--config: file not found")


def test_both_secret_spellings_in_one_source(tmp_path: Path) -> None:
    path = write(tmp_path, 'client_secret = "a"\nclient_secret_file = "/x"\n')
    assert "not both" in error(path=path, base=False)


def test_unknown_env_variable_warns_once_per_variable() -> None:
    lines: list[str] = []
    load_settings(
        env={
            **BASE,
            "QQBOT_SHARDS_COUNT": "2",
            "QQBOT_SIM_CLIENT_SECRET": "x",  # the simulator's: no warning
            "QQBOT_TEST_TIME_SCALE": "2",  # the test suite's: no warning
            "OTHER": "1",
        },
        warn=lines.append,
    )
    assert lines == [
        "warning: ignoring unknown environment variable QQBOT_SHARDS_COUNT "
        "(did you mean QQBOT_SHARD_COUNT?)"
    ]


def test_setting_names_match_the_contract() -> None:
    env_names = {"QQBOT_" + key.upper() for key in SETTING_NAMES}
    assert env_names == {
        "QQBOT_APP_ID",
        "QQBOT_CLIENT_SECRET",
        "QQBOT_CLIENT_SECRET_FILE",
        "QQBOT_INTENTS",
        "QQBOT_SHARD_COUNT",
        "QQBOT_SHARD_ID",
        "QQBOT_HTTP_ADDR",
        "QQBOT_REDIS_URL",
        "QQBOT_LEASE_TTL",
        "QQBOT_DELIVERY",
        "QQBOT_STREAM_CLAIM_IDLE",
        "QQBOT_STREAM_MAX_LEN",
        "QQBOT_STREAM_GROUP",
        "QQBOT_WORKER_CONCURRENCY",
        "QQBOT_STREAM_MAX_ATTEMPTS",
        "QQBOT_STREAM_DEDUPE_WINDOW",
        "QQBOT_WORKER_NAME",
        "QQBOT_LIVENESS_GRACE",
        "QQBOT_LOOP_LAG_THRESHOLD",
        "QQBOT_LOG_FORMAT",
        "QQBOT_LOG_LEVEL",
        "QQBOT_API_BASE",
        "QQBOT_TOKEN_URL",
        "QQBOT_GATEWAY_URL",
        "QQBOT_ACK_PROBES",
        "QQBOT_WS_PING",
        "QQBOT_HANDLER_QUEUE_SIZE",
        "QQBOT_DRAIN_TIMEOUT",
        "QQBOT_STATE_DIR",
        "QQBOT_SESSION_MAX_AGE",
        "QQBOT_STATE_LOCK",
        "QQBOT_CHECKPOINT_INTERVAL",
        "QQBOT_TRANSPORT",
        "QQBOT_WEBHOOK_ADDR",
        "QQBOT_WEBHOOK_PATH",
        "QQBOT_WEBHOOK_TLS_CERT",
        "QQBOT_WEBHOOK_TLS_KEY",
        "QQBOT_WEBHOOK_REPLAY_WINDOW",
        "QQBOT_WEBHOOK_MAX_BODY",
        "QQBOT_WEBHOOK_REQUIRE_VALIDATION",
        "QQBOT_WEBHOOK_SILENCE",
        "QQBOT_TRACE_SAMPLE_RATIO",
        "QQBOT_TRACE_SLOW_HANDLER",
        "QQBOT_STATUS_PAGE",
    }


def test_session_store_settings() -> None:
    # The default: the XDG state directory, else ~/.local/state.
    s = load({"XDG_STATE_HOME": "/var/state", "HOME": "/home/bot"})
    assert s.state_dir == "/var/state/qqbot-gateway"
    s = load({"HOME": "/home/bot"})
    assert s.state_dir == "/home/bot/.local/state/qqbot-gateway"
    assert (s.session_max_age, s.state_lock, s.checkpoint_interval) == (300.0, "fail", 0.1)
    cfg = s.client_config()
    assert (cfg.state_dir, cfg.session_max_age, cfg.state_lock) == (s.state_dir, 300.0, "fail")
    s = load({"QQBOT_STATE_DIR": "OFF"})
    assert s.state_dir is None and s.client_config().state_dir is None
    s = load(
        {
            "QQBOT_STATE_DIR": "/data",
            "QQBOT_SESSION_MAX_AGE": "60",
            "QQBOT_STATE_LOCK": "wait",
            "QQBOT_CHECKPOINT_INTERVAL": "0",
        }
    )
    assert (s.state_dir, s.session_max_age, s.state_lock, s.checkpoint_interval) == (
        "/data",
        60.0,
        "wait",
        0.0,
    )
    assert "QQBOT_STATE_LOCK: expected one of fail, wait" in error({"QQBOT_STATE_LOCK": "x"})
    assert "QQBOT_SESSION_MAX_AGE" in error({"QQBOT_SESSION_MAX_AGE": "0"})


def test_the_configuration_doc_documents_every_variable() -> None:
    readme = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text(
        encoding="utf-8"
    )
    missing = [
        "QQBOT_" + key.upper() for key in SETTING_NAMES if "QQBOT_" + key.upper() not in readme
    ]
    assert not missing, f"docs/configuration.md does not document {missing}"


@pytest.mark.parametrize(
    ("variable", "replacement"),
    [("QQBOT_ACK_MISS_LIMIT", "ack_probes"), ("QQBOT_WS_PING_INTERVAL", "ws_ping")],
)
def test_removed_liveness_settings_are_an_error_naming_the_replacement(
    variable: str, replacement: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=f"{variable}: removed: .*use {replacement}"):
        load({variable: "0"})
    key = variable.removeprefix("QQBOT_").lower()
    path = write(tmp_path, f"{key} = 0\n")
    with pytest.raises(ConfigError, match=f"{key} \\(in .*\\): removed"):
        load_settings(path, env={}, warn=print)


@pytest.mark.parametrize(("raw", "message"), [("maybe", "true or false"), ("11", "0 to 10")])
def test_bad_liveness_values(raw: str, message: str) -> None:
    variable = "QQBOT_WS_PING" if message == "true or false" else "QQBOT_ACK_PROBES"
    with pytest.raises(ConfigError, match=f"{variable}: expected .*{message}"):
        load({variable: raw})


def test_the_settings_table_is_generated_from_the_table() -> None:
    readme = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text(
        encoding="utf-8"
    )
    begin = readme.index("<!-- BEGIN settings")
    block = readme[readme.index("\n", begin) + 1 : readme.index("<!-- END settings -->")]
    stale = "docs/configuration.md is stale: run scripts/gen_docs.py"
    assert block == config.settings_markdown(), stale


def test_one_table_feeds_the_loader_the_docstring_and_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The loader's defaults are the table's and the Settings fields' (state_dir: the XDG one).
    loaded = load_settings(env={"HOME": "/home/bot"}, warn=pytest.fail)
    assert loaded == Settings(state_dir="/home/bot/.local/state/qqbot-gateway")
    for s in config.SETTINGS:
        assert s.help
        assert (s.parse is None) == (s.key in ("client_secret", "client_secret_file")), s.key
        assert s.default == getattr(Settings(), {"shard_id": "shard_ids"}.get(s.key, s.key), None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    run_help = capsys.readouterr().out
    doc = config.__doc__ or ""
    for s in config.SETTINGS:
        assert s.env in doc and s.env in run_help, s.env
    for removed in ("QQBOT_ACK_MISS_LIMIT", "QQBOT_WS_PING_INTERVAL"):
        assert removed not in doc and removed not in run_help
    assert "`" not in run_help  # Markdown is stripped for the terminal


def test_cluster_settings_are_settings() -> None:
    from qqbot_gateway.config import CLUSTER_SETTINGS

    assert set(CLUSTER_SETTINGS) <= set(SETTING_NAMES)
    assert {"redis_url", "lease_ttl", "delivery", "stream_claim_idle"} <= CLUSTER_SETTINGS
