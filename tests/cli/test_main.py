"""The flowrun command: validate, run, keys, and the serve guard, as real subprocesses."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from flowrun.cli.main import build_parser
from tests.eventually import eventually
from tests.local_server import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _command(*args: str) -> list[str]:
    # -P: the current folder is not on sys.path, as with the installed ``flowrun`` script
    # (``python -m`` would put it there and hide what users of the script see).
    return [sys.executable, "-P", "-m", "flowrun", *args]


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWRUN_")}
    return {**env, "PYTHONPATH": str(ROOT), **(extra or {})}


def flowrun(*args: str, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the flowrun command in ``cwd`` with extra environment ``env``."""
    return subprocess.run(_command(*args), capture_output=True, text=True, timeout=60,
                          env=_env(env), cwd=cwd, check=False)


@dataclass
class Served:
    url: str
    stdout: str = ""
    stderr: str = ""


@contextmanager
def serving(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Iterator[Served]:
    """``flowrun serve ARGS`` on a free port while the block lasts (up once /healthz
    answers); its output is in the Served after the block."""
    port = free_port()
    proc = subprocess.Popen(_command("serve", "--port", str(port), *args), cwd=cwd,
                            env=_env({"FLOWRUN_CODE_POOL_SIZE": "0", **(env or {})}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    served = Served(f"http://127.0.0.1:{port}")
    try:
        def answering() -> bool:
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"serve exited {proc.returncode}: {out}{err}")
            try:
                return httpx.get(f"{served.url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        eventually(answering, timeout=30, interval=0.05, what="serve answering")
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            served.stdout, served.stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise


def test_version() -> None:
    for flag in ("--version", "-V"):
        out = flowrun(flag)
        assert out.returncode == 0, out.stderr
        assert out.stdout == f"flowrun {importlib.metadata.version('flowrun')}\n"


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_option_has_help() -> None:
    serve = flowrun("serve", "--help").stdout
    assert re.search(r"--host HOST +address to listen on", serve), serve
    assert re.search(r"--port PORT +port to listen on", serve), serve
    run = flowrun("run", "--help").stdout
    assert re.search(r"-i KEY=VALUE, --input KEY=VALUE\s+an input of the workflow", run), run
    for parser in _parsers(build_parser()):
        for action in parser._actions:
            assert action.help, f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"


def test_validate_ok_and_errors(tmp_path: Path) -> None:
    ok = flowrun("validate", str(EXAMPLES))
    assert ok.returncode == 0 and "hello.yaml: ok" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nnodes:\n  - {id: a, type: sleep}\n  - {id: a, type: nope}\n"
                   "edges:\n  - {source: a, target: zz}\n")
    out = flowrun("validate", str(bad))
    assert out.returncode == 1
    assert "node 'a': duplicate id" in out.stdout
    assert "node 'a': missing required param 'seconds'" in out.stdout
    assert "unknown node type 'nope'" in out.stdout
    assert "edge a->zz: target 'zz' is not a node" in out.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    assert flowrun("validate", str(broken)).returncode == 1


def test_run_prints_progress_and_exit_code_follows_status(tmp_path: Path) -> None:
    out = flowrun("run", str(EXAMPLES / "branching.yaml"), "--input", "n=42",
                  "--input", "mode=careful")
    assert out.returncode == 0, out.stderr
    assert "✓ check succeeded" in out.stderr and "- small skipped" in out.stderr
    assert '"size": "42 is big"' in out.stdout
    failing = tmp_path / "fail.yaml"
    failing.write_text("name: fail\nnodes:\n  - {id: t, type: template, "
                       "template: '{{ inputs.nope }}'}\n")
    out = flowrun("run", str(failing))
    assert out.returncode == 1 and "✗ t failed" in out.stderr
    missing = flowrun("run", str(EXAMPLES / "hello.yaml"))
    assert missing.returncode == 2 and "inputs.name: required" in missing.stderr


def test_keys_create_list_revoke(db_target: Path | str) -> None:
    db = str(db_target)  # a SQLite file, then a postgresql:// URL
    created = flowrun("keys", "--db", db, "create", "--name", "ci")
    assert created.returncode == 0 and created.stdout.startswith("fr_")
    listed = flowrun("keys", "--db", db, "list")
    assert "active" in listed.stdout and "ci" in listed.stdout
    assert "fr_" + created.stdout.strip()[3:] not in listed.stdout  # the secret is not stored
    prefix = created.stdout.strip()[:10]
    assert flowrun("keys", "--db", db, "revoke", prefix).returncode == 0
    assert "revoked" in flowrun("keys", "--db", db, "list").stdout
    assert flowrun("keys", "--db", db, "revoke", prefix).returncode == 1


def test_secrets_on_either_database(db_target: Path | str) -> None:
    db = str(db_target)
    put = subprocess.run(_command("secrets", "--db", db, "set", "API", "--allow",
                                  "https://127.0.0.1:8443/"), input="s3cret\n",
                         capture_output=True, text=True, timeout=60, env=_env(None),
                         check=False)
    assert put.returncode == 0, put.stderr
    listed = flowrun("secrets", "list", "--db", db)
    assert listed.stdout.split() == ["API", "https://127.0.0.1:8443/"]
    assert "s3cret" not in listed.stdout


def test_a_database_url_of_an_unknown_scheme_or_an_unreachable_server_is_one_line(
        tmp_path: Path) -> None:
    unknown = flowrun("keys", "--db", "mysql://u@127.0.0.1/db", "list", cwd=tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: unknown database URL scheme 'mysql'")
    port = free_port()  # nothing listens there
    gone = flowrun("keys", "list", "--db", f"postgresql://u:pw@127.0.0.1:{port}/db")
    assert gone.returncode == 2 and "Traceback" not in gone.stderr
    assert gone.stderr.startswith("error: cannot open the PostgreSQL database "
                                  f"postgresql://u:***@127.0.0.1:{port}/db")
    assert list(tmp_path.iterdir()) == []  # no SQLite file was made of either


def test_keys_revoke_takes_an_id_a_prefix_or_the_key(tmp_path: Path) -> None:
    made = []
    for name in ("by-key", "by-id", "by-prefix"):
        out = flowrun("keys", "create", "--name", name, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        made.append((out.stderr.split()[-1], out.stdout.strip()))
    (id1, key1), (id2, _), (id3, key3) = made
    for given, key_id, name in ((key1, id1, "by-key"), (id2, id2, "by-id"),
                                (key3[:10], id3, "by-prefix")):
        out = flowrun("keys", "revoke", given, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"revoked key {key_id} ") and name in out.stdout
        again = flowrun("keys", "revoke", given, cwd=tmp_path)
        assert again.returncode == 1 and again.stdout == ""
    listed = flowrun("keys", "list", cwd=tmp_path).stdout
    assert listed.count("revoked") == 3 and "active" not in listed
    nothing = flowrun("keys", "revoke", "fr_nosuchkeyatall", cwd=tmp_path)
    assert nothing.returncode == 1
    assert nothing.stderr.startswith("error: no active key matches 'fr_nosuchk…'")


def test_key_and_secret_commands_never_create_a_database(tmp_path: Path) -> None:
    for args in (("keys", "list"), ("keys", "revoke", "abc"), ("secrets", "list"),
                 ("secrets", "delete", "X"), ("keys", "list", "--db", "other.db"),
                 ("keys", "--db", "other.db", "list"), ("secrets", "list", "--db", "o.db")):
        out = flowrun(*args, cwd=tmp_path)
        assert out.returncode == 2 and out.stdout == "", (args, out.stdout)
        assert out.stderr.startswith("error: no database "), (args, out.stderr)
        assert out.stderr.count("\n") == 1
    out = flowrun("keys", "list", cwd=tmp_path, env={"FLOWRUN_DB_PATH": "env.db"})
    assert out.returncode == 2 and "env.db" in out.stderr
    assert list(tmp_path.iterdir()) == []
    # Creating a key before the first start (to provision a server) makes the database,
    # and says so; --db goes before or after the subcommand.
    created = flowrun("keys", "create", "--db", "k.db", cwd=tmp_path)
    assert created.returncode == 0 and "created a new database k.db" in created.stderr
    for args in (("keys", "list", "--db", "k.db"), ("keys", "--db", "k.db", "list")):
        assert flowrun(*args, cwd=tmp_path).stdout.count("active") == 1


def test_keys_create_refuses_a_workflow_that_is_not_registered(tmp_path: Path) -> None:
    with serving("--workflows", str(EXAMPLES), "--db", "w.db", cwd=tmp_path):
        pass
    refused = flowrun("keys", "create", "--workflow", "hello", "--workflow", "nosuchwf",
                      "--db", "w.db", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("error: no workflow 'nosuchwf' is registered in w.db")
    assert "--allow-unknown-workflow" in refused.stderr
    assert flowrun("keys", "list", "--db", "w.db", cwd=tmp_path).stdout.count("active") == 1
    bound = flowrun("keys", "create", "--workflow", "hello", "--db", "w.db", cwd=tmp_path)
    assert bound.returncode == 0 and bound.stdout.startswith("fr_"), bound.stderr
    forced = flowrun("keys", "create", "--workflow", "nosuchwf", "--allow-unknown-workflow",
                     "--db", "w.db", cwd=tmp_path)
    assert forced.returncode == 0 and forced.stdout.startswith("fr_"), forced.stderr
    # A database with no workflow yet (keys made before the first serve) cannot check.
    early = flowrun("keys", "create", "--workflow", "hello", "--db", "new.db", cwd=tmp_path)
    assert early.returncode == 0 and early.stdout.startswith("fr_"), early.stderr
    assert "no workflow is registered in new.db yet" in early.stderr


def test_no_auth_refused_off_loopback(tmp_path: Path) -> None:
    out = flowrun("serve", "--no-auth", "--host", "0.0.0.0", "--db", str(tmp_path / "x.db"))
    assert out.returncode == 2 and "loopback" in out.stderr
    assert not (tmp_path / "x.db").exists()


def test_run_calls_sibling_workflow_files(tmp_path: Path) -> None:
    out = flowrun("run", str(EXAMPLES / "report-pipeline.yaml"), "--input",
                  "text=one two three four five six seven eight nine ten")
    assert out.returncode == 0, out.stderr
    assert "A short text. 10 words (10 unique); longest: eight, seven" in out.stdout
    lonely = tmp_path / "lonely.yaml"
    lonely.write_text("name: lonely\nnodes:\n  - {id: w, type: workflow, workflow: missing}\n")
    (tmp_path / "broken.yaml").write_text("name: [oops\n")
    failed = flowrun("run", str(lonely))
    assert failed.returncode == 1 and "'missing' is not a file" in failed.stderr


def test_serve_checks_the_workflows_folder_before_starting(tmp_path: Path) -> None:
    missing = flowrun("serve", "--workflows", "nowhere", "--db", "x.db", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr == "error: workflows folder nowhere does not exist\n"
    folder = tmp_path / "wf"
    folder.mkdir()
    (folder / "good.yaml").write_text((EXAMPLES / "hello.yaml").read_text())
    (folder / "a.yaml").write_text("name: a\nnodes:\n  - {id: x, type: nope}\n")
    (folder / "b.json").write_text("{not json")
    (folder / "c.yml").write_text("name: c\nnodes:\n  - {id: s, type: sleep}\n")
    out = flowrun("serve", "--workflows", "wf", "--db", "x.db", cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == "", out.stderr
    lines = out.stderr.splitlines()
    assert lines[0] == "error: 3 workflow files in wf are invalid:"
    assert lines[1].startswith("  wf/a.yaml: ") and "unknown node type 'nope'" in lines[1]
    assert lines[2].startswith("  wf/b.json: cannot read")
    assert lines[3].startswith("  wf/c.yml: ") and "missing required param 'seconds'" in lines[3]
    assert len(lines) == 4 and "Traceback" not in out.stderr
    assert not (tmp_path / "x.db").exists()


def test_initial_admin_key_is_printed_by_the_first_start_that_serves(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("1 / 0\n")
    failed = flowrun("serve", "--plugin", "bad", cwd=tmp_path)
    assert failed.returncode == 2 and failed.stdout == "", failed.stdout
    failed = flowrun("serve", "--workflows", "nowhere", cwd=tmp_path)
    assert failed.returncode == 2 and failed.stdout == "", failed.stdout
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        failed = flowrun("serve", "--port", str(port), cwd=tmp_path)
    assert failed.returncode == 2 and failed.stdout == "", failed.stdout
    assert failed.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: "), failed.stderr
    assert failed.stderr.count("\n") == 1
    assert not (tmp_path / "flowrun.db").exists()
    with serving(cwd=tmp_path) as served:
        pass
    assert "Created an admin API key" in served.stdout, served.stdout + served.stderr
    key = next(w for w in served.stdout.split() if w.startswith("fr_"))
    with serving(cwd=tmp_path) as again:
        assert httpx.get(f"{again.url}/workflows", timeout=10,
                         headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert "fr_" not in again.stdout


TYPED = """
name: typed
inputs:
  s: {type: string}
  n: {type: number}
  i: {type: integer}
  b: {type: boolean}
  o: {type: object}
  a: {type: array}
nodes:
  - {id: t, type: template, template: "ok"}
outputs:
  s: "{{ inputs.s }}"
  n: "{{ inputs.n }}"
  i: "{{ inputs.i }}"
  b: "{{ inputs.b }}"
  o: "{{ inputs.o }}"
  a: "{{ inputs.a }}"
"""


def test_run_inputs_follow_their_declared_type(tmp_path: Path) -> None:
    hello = str(EXAMPLES / "hello.yaml")
    for text in ("true", "null", "1e3", '{"a": 1}', "", "a=b"):
        out = flowrun("run", hello, "-i", f"name={text}")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"greeting": f"Hello, {text}!"}
    (tmp_path / "typed.yaml").write_text(TYPED)
    out = flowrun("run", "typed.yaml", "-i", "s=1", "-i", "n=1e3", "-i", "i=7", "-i", "b=false",
                  "-i", 'o={"k": [1]}', "-i", "a=[1, \"x\"]", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"s": "1", "n": 1000.0, "i": 7, "b": False,
                                      "o": {"k": [1]}, "a": [1, "x"]}
    for pair, wanted in [("n=abc", "a number"), ("n=true", "a number"), ("n=NaN", "a number"),
                         ("i=1e3", "an integer"), ("i=1.5", "an integer"),
                         ("i=true", "an integer"), ("b=yes", "true or false"),
                         ("b=1", "true or false"), ("b=null", "true or false"),
                         ("o=[1]", "a JSON object"), ("o=x", "a JSON object"),
                         ("a={}", "a JSON array")]:
        out = flowrun("run", "typed.yaml", "-i", pair, cwd=tmp_path)
        name, _, raw = pair.partition("=")
        assert out.returncode == 2, (pair, out.stdout)
        assert out.stderr == f"error: --input {name}: expected {wanted}, got {raw!r}\n"
    out = flowrun("run", "typed.yaml", "-i", "nope=1", cwd=tmp_path)
    assert out.returncode == 2 and "inputs.nope: unknown input" in out.stderr


def test_run_prints_only_the_outputs_on_stdout(tmp_path: Path) -> None:
    out = flowrun("run", str(EXAMPLES / "hello.yaml"), "-i", "name=Ada")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"greeting": "Hello, Ada!"}
    assert "▶ greet (template)" in out.stderr and "succeeded in" in out.stderr
    failing = tmp_path / "fail.yaml"
    failing.write_text("name: fail\nnodes:\n  - {id: t, type: template, "
                       "template: '{{ inputs.nope }}'}\n")
    out = flowrun("run", str(failing))
    assert out.returncode == 1 and out.stdout == ""
    assert "✗ t failed" in out.stderr and "error:" in out.stderr
