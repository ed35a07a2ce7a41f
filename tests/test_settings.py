"""Settings: the database target a path or URL names."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowrun.settings import Settings, SettingsError, parse_database, safe_url


@pytest.mark.parametrize(("given", "target"), [
    ("flowrun.db", Path("flowrun.db")),
    ("/var/lib/flowrun/f.db", Path("/var/lib/flowrun/f.db")),
    ("sqlite:///runs.db", Path("runs.db")),
    ("sqlite:////var/lib/runs.db", Path("/var/lib/runs.db")),
    ("postgresql://u@127.0.0.1:5432/flowrun", "postgresql://u@127.0.0.1:5432/flowrun"),
    ("postgres://u@127.0.0.1/flowrun", "postgres://u@127.0.0.1/flowrun"),
    (Path("x.db"), Path("x.db")),
])
def test_a_path_or_sqlite_url_is_sqlite_and_a_postgres_url_is_kept(
        given: str | Path, target: Path | str) -> None:
    assert parse_database(given) == target


def test_an_unknown_scheme_is_refused_when_settings_are_built() -> None:
    with pytest.raises(SettingsError, match="unknown database URL scheme 'mysql'"):
        Settings(db="mysql://u@127.0.0.1/db")
    with pytest.raises(SettingsError, match="unknown database URL scheme"):
        Settings.from_env({"FLOWRUN_DB": "redis://127.0.0.1"})


def test_db_wins_over_db_path_and_db_path_still_means_sqlite() -> None:
    assert Settings(db_path=Path("a.db")).database == Path("a.db")
    assert Settings.from_env({"FLOWRUN_DB_PATH": "b.db"}).database == Path("b.db")
    url = "postgresql://u@127.0.0.1/db"
    assert Settings.from_env({"FLOWRUN_DB": url, "FLOWRUN_DB_PATH": "b.db"}).database == url
    assert Settings(db_path=Path("a.db"), db="sqlite:///c.db").database == Path("c.db")


def test_a_url_is_shown_without_its_password() -> None:
    assert safe_url("postgresql://u:p@ss:w0rd@127.0.0.1:5/db") == \
        "postgresql://u:***@127.0.0.1:5/db"
    assert safe_url("postgresql://u@127.0.0.1/db") == "postgresql://u@127.0.0.1/db"


def test_the_code_networks_limits_have_safe_defaults_and_refuse_nonsense() -> None:
    settings = Settings.from_env({})
    assert settings.code_network_connections_per_job == 16
    assert settings.code_network_head_timeout_s == 2.0
    env = {"FLOWRUN_CODE_NETWORK_CONNECTIONS_PER_JOB": "4",
           "FLOWRUN_CODE_NETWORK_HEAD_TIMEOUT_S": "0.5"}
    assert Settings.from_env(env).code_network_connections_per_job == 4
    for bad in ({"code_network_connections_per_job": 0}, {"code_network_head_timeout_s": 0}):
        with pytest.raises(SettingsError, match="code_network"):
            Settings(**bad)  # type: ignore[arg-type]


def test_finished_runs_are_kept_30_days_unless_the_operator_says_0() -> None:
    assert Settings().run_retention_s == 30 * 86_400
    assert Settings.from_env({"FLOWRUN_RUN_RETENTION_S": "0"}).run_retention_s == 0
    with pytest.raises(SettingsError, match="run_retention_s must be >= 0"):
        Settings(run_retention_s=-1)


def test_what_a_node_and_a_run_may_store_has_safe_defaults_and_settings() -> None:
    assert (Settings().max_node_output_bytes, Settings().max_run_output_bytes) == (
        1024 * 1024, 16 * 1024 * 1024)
    set_ = Settings.from_env({"FLOWRUN_MAX_NODE_OUTPUT_BYTES": "1000",
                              "FLOWRUN_MAX_RUN_OUTPUT_BYTES": "5000"})
    assert (set_.max_node_output_bytes, set_.max_run_output_bytes) == (1000, 5000)
    with pytest.raises(SettingsError, match="max_node_output_bytes"):
        Settings(max_node_output_bytes=0)


def test_runs_per_key_default_to_a_quarter_of_the_slots_but_at_least_four() -> None:
    assert Settings().running_per_key == 64
    assert Settings(max_concurrent_runs=8).running_per_key == 4
    env = {"FLOWRUN_MAX_RUNNING_PER_KEY": "10", "FLOWRUN_RUN_KEY_MAX_PRIORITY": "50"}
    settings = Settings.from_env(env)
    assert settings.running_per_key == 10 and settings.run_key_max_priority == 50
    assert Settings().run_key_max_priority == 99
    with pytest.raises(SettingsError, match="max_running_per_key must be >= 1"):
        Settings(max_running_per_key=0)
    with pytest.raises(SettingsError, match="run_key_max_priority must be between 0 and 99"):
        Settings(run_key_max_priority=100)


def test_an_llm_call_has_a_deadline_as_a_whole_besides_its_per_read_timeout() -> None:
    assert (Settings().llm_timeout_s, Settings().llm_deadline_s) == (120.0, 600.0)
    assert Settings.from_env({"FLOWRUN_LLM_DEADLINE_S": "30"}).llm_deadline_s == 30.0
    with pytest.raises(SettingsError, match="llm_deadline_s must be > 0"):
        Settings(llm_deadline_s=0)
    with pytest.raises(SettingsError, match="llm_timeout_s and llm_deadline_s"):
        Settings(llm_timeout_s=-1)


def test_streamed_text_has_a_per_run_event_limit_and_waits_for_a_busy_writer() -> None:
    s = Settings()
    assert (s.max_text_chunks_per_run, s.write_backlog, s.write_backlog_wait_s) == (
        10_000, 10_000, 10.0)
    set_ = Settings.from_env({"FLOWRUN_MAX_TEXT_CHUNKS_PER_RUN": "5",
                              "FLOWRUN_WRITE_BACKLOG": "100",
                              "FLOWRUN_WRITE_BACKLOG_WAIT_S": "1.5"})
    assert (set_.max_text_chunks_per_run, set_.write_backlog, set_.write_backlog_wait_s) == (
        5, 100, 1.5)
    with pytest.raises(SettingsError, match="write_backlog >= 1"):
        Settings(write_backlog=0)


def test_connection_limits_have_safe_defaults_and_refuse_nonsense() -> None:
    settings = Settings.from_env({})
    assert settings.body_timeout_s == 10.0 and settings.max_pipelined_requests == 16
    assert settings.max_connections_per_client is None
    assert settings.connections_per_client == 250  # a quarter of max_connections (1000)
    assert Settings(max_connections=10).connections_per_client == 2
    assert Settings(max_connections=3).connections_per_client == 1
    env = {"FLOWRUN_BODY_TIMEOUT_S": "2.5", "FLOWRUN_MAX_CONNECTIONS_PER_CLIENT": "600",
           "FLOWRUN_MAX_PIPELINED_REQUESTS": "4"}
    chosen = Settings.from_env(env)
    assert chosen.body_timeout_s == 2.5 and chosen.max_pipelined_requests == 4
    assert chosen.connections_per_client == 600
    assert Settings.from_env({"FLOWRUN_MAX_CONNECTIONS_PER_CLIENT": ""}
                             ).connections_per_client == 250
    for bad in ({"body_timeout_s": 0}, {"header_timeout_s": -1}, {"keep_alive_s": 0}):
        with pytest.raises(SettingsError, match="must be > 0"):
            Settings(**bad)  # type: ignore[arg-type]
    for bad in ({"max_connections": 0}, {"max_pipelined_requests": 0}):
        with pytest.raises(SettingsError, match=">= 1"):
            Settings(**bad)  # type: ignore[arg-type]
    for cap in (0, 1001):
        with pytest.raises(SettingsError, match="between 1 and max_connections"):
            Settings(max_connections_per_client=cap)
    assert Settings(max_connections_per_client=1000).connections_per_client == 1000
