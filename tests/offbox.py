"""Tests talk only to this machine: every address and URL host in tests/ and bench/ is loopback.

A test that names an address elsewhere (a public resolver, the cloud metadata
address, a real domain) sends packets off this machine on the day the guard it
tests regresses. This check reads the sources and data files under ``tests/`` and
``bench/`` and reports every IPv4 or IPv6 literal, URL host and bare domain name
that is not loopback (127.0.0.0/8, ::1, ``localhost``) or the unspecified
address. The only exceptions are a few pure address-policy tests: literal tables
handed to a function that judges them and never opens a socket. They are named in
``PURE`` by file and top-level definition (not by line, so editing a file above
them does not break the check), and each must stay free of the names that open
connections.

``python -m tests.offbox`` runs it (``make lint``); ``tests/test_offbox.py`` runs it
in the suite.
"""

from __future__ import annotations

import ast
import ipaddress
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import idna

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("tests", "bench")
DATA_SUFFIXES = {".yaml", ".yml", ".json", ".txt", ".toml", ".ini", ".cfg", ".conf", ".sh"}

# file -> top-level definitions whose literals are judged by a pure function only
PURE: dict[str, frozenset[str]] = {
    "tests/engine/test_http_node.py": frozenset({"test_address_policy"}),
    "tests/engine/test_secrets.py": frozenset({
        "test_urls_match_by_origin_and_path_prefix", "test_prefixes_must_be_plain_http_urls",
        "Source", "test_references_fill_only_for_allowed_urls_and_redact_back"}),
    "tests/features/test_callbacks.py": frozenset({"test_urls_a_callback_may_use",
                                          "test_urls_a_callback_may_not_use",
                                          # sent to httpx's MockTransport only
                                          "ACCEPTED"}),
    # this check's own samples, which it only reads
    "tests/test_offbox.py": frozenset({
        "SAMPLE", "test_the_check_flags_every_address_elsewhere_and_nothing_local",
        "test_data_files_are_checked_line_by_line", "test_an_allowed_table_must_stay_pure"}),
}
# Names a pure scope may not use: each opens, or leads to, a connection.
IO_NAMES = frozenset({
    "socket", "create_connection", "connect", "connect_tcp", "connect_unix",
    "open_connection", "getaddrinfo", "gethostbyname", "system_resolve", "urlopen",
    "urllib", "Client", "AsyncClient", "HTTPTransport", "AsyncHTTPTransport",
    "guarded_client", "serve", "Server", "subprocess", "Popen", "run_process",
    "open_process", "Executor", "call", "ask", "run_code", "request", "send", "stream",
    # fixtures that start servers or hand out clients
    "base_url", "llm_url", "server_factory", "start_server", "keys", "apis", "receiver",
})

_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://([^\s/?#\"'<>\\]*)")
_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?!\w|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
                   r"(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?(?![\w:]|\.\d)")
_HOST = re.compile(r"^[A-Za-z0-9_.-]+$|^\[[0-9A-Fa-f:.]+\]$")
# a whole string that is a domain name in one of these is someone's machine
_DOMAIN = re.compile(r"^(?:[A-Za-z0-9-]+\.)+(?:com|net|org|io|dev|ai|co|info|example|"
                     r"invalid|test)\.?$", re.IGNORECASE)
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


@dataclass(frozen=True)
class Finding:
    """One address or host off this machine: where, and in which top-level definition."""

    path: str
    line: int
    scope: str
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what} (in {self.scope})"


def on_box(host: str) -> bool:
    """True for loopback, the unspecified address and ``localhost``."""
    host = host.strip("[]").split("%", 1)[0].rstrip(".").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        # a name: resolving it asks a resolver, usually elsewhere; unless no request can
        # carry it (httpx refuses a host that IDNA cannot encode before any socket)
        return not _encodable(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def _encodable(host: str) -> bool:
    """Whether ``host`` is a name a request could carry (as httpx encodes it)."""
    try:
        idna.encode(host, uts46=True)
    except idna.IDNAError:
        return False
    return True


def _url_host(netloc: str) -> str | None:
    """The host of a URL's authority, or None when there is none to judge (a template)."""
    host = netloc.rsplit("@", 1)[-1]
    host = host[:host.index("]") + 1] if host.startswith("[") and "]" in host \
        else host.split(":", 1)[0]
    return host if host and _HOST.match(host) else None


def offenders(text: str) -> Iterator[tuple[int, str]]:
    """(offset, description) of every off-box address, URL host or domain in ``text``."""
    for match in _URL.finditer(text):
        host = _url_host(match.group(1))
        if host is not None and not on_box(host):
            yield match.start(), f"URL host {host!r}"
    for pattern, kind in ((_IPV4, "IPv4"), (_IPV6, "IPv6")):
        for match in pattern.finditer(text):
            try:
                ipaddress.ip_address(match.group())
            except ValueError:
                continue  # a version number, a time of day, a slice
            if not on_box(match.group()):
                yield match.start(), f"{kind} address {match.group()!r}"
    if _DOMAIN.match(text.strip()):
        yield 0, f"domain name {text.strip()!r}"


def _scope(top: ast.stmt) -> str | None:
    """The name a top-level statement defines (a function, a class, a constant)."""
    if isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return top.name
    if isinstance(top, ast.Assign | ast.AnnAssign):
        target = top.targets[0] if isinstance(top, ast.Assign) else top.target
        return target.id if isinstance(target, ast.Name) else None
    return None


def _strings(tree: ast.Module) -> Iterator[tuple[str, str, ast.Constant]]:
    """(top-level scope name, text, literal) for every string literal in a module."""
    for top in tree.body:
        scope = _scope(top) or "<module>"
        for node in ast.walk(top):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                yield scope, node.value, node
            elif isinstance(node, ast.Constant) and isinstance(node.value, bytes):
                yield scope, node.value.decode("latin-1"), node


def scan_python(path: str, source: str) -> list[Finding]:
    """Every off-box literal in one Python source, in the order they are written."""
    found = []
    for scope, text, node in _strings(ast.parse(source, path)):
        for offset, what in offenders(text):
            line = node.lineno + text.count("\n", 0, offset)
            found.append(((line, node.col_offset, offset), Finding(path, line, scope, what)))
    return [finding for _, finding in sorted(found, key=lambda pair: pair[0])]


def scan_text(path: str, text: str) -> list[Finding]:
    """Every off-box literal in a data file (a workflow, a config), line by line."""
    return [Finding(path, number, "<file>", what)
            for number, line in enumerate(text.splitlines(), 1)
            for _, what in offenders(line)]


def impure_names(source: str, scope: str) -> set[str]:
    """The connection-opening names a top-level definition uses (empty: it is pure)."""
    for top in ast.parse(source).body:
        if _scope(top) == scope:
            used = {n.id for n in ast.walk(top) if isinstance(n, ast.Name)}
            used |= {n.attr for n in ast.walk(top) if isinstance(n, ast.Attribute)}
            used |= {a.arg for n in ast.walk(top) if isinstance(n, ast.arguments)
                     for a in n.args + n.kwonlyargs}
            return used & IO_NAMES
    raise LookupError(f"no top-level {scope!r}")


def scan(root: Path = ROOT) -> list[Finding]:
    """Every off-box literal under tests/ and bench/ that ``PURE`` does not allow."""
    found = []
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            relative = path.relative_to(root).as_posix()
            if path.suffix == ".py":
                found += [f for f in scan_python(relative, path.read_text())
                          if f.scope not in PURE.get(relative, ())]
            elif path.suffix in DATA_SUFFIXES and path.is_file():
                found += scan_text(relative, path.read_text(errors="replace"))
    return found


def main() -> int:
    found = scan()
    for finding in found:
        print(finding)
    for relative, scopes in PURE.items():
        source = (ROOT / relative).read_text()
        for scope in sorted(scopes):
            names = impure_names(source, scope)
            if names:
                print(f"{relative}: {scope} is allowed literals as a pure test but uses "
                      f"{', '.join(sorted(names))}")
                found.append(Finding(relative, 0, scope, "impure"))
    if found:
        print("tests and benchmarks must talk only to this machine: use 127.0.0.1 (or "
              "another 127.x address the test listens on) instead", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
