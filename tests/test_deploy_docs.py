"""docs/deploy.md, docker-compose.yml, the Dockerfile and deploy/nginx.conf against the code.

Nothing here runs Docker or a server: the files are parsed, and every command line
they show goes through flowrun's own argument parser (with abbreviations off, so a
misspelt flag cannot pass as the prefix of a real one), every ``FLOWRUN_*`` name
must be a ``Settings`` field, and the pieces must agree with each other (one
database URL, an nginx upstream per flowrun service, timeouts past the drain grace).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from flowrun.api.native import ops_routes
from flowrun.cli.main import build_parser
from flowrun.settings import Settings, is_loopback_host

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_MD = ROOT / "docs" / "deploy.md"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"

DEFAULTS = Settings()



# --- helpers ---------------------------------------------------------------------------

def _strict(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` and its subcommands with abbreviations off: ``--workflow`` must not
    pass as ``--workflows``."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _strict(sub)
    return parser


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            sub: argparse.ArgumentParser = action.choices[name]
            return sub
    raise AssertionError(f"flowrun has no {name!r} command")


SERVE_FLAGS = {option for action in _subcommand(build_parser(), "serve")._actions
               for option in action.option_strings}


def _parse(argv: list[str], where: str) -> argparse.Namespace:
    """``flowrun <argv>`` as the real CLI parses it; a clear failure if it refuses."""
    if argv[:1] == ["serve"]:
        flags = [a.split("=", 1)[0] for a in argv if a.startswith("--")]
        unknown = [f for f in flags if f not in SERVE_FLAGS]
        assert not unknown, f"{where}: flowrun serve has no {unknown} (it has " \
                            f"{sorted(SERVE_FLAGS)})"
    try:
        return _strict(build_parser()).parse_args(argv)
    except SystemExit:
        raise AssertionError(f"{where}: flowrun refuses {shlex.join(argv)!r}") from None


def _settings_of(args: argparse.Namespace) -> Settings:
    """The settings ``flowrun serve`` builds from these flags (no environment)."""
    return Settings.from_env({}, db=args.db, host=args.host, port=args.port,
                             workflows_dir=Path(args.workflows) if args.workflows else None)


def _code_blocks(text: str) -> Iterator[tuple[str, str]]:
    """(language, body) of each fenced code block, continuation lines joined."""
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
        yield match.group(1), match.group(2).replace("\\\n", " ")


def _doc_commands(text: str) -> Iterator[tuple[str, list[str]]]:
    """(line, argv after ``flowrun``) of each flowrun command in the doc's code blocks:
    ``flowrun serve ...``, a systemd ``ExecStart=.../flowrun ...``, and ``flowrun keys``
    or ``flowrun secrets`` wherever they appear in a line."""
    for _, body in _code_blocks(text):
        for raw in body.splitlines():
            line = raw.split(" #", 1)[0].strip()
            if line.startswith("ExecStart="):
                words = shlex.split(line.removeprefix("ExecStart="))
                assert words[0].endswith("/flowrun"), line
                yield line, words[1:]
            elif line.startswith("flowrun serve"):
                yield line, shlex.split(line)[1:]
            elif re.search(r"(^|[\s/])flowrun (keys|secrets) ", line):
                words = shlex.split(line)
                at = next(i for i, w in enumerate(words)
                          if (w == "flowrun" or w.endswith("/flowrun"))
                          and words[i + 1:i + 2] in (["keys"], ["secrets"]))
                yield line, words[at + 1:]


def _seconds(value: Any) -> float:
    """A duration as systemd, compose or nginx write it: ``30``, ``30s``, ``1m30s``."""
    text = str(value).strip()
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)?", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {value!r}"
    return sum(float(n) * units[u or "s"] for n, u in parts)


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _field_of(name: str) -> str | None:
    """The Settings field ``FLOWRUN_<NAME>`` sets, as ``Settings.from_env`` maps it."""
    fields = {f.name for f in dataclasses.fields(Settings)} - {"extra"}  # from_env skips it
    field = name.removeprefix("FLOWRUN_").lower()
    return field if field in fields else None


def _depends_healthy(service: dict[str, Any], on: str) -> bool:
    depends = service.get("depends_on") or {}
    return isinstance(depends, dict) and \
        (depends.get(on) or {}).get("condition") == "service_healthy"


@pytest.fixture(scope="module")
def doc() -> str:
    return DEPLOY_MD.read_text()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _flowrun_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in compose["services"].items()
            if _command(service)[:2] == ["flowrun", "serve"]}


def _postgres_services(compose: dict[str, Any]) -> set[str]:
    return {name for name, service in compose["services"].items()
            if str(service.get("image", "")).split(":")[0] == "postgres"}


# --- docs/deploy.md --------------------------------------------------------------------

def test_every_command_in_the_doc_is_accepted_by_the_cli(doc: str) -> None:
    commands = list(_doc_commands(doc))
    serves = [(line, argv) for line, argv in commands if argv[:1] == ["serve"]]
    assert len(serves) >= 2, "the doc shows flowrun serve for one box and for a cluster"
    assert any(line.startswith("ExecStart=") for line, _ in serves), "no systemd ExecStart"
    for line, argv in commands:
        args = _parse(argv, f"docs/deploy.md: {line}")
        if args.cmd == "serve":
            _settings_of(args)  # the values too: a database URL's scheme, auth vs host


def test_the_doc_shows_serve_on_sqlite_and_on_postgresql(doc: str) -> None:
    databases = [_settings_of(_parse(argv, line)).database
                 for line, argv in _doc_commands(doc) if argv[:1] == ["serve"]]
    assert any(isinstance(db, Path) for db in databases), "no SQLite serve example"
    assert any(isinstance(db, str) and db.startswith("postgresql://") for db in databases), \
        "no PostgreSQL serve example"


def test_every_flowrun_variable_in_the_doc_is_a_setting(doc: str) -> None:
    names = set(re.findall(r"\bFLOWRUN_[A-Z0-9_]*[A-Z0-9]\b", doc))
    assert names, "the doc names no FLOWRUN_* variable"
    unknown = sorted(n for n in names if _field_of(n) is None)
    assert not unknown, f"docs/deploy.md names variables no Settings field reads: {unknown}"


def test_systemd_stop_timeout_outlasts_the_drain(doc: str) -> None:
    stops = re.findall(r"^TimeoutStopSec=(\S+)$", doc, re.M)
    assert stops, "the unit has no TimeoutStopSec"
    grace = re.findall(r"FLOWRUN_SHUTDOWN_GRACE_S=(\S+)", doc)
    wanted = max([DEFAULTS.shutdown_grace_s, *map(float, grace)])
    for value in stops:
        assert _seconds(value) > wanted, f"TimeoutStopSec={value} is not past the " \
                                         f"{wanted} s drain"


def test_litestream_replicates_the_database_the_unit_serves(doc: str) -> None:
    served = {str(_settings_of(_parse(argv, line)).database)
              for line, argv in _doc_commands(doc)
              if line.startswith("ExecStart=") and argv[:1] == ["serve"]}
    configs = [yaml.safe_load(body) for lang, body in _code_blocks(doc)
               if lang == "yaml" and re.search(r"^dbs:", body, re.M)]
    assert configs, "no litestream.yml example"
    for config in configs:
        for db in config["dbs"]:
            assert db["path"] in served
            assert db["replicas"][0]["type"] == "s3"


def test_health_paths_named_anywhere_exist() -> None:
    routes = {route.path for route in ops_routes}
    for path in (DEPLOY_MD, COMPOSE):
        # a path on its own or after a port, not a folder of a file path (.../live/...)
        named = set(re.findall(r"(?:^|[\s`'\"(]|:\d+)(/(?:healthz|health|readyz|ready|livez|"
                               r"live))\b", path.read_text(), re.M))
        assert named, f"{path.name} names no health check"
        assert named <= routes, f"{path.name} names {sorted(named - routes)}; flowrun " \
                                f"serves {sorted(routes)}"


def test_readme_links_the_deploy_doc() -> None:
    assert "(docs/deploy.md)" in (ROOT / "README.md").read_text()


# --- docker-compose.yml ----------------------------------------------------------------

def test_postgres_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    postgres = _postgres_services(compose)
    assert postgres, "no postgres service"
    for name in postgres:
        service = compose["services"][name]
        assert "pg_isready" in json.dumps(service["healthcheck"]["test"])
        assert {"POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"} <= set(_env(service))
        assert any(":/var/lib/postgresql/data" in v for v in service.get("volumes", [])), \
            "the database is not on a volume"


def test_flowrun_services_share_one_postgresql_database(compose: dict[str, Any]) -> None:
    services = _flowrun_services(compose)
    assert len(services) >= 3, f"at least 3 flowrun services, got {sorted(services)}"
    postgres = _postgres_services(compose)
    urls = set()
    for name, service in services.items():
        args = _parse(_command(service)[1:], f"docker-compose.yml {name}")
        settings = _settings_of(args)
        url = settings.database
        assert isinstance(url, str) and url.startswith("postgresql://"), f"{name}: --db {url}"
        assert urlsplit(url).hostname in postgres, f"{name}: {url} is not the postgres service"
        assert not is_loopback_host(settings.host), f"{name} listens on loopback only"
        assert _depends_healthy(service, urlsplit(url).hostname or ""), \
            f"{name} does not wait for postgres to be healthy"
        env = _env(service)
        assert env.get("FLOWRUN_DB", url) == url, f"{name}: FLOWRUN_DB is another database"
        unknown = [k for k in env if k.startswith("FLOWRUN_") and _field_of(k) is None]
        assert not unknown, f"{name}: no Settings field reads {unknown}"
        grace = float(env.get("FLOWRUN_SHUTDOWN_GRACE_S", DEFAULTS.shutdown_grace_s))
        assert _seconds(service.get("stop_grace_period", "10s")) > grace, \
            f"{name}: docker kills it before its {grace} s drain ends"
        assert service.get("build") in (".", {"context": "."}), f"{name} is not built here"
        urls.add(url)
    assert len(urls) == 1, f"the flowrun services use different databases: {urls}"


def test_nginx_balances_over_every_flowrun_service(compose: dict[str, Any]) -> None:
    services = _flowrun_services(compose)
    nginx = [s for s in compose["services"].values()
             if str(s.get("image", "")).split(":")[0] == "nginx"]
    assert len(nginx) == 1, "one nginx service"
    mounts = [str(v).split(":") for v in nginx[0].get("volumes", [])]
    assert any(m[0] == "./deploy/nginx.conf" and m[1].startswith("/etc/nginx/")
               for m in mounts), "nginx does not mount deploy/nginx.conf"
    for name in services:
        assert name in (nginx[0].get("depends_on") or {}), f"nginx does not wait for {name}"

    conf = NGINX_CONF.read_text()
    conf = re.sub(r"#[^\n]*", "", conf)
    upstreams = dict(re.findall(r"upstream\s+(\S+)\s*\{(.*?)\}", conf, re.S))
    passes = re.findall(r"proxy_pass\s+http://([^/;\s]+)", conf)
    assert passes and all(p in upstreams for p in passes), "proxy_pass to no upstream"
    servers = set(re.findall(r"^\s*server\s+([^\s;]+)", upstreams[passes[0]], re.M))
    wanted = {f"{name}:{_settings_of(_parse(_command(s)[1:], name)).port}"
              for name, s in services.items()}
    assert servers == wanted, f"upstream {passes[0]} lists {sorted(servers)}, the flowrun " \
                              f"services are {sorted(wanted)}"
    assert re.search(r"^\s*proxy_buffering\s+off;", conf, re.M), "SSE needs buffering off"
    reads = re.findall(r"^\s*proxy_read_timeout\s+(\S+);", conf, re.M)
    assert reads and all(_seconds(r) > DEFAULTS.run_sync_max_timeout_s for r in reads), \
        "proxy_read_timeout must outlast run-sync's longest wait"
    listens = set(re.findall(r"^\s*listen\s+(\d+)", conf, re.M))
    published = {str(port).split(":")[-1] for port in nginx[0].get("ports", [])}
    assert listens and listens <= published, f"nginx listens on {listens}, compose " \
                                             f"publishes {published}"


# --- Dockerfile ------------------------------------------------------------------------

def test_dockerfile_runs_flowrun_as_a_user() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0].split()[:2] == ["FROM", "python:3.12-slim"]
    users = [line.split()[1] for line in lines if line.split()[0].upper() == "USER"]
    assert users, "the Dockerfile has no USER line: the server would run as root"
    assert users[-1].split(":")[0] not in ("root", "0"), f"USER {users[-1]}"
    cmds = [line for line in lines if line.split()[0].upper() == "CMD"]
    assert cmds, "no CMD"
    argv = json.loads(cmds[-1].split(None, 1)[1])
    assert argv[:2] == ["flowrun", "serve"]
    assert not is_loopback_host(_settings_of(_parse(argv[1:], "Dockerfile CMD")).host)
