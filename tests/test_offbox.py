"""The check that tests and benchmarks name no machine but this one (tests/offbox.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import offbox


def test_tests_and_benchmarks_talk_only_to_this_machine() -> None:
    found = offbox.scan()
    assert not found, "\n".join(str(f) for f in found)


def test_the_allowed_tables_exist_and_open_no_connection() -> None:
    for relative, scopes in offbox.PURE.items():
        source = (offbox.ROOT / relative).read_text()
        for scope in scopes:
            assert offbox.impure_names(source, scope) == set(), (relative, scope)


SAMPLE = '''
import socket

SPY = """
socket.create_connection(("1.1.1.1", 53))
"""

def test_fetches() -> None:
    call(url="http://example.com/x")
    call(url=f"https://[2001:db8::1]:{port}/")
    resolve({"internal.example": ["10.0.0.1"]})
    socket.create_connection(("fe80::1%eth0", 80))

def test_stays_home() -> None:
    call(url="http://127.0.0.2:9/x", other="http://localhost:8000", six="http://[::1]/")
    listen(("0.0.0.0", 0), "::ffff:127.0.0.1", "127.0.0.1/32", "[::]")
    version("3.11.7", "1.2.3.4.5", "12:30:00", "sqlite:///f.db", "file:///etc/passwd")
    template("http://{host}:{port}/")
'''


def test_the_check_flags_every_address_elsewhere_and_nothing_local() -> None:
    found = offbox.scan_python("tests/sample.py", SAMPLE)
    assert [(f.line, f.scope, f.what) for f in found] == [
        (5, "SPY", "IPv4 address '1.1.1.1'"),
        (9, "test_fetches", "URL host 'example.com'"),
        (10, "test_fetches", "URL host '[2001:db8::1]'"),
        (10, "test_fetches", "IPv6 address '2001:db8::1'"),
        (11, "test_fetches", "domain name 'internal.example'"),
        (11, "test_fetches", "IPv4 address '10.0.0.1'"),
        (12, "test_fetches", "IPv6 address 'fe80::1'"),
    ]


def test_data_files_are_checked_line_by_line() -> None:
    workflow = "nodes:\n  - id: h\n    type: http\n    url: https://api.example.com/v1\n" \
               "  - id: ok\n    url: http://127.0.0.1:8000/\n"
    assert [(f.line, f.what) for f in offbox.scan_text("w.yaml", workflow)] == [
        (4, "URL host 'api.example.com'")]


def test_an_allowed_table_must_stay_pure(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "bench").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        'def test_table():\n    assert judge("10.0.0.1")\n\n'
        'def test_fetch(base_url):\n    socket.create_connection(("10.0.0.1", 80))\n')
    monkeypatch.setattr(offbox, "PURE", {"tests/test_x.py": frozenset({"test_table"})})
    assert [(f.line, f.scope) for f in offbox.scan(tmp_path)] == [(5, "test_fetch")]
    source = (tmp_path / "tests" / "test_x.py").read_text()
    assert offbox.impure_names(source, "test_table") == set()
    assert offbox.impure_names(source, "test_fetch") == {"base_url", "create_connection",
                                                         "socket"}
