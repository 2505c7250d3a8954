"""Tests for mcp_ref, in the module's order: pure functions first, then a
server over in-memory pipes, then real subprocesses.

Every wait is bounded (WAIT seconds) and nothing sleeps to synchronise: tests
block on queues, events and process exits.  A fixture fails any test that
leaves a thread or a child process behind.
"""

import copy
import io
import json
import math
import os
import queue
import re
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import typing
from pathlib import Path

import pytest

import mcp_ref
from mcp_ref import (Client, ConnectionClosed, Context, CrashLoop, Event, LineReader,
                     LineTooLong, MCPError, RequestTimeout, RestartPolicy, RPCError,
                     Server, State, StateError, UnsupportedVersion)

HERE = Path(__file__).resolve().parent
WAIT = 10.0  # the upper bound of any wait: generous, so a slow machine never flakes
PY = sys.executable
WINDOWS = os.name == "nt"


def posix_only(why: str):
    """Skip on Windows a test of behaviour that only POSIX has; `why` says what Windows lacks."""
    return pytest.mark.skipif(WINDOWS, reason=f"POSIX only: {why}")


NO_SIGNALS = posix_only("Windows cannot send SIGTERM or SIGINT to another process (send_signal is TerminateProcess)")
NO_PROC = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only: reads /proc")


# ==== Fixtures: no leaked threads or processes ================================

sys.path.insert(0, str(HERE / "examples"))
from soak import children as _children  # noqa: E402 - PIDs of our living children (Linux /proc)


@pytest.fixture(autouse=True)
def no_leaks():
    threads_before = set(threading.enumerate())
    children_before = _children()
    yield
    deadline = time.monotonic() + WAIT
    for thread in set(threading.enumerate()) - threads_before:
        thread.join(max(0.0, deadline - time.monotonic()))
    leaked = [t.name for t in set(threading.enumerate()) - threads_before if t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"
    assert _children() - children_before == set(), "child processes left running"


# ==== 1. Pure: the state machine ==============================================

def test_every_legal_transition_lands_where_the_table_says():
    for (state, event), target in mcp_ref.TRANSITIONS.items():
        assert mcp_ref.transition(state, event) is target


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("event", list(Event))
def test_every_illegal_transition_raises_and_changes_nothing(state, event):
    if (state, event) in mcp_ref.TRANSITIONS:
        return
    conn = mcp_ref.Connection(io.BytesIO(), io.BytesIO(), owner=None)
    conn._state = state
    with pytest.raises(StateError) as info:
        conn.advance(event)
    assert conn.state is state
    assert state.value in str(info.value) and event.value in str(info.value)


def test_closed_is_terminal_and_every_state_can_reach_it():
    assert not [e for (s, e) in mcp_ref.TRANSITIONS if s is State.CLOSED]
    reachable = {State.CLOSED}
    changed = True
    while changed:
        changed = False
        for (state, _), target in mcp_ref.TRANSITIONS.items():
            if target in reachable and state not in reachable:
                reachable.add(state)
                changed = True
    assert reachable == set(State)


def test_failed_skips_the_drain():
    # The error state goes straight to CLOSED: it never passes through CLOSING.
    assert {e for (s, e) in mcp_ref.TRANSITIONS if s is State.FAILED} == {Event.FINISH}


def test_spec_notes_table_matches_the_code():
    text = (HERE / "SPEC_NOTES.md").read_text()
    section = text.split("<!-- transitions -->")[1]
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| `(\w+)` \|$", section, re.M)
    documented = {(State(s), Event(e)): State(t) for s, e, t in rows}
    assert documented == mcp_ref.TRANSITIONS


def test_spec_notes_names_only_functions_and_tests_that_exist():
    text = (HERE / "SPEC_NOTES.md").read_text()
    tests = set(re.findall(r"^def (test_\w+)", (HERE / "test_mcp_ref.py").read_text(), re.M))
    named_tests = set(re.findall(r"`(test_\w+)`", text))
    assert named_tests and named_tests <= tests, sorted(named_tests - tests)
    for dotted in set(re.findall(r"`mcp_ref\.([\w.]+)`", text)):
        target = mcp_ref
        for part in dotted.split("."):
            assert hasattr(target, part), f"SPEC_NOTES.md names mcp_ref.{dotted}, which does not exist"
            target = getattr(target, part)


def test_only_from_leaves_other_states_alone():
    conn = mcp_ref.Connection(io.BytesIO(), io.BytesIO(), owner=None)
    assert conn.advance(Event.CLOSE, only_from=mcp_ref.LIVE) is State.NEW
    conn.advance(Event.OPEN)  # the reader is not started: advance() alone moves state
    assert conn.advance(Event.CLOSE, only_from=mcp_ref.LIVE) is State.CLOSING


# ==== 1. Pure: messages =========================================================

def test_error_codes_are_the_jsonrpc_and_mcp_numbers():
    assert (mcp_ref.PARSE_ERROR, mcp_ref.INVALID_REQUEST, mcp_ref.METHOD_NOT_FOUND,
            mcp_ref.INVALID_PARAMS, mcp_ref.INTERNAL_ERROR, mcp_ref.RESOURCE_NOT_FOUND) == \
        (-32700, -32600, -32601, -32602, -32603, -32002)


CLASSIFY = [
    ({"jsonrpc": "2.0", "id": 1, "method": "ping"}, "request"),
    ({"jsonrpc": "2.0", "id": "a", "method": "ping", "params": {}}, "request"),
    ({"jsonrpc": "2.0", "method": "notifications/initialized"}, "notification"),
    ({"jsonrpc": "2.0", "id": 1, "result": {}}, "response"),
    ({"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": "x"}}, "response"),
    ({"jsonrpc": "2.0", "id": None, "error": {"code": -1, "message": "x"}}, "response"),
    ({"jsonrpc": "1.0", "id": 1, "method": "ping"}, -32600),
    ({"id": 1, "method": "ping"}, -32600),
    ({"jsonrpc": "2.0", "id": None, "method": "ping"}, -32600),
    ({"jsonrpc": "2.0", "id": True, "method": "ping"}, -32600),
    ({"jsonrpc": "2.0", "id": 1.5, "method": "ping"}, -32600),
    ({"jsonrpc": "2.0", "id": [1], "method": "ping"}, -32600),
    ({"jsonrpc": "2.0", "id": 1, "method": 7}, -32600),
    ({"jsonrpc": "2.0", "id": 1, "method": "x", "params": [1]}, -32600),
    ({"jsonrpc": "2.0", "id": 1, "method": "x", "params": "s"}, -32600),
    ({"jsonrpc": "2.0", "id": 1}, -32600),
    ({"jsonrpc": "2.0", "id": 1, "result": {}, "error": {}}, -32600),
    ({"jsonrpc": "2.0", "id": 1, "error": "bad"}, -32600),
    ([], -32600),
    ("text", -32600),
    (3, -32600),
    (None, -32600),
]


@pytest.mark.parametrize("msg, expected", CLASSIFY)
def test_classify(msg, expected):
    if isinstance(expected, str):
        assert mcp_ref.classify(msg) == expected
    else:
        with pytest.raises(RPCError) as info:
            mcp_ref.classify(msg)
        assert info.value.code == expected


def test_classify_error_echoes_a_readable_id_only():
    with pytest.raises(RPCError) as info:
        mcp_ref.classify({"jsonrpc": "1.0", "id": 7, "method": "ping"})
    assert info.value.id == 7
    with pytest.raises(RPCError) as info:
        mcp_ref.classify({"jsonrpc": "2.0", "id": 1.5, "method": "ping"})
    assert info.value.id is None


def test_error_without_readable_id_leaves_id_out():
    assert "id" not in mcp_ref.make_error(None, RPCError(-32700, "x"))
    assert mcp_ref.make_error(3, RPCError(-32700, "x"))["id"] == 3


# ==== 1. Pure: wire format ======================================================

def read_all(data: bytes, limit=mcp_ref.MAX_LINE_BYTES) -> list:
    reader = LineReader(io.BytesIO(data), limit)
    out = []
    while True:
        try:
            line = reader.read_line()
        except LineTooLong:
            out.append("TOO LONG")
            continue
        if line is None:
            return out
        out.append(bytes(line))


def test_reader_splits_on_newline_only_and_strips_one_cr():
    assert read_all(b'a\nb\r\nc\r\r\n"\xe2\x80\xa8"\x1c\n') == [b"a", b"b", b"c\r", b'"\xe2\x80\xa8"\x1c']


def test_reader_skips_blank_lines_and_keeps_a_final_unterminated_line():
    assert read_all(b"\n\r\n   \nx\n\ny") == [b"x", b"y"]


def test_reader_eof_mid_line_and_empty_input():
    assert read_all(b"") == []
    assert read_all(b"partial") == [b"partial"]


def test_reader_refuses_an_oversize_line_and_resynchronises():
    data = b"ok1\n" + b"x" * 1000 + b"\nok2\n" + b"y" * 1000
    assert read_all(data, limit=100) == [b"ok1", "TOO LONG", b"ok2", "TOO LONG"]  # the last one at EOF


def test_reader_memory_stays_bounded_on_a_huge_line():
    sizes = []

    class Stream:
        """64 MiB with no newline, then a small message."""
        chunks = iter([b"z" * 65536] * 1024 + [b"\n{}\n"])

        def read1(self, n):
            sizes.append(len(reader._buffer))
            return next(self.chunks, b"")
    reader = LineReader(Stream(), limit=1 << 20)
    with pytest.raises(LineTooLong):
        reader.read_line()
    assert reader.read_line() == b"{}"
    assert max(sizes) <= (1 << 20) + 65536


@pytest.mark.parametrize("line", [b"{not json", b"\xff\xfe{}", b'{"a": NaN}', b"[Infinity]",
                                  b"-Infinity", b'"\xed\xa0\x80"', b"[" * 100000, b"{} {}", b"{}x"])
def test_decode_line_refuses_with_parse_error(line):
    with pytest.raises(RPCError) as info:
        mcp_ref.decode_line(line)
    assert info.value.code == -32700


def test_encode_message_is_one_strict_ascii_line():
    data = mcp_ref.encode_message({"text": "a\nb\u2028c\ud800", "n": 1})
    assert b"\n" not in data and data.isascii()
    assert json.loads(data) == {"text": "a\nb\u2028c\ud800", "n": 1}
    for bad in (float("nan"), float("inf"), {1, 2}):
        with pytest.raises((ValueError, TypeError)):
            mcp_ref.encode_message({"x": bad})


# ==== 1. Pure: schemas, results, pages ==========================================

def test_schema_from_type_hints():
    def f(text: str, n: int, x: float, flag: bool, items: list[int], obj: dict,
          maybe: typing.Optional[str] = None, mode: typing.Literal["a", "b"] = "a",
          union: int | None = None, ctx: Context = None, anything=3) -> str:
        """Doc."""
    schema, context_param = mcp_ref.signature_schema(f)
    assert context_param == "ctx"
    assert schema["required"] == ["text", "n", "x", "flag", "items", "obj"]
    props = schema["properties"]
    assert props["text"] == {"type": "string"}
    assert props["n"] == {"type": "integer"}
    assert props["x"] == {"type": "number"}
    assert props["flag"] == {"type": "boolean"}
    assert props["items"] == {"type": "array", "items": {"type": "integer"}}
    assert props["obj"] == {"type": "object"}
    assert props["maybe"] == {"type": ["string", "null"], "default": None}
    assert props["mode"] == {"type": "string", "enum": ["a", "b"], "default": "a"}
    assert props["union"] == {"type": ["integer", "null"], "default": None}
    assert props["anything"] == {"default": 3}
    assert "ctx" not in props


def test_parameters_of_functions_and_methods():
    def plain(a, b=2, *args, c, d=4, **kwargs):
        """First line.

            Indented detail.
        """

    class Tools:
        def method(self, a, b=2, *, c, d=4):
            pass
    required = mcp_ref.REQUIRED
    expected = [("a", required), ("b", 2), ("c", required), ("d", 4)]
    assert mcp_ref.parameters(plain) == expected
    assert mcp_ref.parameters(Tools().method) == expected
    assert mcp_ref._description(plain) == "First line.\n\nIndented detail."


@pytest.mark.parametrize("arguments, problem", [
    ({"n": 1}, None),
    ({"n": 3.0}, None),  # JSON Schema: 3.0 is an integer
    ({}, "arguments.n: required"),
    ({"n": "1"}, "arguments.n: expected integer"),
    ({"n": True}, "arguments.n: expected integer"),
    ({"n": 1.5}, "arguments.n: expected integer"),
    ({"n": 1, "mode": "c"}, 'arguments.mode: must be one of ["a","b"]'),
    ({"n": 1, "extra": 1}, "arguments.extra: not expected here"),
    ({"n": 1, "x": 2}, None),
    ({"n": 1, "maybe": None}, None),
    ({"n": 1, "x": float("inf")}, "arguments.x: not a finite number"),
])
def test_validate_arguments_against_a_derived_schema(arguments, problem):
    def f(n: int, x: float = 1.0, mode: typing.Literal["a", "b"] = "a", maybe: str | None = None):
        pass
    schema, _ = mcp_ref.signature_schema(f)
    assert mcp_ref.validate(schema, arguments, "arguments") == problem


def test_tool_results():
    text = {"type": "text", "text": "hi"}
    image = {"type": "image", "data": "AAAA", "mimeType": "image/png"}
    assert mcp_ref.tool_result("hi", "2025-11-25") == {"content": [text], "isError": False}
    assert mcp_ref.tool_result(image, "2025-11-25")["content"] == [image]
    assert mcp_ref.tool_result([text, image], "2025-11-25")["content"] == [text, image]
    assert mcp_ref.tool_result(None, "2025-11-25")["content"] == []
    structured = mcp_ref.tool_result({"a": 1}, "2025-06-18")
    assert structured["structuredContent"] == {"a": 1}
    assert json.loads(structured["content"][0]["text"]) == {"a": 1}
    assert "structuredContent" not in mcp_ref.tool_result({"a": 1}, "2025-03-26")
    assert mcp_ref.tool_result(3, "2025-11-25")["content"][0]["text"] == "3"


def test_pages_walk_everything_and_bad_cursors_are_invalid_params():
    items = list(range(7))
    seen, cursor = [], None
    while True:
        chunk, cursor = mcp_ref.page(items, cursor, 3)
        seen += chunk
        if cursor is None:
            break
    assert seen == items
    for bad in ("nonsense", "LTE=", 5, mcp_ref.page(list(range(100)), None, 50)[1]):
        with pytest.raises(RPCError) as info:
            mcp_ref.page(items, bad, 3)
        assert info.value.code == -32602


def test_log_levels_map_both_ways():
    assert mcp_ref.mcp_level(10) == "debug"
    assert mcp_ref.mcp_level(30) == "warning"
    assert mcp_ref.mcp_level(25) == "notice"
    assert mcp_ref.mcp_level(70) == "emergency"


def test_restart_policy_backs_off_exponentially_with_jitter():
    policy = RestartPolicy(initial_delay=1.0, max_delay=8.0, jitter=0.25)
    for attempt, base in [(0, 1), (1, 2), (2, 4), (3, 8), (10, 8)]:
        delays = {policy.delay(attempt) for _ in range(20)}
        assert all(base * 0.75 <= d <= base * 1.25 for d in delays)
        assert len(delays) > 1


def test_server_environment_is_an_allowlist(monkeypatch):
    monkeypatch.setenv("SECRET_API_KEY", "hunter2")
    monkeypatch.setenv("PATH", "/bin")
    env = mcp_ref.server_environment({"EXTRA": "1"})
    assert "SECRET_API_KEY" not in env and env["PATH"] == "/bin" and env["EXTRA"] == "1"


# ==== 2. In memory: a Server over real pipes, in threads =====================

class Wire:
    """A Server serving in a thread over two os.pipe()s; the test speaks raw lines.

    Every line the server writes must be strict JSON, or recv() fails.
    """

    def __init__(self, server: Server):
        c2s_r, c2s_w = os.pipe()
        s2c_r, s2c_w = os.pipe()
        self.server = server
        self.why = None
        self._out = open(c2s_w, "wb")
        self._lines = queue.Queue()
        self._serving = threading.Thread(target=self._serve, args=(open(c2s_r, "rb"), open(s2c_w, "wb")))
        self._reading = threading.Thread(target=self._read, args=(open(s2c_r, "rb"),))
        self._serving.start()
        self._reading.start()

    def _serve(self, instream, outstream):
        self.why = self.server.serve(instream, outstream)

    def _read(self, stream):
        with stream:
            for line in stream:
                try:
                    self._lines.put(json.loads(line, parse_constant=lambda c: 1 / 0))
                except (ValueError, ZeroDivisionError):
                    self._lines.put(AssertionError(f"not strict JSON on stdout: {line[:80]!r}"))
        self._lines.put(EOFError())

    def send(self, *msgs):
        for msg in msgs:
            self._out.write(msg if isinstance(msg, bytes) else json.dumps(msg).encode())
            self._out.write(b"\n")
        self._out.flush()

    def recv(self):
        item = self._lines.get(timeout=WAIT)
        if isinstance(item, EOFError):
            self._lines.put(item)  # EOF stays EOF for later calls
        if isinstance(item, Exception):
            raise item
        return item

    def request(self, id, method, params=None):
        self.send(mcp_ref.make_request(id, method, params))
        return self.recv()

    def handshake(self, version="2025-11-25", capabilities=None):
        reply = self.request(0, "initialize", {"protocolVersion": version,
                                               "capabilities": capabilities or {},
                                               "clientInfo": {"name": "test", "version": "0"}})
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return reply["result"]

    def assert_silent(self):
        """Nothing was sent since the last recv(): a ping's answer is the very next line."""
        assert self.request("silence?", "ping") == {"jsonrpc": "2.0", "id": "silence?", "result": {}}

    def close(self) -> list:
        """EOF to the server; returns what it still wrote; the server must end."""
        self._out.close()
        rest = []
        while True:
            item = self._lines.get(timeout=WAIT)
            if isinstance(item, EOFError):
                break
            rest.append(item)
        self._serving.join(WAIT)
        self._reading.join(WAIT)
        assert not self._serving.is_alive(), "serve() did not return after EOF"
        return rest

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self._out.closed:
            self.close()


def make_server(**options) -> Server:
    server = Server("test-server", version="1.2.3", title="Test", description="For tests",
                    website_url="https://example.invalid", instructions="Be nice.", **options)

    @server.tool()
    def echo(text: str) -> str:
        """Echo."""
        return text

    @server.tool()
    def boom() -> str:
        raise ValueError("kaboom")

    @server.tool()
    def refuse() -> str:
        raise mcp_ref.ToolError("not today")

    @server.tool()
    def structured(n: int) -> dict:
        return {"n": n}

    @server.tool()
    def not_json() -> dict:
        return {"x": float("nan")}

    @server.resource("test://a")
    def a() -> str:
        return "A"

    @server.resource("test://bin", mime_type="application/octet-stream")
    def binary() -> bytes:
        return b"\x00\x01"

    @server.resource("test://item/{id}")
    def item(id: str) -> str:
        return f"item {id}"

    @server.prompt()
    def greet(name: str, style: str = "plain") -> str:
        """Greet someone."""
        return f"Hello {name} ({style})"

    return server


def rpc_error(reply) -> int:
    return reply["error"]["code"]


@pytest.mark.parametrize("version", mcp_ref.PROTOCOL_VERSIONS)
def test_initialize_echoes_every_supported_version(version):
    with Wire(make_server()) as wire:
        result = wire.handshake(version)
        assert result["protocolVersion"] == version
        assert result["instructions"] == "Be nice."
        info = result["serverInfo"]
        assert info["name"] == "test-server" and info["version"] == "1.2.3"
        assert ("title" in info) == (version >= "2025-06-18")
        assert ("websiteUrl" in info) == ("description" in info) == (version >= "2025-11-25")


def test_initialize_with_an_unknown_version_answers_the_latest_and_warns(caplog):
    with Wire(make_server()) as wire:
        assert wire.handshake("2099-01-01")["protocolVersion"] == "2025-11-25"
    assert "2099-01-01" in caplog.text


def test_capabilities_name_only_what_is_registered():
    server = Server("bare")

    @server.tool()
    def t() -> str:
        return ""
    with Wire(server) as wire:
        caps = wire.handshake()["capabilities"]
        assert set(caps) == {"tools", "logging"}
        assert rpc_error(wire.request(1, "prompts/list")) == -32601
        assert rpc_error(wire.request(2, "resources/read", {"uri": "x"})) == -32601


@pytest.mark.parametrize("params", [{}, {"protocolVersion": 5}, {"protocolVersion": "2025-11-25",
                                                                  "capabilities": []}])
def test_initialize_with_bad_params_is_invalid_params_and_the_connection_lives(params):
    with Wire(make_server()) as wire:
        assert rpc_error(wire.request(1, "initialize", params)) == -32602
        assert wire.handshake()["protocolVersion"] == "2025-11-25"


def test_before_the_handshake_only_ping_and_initialize_are_served():
    with Wire(make_server()) as wire:
        assert wire.request(1, "ping") == {"jsonrpc": "2.0", "id": 1, "result": {}}
        reply = wire.request("t", "tools/list")
        assert rpc_error(reply) == -32602 and reply["id"] == "t"
        wire.send({"jsonrpc": "2.0", "method": "notifications/initialized"})  # before initialize: ignored
        wire.send({"jsonrpc": "2.0", "method": "notifications/whatever"})
        wire.assert_silent()
        wire.request(2, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                       "clientInfo": {"name": "t", "version": "0"}})
        # Between the initialize answer and notifications/initialized: still refused.
        assert rpc_error(wire.request(3, "tools/list")) == -32602
        wire.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        # Notifications arrive in order: the very next request is served.
        assert "tools" in wire.request(4, "tools/list")["result"]


def test_a_second_initialize_is_an_error():
    with Wire(make_server()) as wire:
        wire.handshake()
        assert rpc_error(wire.request(9, "initialize", {"protocolVersion": "2025-11-25"})) == -32600
        wire.assert_silent()


def test_a_bare_server_discover_first_is_refused_and_the_fallback_works():
    with Wire(make_server()) as wire:
        reply = wire.request(1, "server/discover", {})  # without the 2026-07-28 envelope
        assert rpc_error(reply) == -32602 and reply["id"] == 1
        assert wire.handshake("2025-06-18")["protocolVersion"] == "2025-06-18"


def test_envelope_errors_and_silence():
    with Wire(make_server()) as wire:
        wire.handshake()
        wire.send(b"{oops")
        reply = wire.recv()
        assert rpc_error(reply) == -32700 and "id" not in reply
        wire.send({"jsonrpc": "2.0", "id": 5, "method": 3})
        assert wire.recv()["id"] == 5
        # Never answered: notifications (even malformed) and responses.
        wire.send({"jsonrpc": "2.0", "method": "no/such/notification"},
                  {"jsonrpc": "2.0", "method": "x", "params": "not an object"},
                  {"jsonrpc": "2.0", "id": 777, "result": {}},
                  {"jsonrpc": "2.0", "id": 778, "error": {"code": 1, "message": "x"}},
                  {"jsonrpc": "2.0", "result": "no id"})
        wire.assert_silent()
        assert rpc_error(wire.request(6, "no/such/method")) == -32601


def test_batches_only_in_2025_03_26():
    with Wire(make_server()) as wire:
        wire.handshake("2025-06-18")
        wire.send(b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]')
        assert rpc_error(wire.recv()) == -32600
    with Wire(make_server()) as wire:
        wire.handshake("2025-03-26")
        wire.send(json.dumps([
            {"jsonrpc": "2.0", "id": 1, "method": "ping"},
            {"jsonrpc": "2.0", "method": "notifications/whatever"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "b"}}},
            {"jsonrpc": "2.0", "id": 3, "method": "initialize", "params": {}},
            "junk",
        ]).encode())
        answers = wire.recv()
        assert isinstance(answers, list)
        by_id = {a.get("id"): a for a in answers}
        assert by_id[1]["result"] == {} and by_id[2]["result"]["content"][0]["text"] == "b"
        assert rpc_error(by_id[3]) == -32600 and rpc_error(by_id[None]) == -32600
        assert len(answers) == 4
        wire.send(b"[]")
        assert rpc_error(wire.recv()) == -32600
        wire.send(b'[{"jsonrpc":"2.0","method":"notifications/x"}]')
        wire.assert_silent()


def test_tools_list_is_paginated_and_bad_cursors_are_refused():
    with Wire(make_server(page_size=2)) as wire:
        wire.handshake()
        names, cursor, id = [], None, 10
        while True:
            result = wire.request(id, "tools/list", {"cursor": cursor} if cursor else {})["result"]
            names += [t["name"] for t in result["tools"]]
            cursor = result.get("nextCursor")
            id += 1
            if cursor is None:
                break
        assert names == ["echo", "boom", "refuse", "structured", "not_json"]
        assert rpc_error(wire.request(1, "tools/list", {"cursor": "bogus"})) == -32602


def test_tools_call_results_and_errors():
    with Wire(make_server()) as wire:
        wire.handshake()
        call = lambda id, name, args: wire.request(id, "tools/call", {"name": name, "arguments": args})
        assert call(1, "echo", {"text": "hi"})["result"] == {"content": [{"type": "text", "text": "hi"}],
                                                             "isError": False}
        failed = call(2, "boom", {})["result"]
        assert failed["isError"] is True and "kaboom" in failed["content"][0]["text"]
        assert call(3, "structured", {"n": 4})["result"]["structuredContent"] == {"n": 4}
        assert call(9, "refuse", {})["result"] == {"content": [{"type": "text", "text": "not today"}],
                                                   "isError": True}
        assert rpc_error(call(4, "nope", {})) == -32602
        not_json = call(5, "not_json", {})["result"]
        assert not_json["isError"] is True and "not valid JSON" in not_json["content"][0]["text"]
        bad = call(6, "echo", {"text": 5})["result"]
        assert bad["isError"] is True and "text" in bad["content"][0]["text"]
        assert rpc_error(wire.request(7, "tools/call", {"name": "echo", "arguments": [1]})) == -32602
        assert call(8, "echo", {"text": "still alive"})["result"]["content"][0]["text"] == "still alive"


def test_invalid_arguments_before_2025_11_25_are_a_protocol_error():
    with Wire(make_server()) as wire:
        wire.handshake("2025-06-18")
        reply = wire.request(1, "tools/call", {"name": "echo", "arguments": {}})
        assert rpc_error(reply) == -32602 and "text" in reply["error"]["message"]


def test_fields_a_version_lacks_are_left_out():
    server = make_server()
    server.tool(lambda: "x", name="titled", title="A title", annotations={"readOnlyHint": True},
                output_schema={"type": "object"})
    with Wire(server) as wire:
        wire.handshake("2024-11-05")
        tool = [t for t in wire.request(1, "tools/list")["result"]["tools"] if t["name"] == "titled"][0]
        assert set(tool) == {"name", "description", "inputSchema"}
    with Wire(server) as wire:
        wire.handshake("2025-06-18")
        tool = [t for t in wire.request(1, "tools/list")["result"]["tools"] if t["name"] == "titled"][0]
        assert {"title", "annotations", "outputSchema"} <= set(tool)


def test_a_deprecated_tool_stays_callable_and_names_its_replacement():
    server = make_server()

    @server.tool(deprecated="weather_v2")
    def weather(city: str) -> str:
        """Weather."""
        return city
    with Wire(server) as wire:
        wire.handshake()
        tools = {t["name"]: t for t in wire.request(1, "tools/list")["result"]["tools"]}
        assert "weather_v2" in tools["weather"]["description"]
        reply = wire.request(2, "tools/call", {"name": "weather", "arguments": {"city": "Oslo"}})
        assert reply["result"]["content"][0]["text"] == "Oslo"


def test_resources_read_templates_and_not_found():
    with Wire(make_server()) as wire:
        wire.handshake()
        listed = wire.request(1, "resources/list")["result"]["resources"]
        assert [r["uri"] for r in listed] == ["test://a", "test://bin"]
        templates = wire.request(2, "resources/templates/list")["result"]["resourceTemplates"]
        assert [t["uriTemplate"] for t in templates] == ["test://item/{id}"]
        assert wire.request(3, "resources/read", {"uri": "test://a"})["result"]["contents"] == [
            {"uri": "test://a", "text": "A", "mimeType": "text/plain"}]
        assert wire.request(4, "resources/read", {"uri": "test://bin"})["result"]["contents"][0]["blob"] == "AAE="
        assert wire.request(5, "resources/read", {"uri": "test://item/42"})["result"]["contents"][0]["text"] == "item 42"
        missing = wire.request(6, "resources/read", {"uri": "test://nope"})
        assert rpc_error(missing) == -32002 and missing["error"]["data"] == {"uri": "test://nope"}
        assert rpc_error(wire.request(7, "resources/read", {})) == -32602


def test_subscribe_and_updated_notifications():
    server = make_server()
    with Wire(server) as wire:
        wire.handshake()
        assert wire.request(1, "resources/subscribe", {"uri": "test://a"})["result"] == {}
        server.notify_resource_updated("test://a")
        server.notify_resource_updated("test://bin")  # not subscribed: nothing
        assert wire.recv() == {"jsonrpc": "2.0", "method": "notifications/resources/updated",
                               "params": {"uri": "test://a"}}
        wire.request(2, "resources/unsubscribe", {"uri": "test://a"})
        server.notify_resource_updated("test://a")
        wire.assert_silent()
        assert rpc_error(wire.request(3, "resources/subscribe", {"uri": "test://none"})) == -32002


def test_prompts_list_and_get():
    with Wire(make_server()) as wire:
        wire.handshake()
        prompts = wire.request(1, "prompts/list")["result"]["prompts"]
        assert prompts == [{"name": "greet", "description": "Greet someone.", "arguments": [
            {"name": "name", "required": True}, {"name": "style", "required": False}]}]
        got = wire.request(2, "prompts/get", {"name": "greet", "arguments": {"name": "Ada"}})["result"]
        assert got["messages"] == [{"role": "user", "content": {"type": "text", "text": "Hello Ada (plain)"}}]
        assert rpc_error(wire.request(3, "prompts/get", {"name": "greet"})) == -32602
        assert rpc_error(wire.request(4, "prompts/get", {"name": "nope"})) == -32602


def test_list_changed_after_the_handshake_only_if_declared():
    server = make_server()
    with Wire(server) as wire:
        wire.handshake()
        server.tool(lambda: "", name="late")
        assert wire.recv()["method"] == "notifications/tools/list_changed"
        server.remove("tools", "late")
        assert wire.recv()["method"] == "notifications/tools/list_changed"
    bare = Server("bare")
    with Wire(bare) as wire:
        wire.handshake()
        bare.tool(lambda: "", name="late")  # no tools capability was declared
        wire.assert_silent()


def test_notifications_raised_before_the_handshake_wait_for_it():
    server = make_server()
    with Wire(server) as wire:
        wire.request(1, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})
        server.notify_resource_updated("x")  # nobody subscribed: dropped
        server.notify("notifications/custom", {"n": 1})
        wire.assert_silent()
        wire.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert wire.recv() == {"jsonrpc": "2.0", "method": "notifications/custom", "params": {"n": 1}}


def test_logging_set_level_and_forwarding():
    server = make_server()

    @server.tool()
    def chatty() -> str:
        logging_target = __import__("logging").getLogger("chatty")
        logging_target.addHandler(server.log_handler)
        try:
            logging_target.info("an info")
            logging_target.warning("a warning")
        finally:
            logging_target.removeHandler(server.log_handler)
        return "done"
    with Wire(server) as wire:
        wire.handshake()
        call = {"name": "chatty", "arguments": {}}
        assert wire.request(1, "tools/call", call)["result"]["content"][0]["text"] == "done"  # no level yet: silent
        assert rpc_error(wire.request(2, "logging/setLevel", {"level": "loud"})) == -32602
        assert wire.request(3, "logging/setLevel", {"level": "warning"})["result"] == {}
        wire.send(mcp_ref.make_request(4, "tools/call", call))
        log_line = wire.recv()
        assert log_line["method"] == "notifications/message"
        assert log_line["params"] == {"level": "warning", "data": "a warning", "logger": "chatty"}
        assert wire.recv()["id"] == 4


def gate_server(**options):
    """A server whose `wait` tool blocks until the test opens a gate (or it is cancelled)."""
    server = make_server(**options)
    gate = threading.Event()
    started = queue.Queue()
    outcome = queue.Queue()

    @server.tool()
    def wait(tag: str = "", ctx: Context = None) -> str:
        started.put(tag)
        cancelled = False
        while not gate.is_set():
            if ctx.cancelled.wait(0.01):
                cancelled = True
                break
        outcome.put((tag, "cancelled" if cancelled else "finished"))
        return f"done {tag}"
    return server, gate, started, outcome


def test_a_slow_tool_never_delays_ping_or_other_requests():
    server, gate, started, _ = gate_server()
    with Wire(server) as wire:
        wire.handshake()
        wire.send(mcp_ref.make_request(1, "tools/call", {"name": "wait", "arguments": {}}))
        started.get(timeout=WAIT)
        assert wire.request(2, "ping")["id"] == 2
        assert wire.request(3, "tools/call", {"name": "echo", "arguments": {"text": "x"}})["id"] == 3
        gate.set()
        assert wire.recv()["result"]["content"][0]["text"] == "done "


def test_cancellation_stops_the_handler_and_suppresses_the_answer():
    server, gate, started, outcome = gate_server()
    with Wire(server) as wire:
        wire.handshake()
        wire.send(mcp_ref.make_request(1, "tools/call", {"name": "wait", "arguments": {"tag": "c"}}))
        started.get(timeout=WAIT)
        wire.send({"jsonrpc": "2.0", "method": "notifications/cancelled",
                   "params": {"requestId": 1, "reason": "user"}})
        assert outcome.get(timeout=WAIT) == ("c", "cancelled")
        wire.assert_silent()
        # Cancelling something unknown or finished is harmless.
        wire.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}},
                  {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "zz"}},
                  {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {}})
        wire.assert_silent()


def test_a_tool_past_its_deadline_gets_a_timeout_error_and_the_server_lives():
    server, gate, started, outcome = gate_server()
    server.tool(server._registry["tools"]["wait"].fn, name="wait_briefly", timeout=0.2)
    with Wire(server) as wire:
        wire.handshake()
        reply = wire.request(1, "tools/call", {"name": "wait_briefly", "arguments": {"tag": "t"}})
        assert rpc_error(reply) == -32603 and "timed out" in reply["error"]["message"]
        assert outcome.get(timeout=WAIT) == ("t", "cancelled")  # its handler was told to stop
        assert wire.request(2, "ping")["result"] == {}


def test_duplicate_in_flight_ids_are_refused():
    server, gate, started, _ = gate_server()
    with Wire(server) as wire:
        wire.handshake()
        wire.send(mcp_ref.make_request(1, "tools/call", {"name": "wait", "arguments": {}}))
        started.get(timeout=WAIT)
        reply = wire.request(1, "tools/call", {"name": "echo", "arguments": {"text": "dup"}})
        assert rpc_error(reply) == -32600 and reply["id"] == 1
        gate.set()
        assert wire.recv()["result"]["content"][0]["text"] == "done "


def test_progress_is_increasing_only_with_a_token_and_never_after_the_answer():
    server = make_server()

    @server.tool()
    def steps(n: int, ctx: Context) -> str:
        for i in range(1, n + 1):
            ctx.report_progress(i, n, f"step {i}")
        with pytest.raises(ValueError):
            ctx.report_progress(1)
        return "ok"
    with Wire(server) as wire:
        wire.handshake()
        wire.send(mcp_ref.make_request(1, "tools/call", {"name": "steps", "arguments": {"n": 3},
                                                         "_meta": {"progressToken": "tok"}}))
        lines = [wire.recv() for _ in range(4)]
        assert [m["params"]["progress"] for m in lines[:3]] == [1, 2, 3]
        assert all(m["params"]["progressToken"] == "tok" for m in lines[:3])
        assert lines[0]["params"]["message"] == "step 1"
        assert lines[3]["result"]["content"][0]["text"] == "ok"
        assert wire.request(2, "tools/call", {"name": "steps", "arguments": {"n": 2}})["id"] == 2
    with Wire(server) as wire:
        wire.handshake("2024-11-05")  # progress had no message then
        wire.send(mcp_ref.make_request(1, "tools/call", {"name": "steps", "arguments": {"n": 1},
                                                         "_meta": {"progressToken": 5}}))
        assert "message" not in wire.recv()["params"]
        wire.recv()


def test_a_tool_can_ask_the_client_only_for_declared_capabilities():
    server = make_server()

    @server.tool()
    def roots(ctx: Context) -> dict:
        return {"roots": ctx.list_roots()}
    with Wire(server) as wire:
        wire.handshake(capabilities={"roots": {}})
        wire.send(mcp_ref.make_request(1, "tools/call", {"name": "roots", "arguments": {}}))
        asked = wire.recv()
        assert asked["method"] == "roots/list"
        wire.send({"jsonrpc": "2.0", "id": asked["id"], "result": {"roots": [{"uri": "file:///w"}]}})
        assert wire.recv()["result"]["structuredContent"] == {"roots": [{"uri": "file:///w"}]}
    with Wire(server) as wire:
        wire.handshake()
        result = wire.request(1, "tools/call", {"name": "roots", "arguments": {}})["result"]
        assert result["isError"] and "roots" in result["content"][0]["text"]


def test_eof_answers_what_was_read_runs_cleanup_and_returns():
    server, gate, started, outcome = gate_server()
    cleaned = []
    server.on_shutdown(lambda: cleaned.append("hook"))
    wire = Wire(server)
    wire.handshake()
    for i in range(20):
        wire.send(mcp_ref.make_request(i, "tools/call", {"name": "echo", "arguments": {"text": str(i)}}))
    gate.set()
    rest = wire.close()
    assert sorted(m["id"] for m in rest) == list(range(20))
    assert cleaned == ["hook"] and "EOF" in wire.why
    assert server.conn.state is State.CLOSED


def test_the_drain_deadline_abandons_stuck_requests_with_an_error():
    server, gate, started, outcome = gate_server(drain_timeout=0.2)
    wire = Wire(server)
    wire.handshake()
    wire.send(mcp_ref.make_request(1, "tools/call", {"name": "wait", "arguments": {"tag": "s"}}))
    started.get(timeout=WAIT)
    rest = wire.close()
    assert len(rest) == 1 and rpc_error(rest[0]) == -32603 and "abandoned" in rest[0]["error"]["message"]
    assert outcome.get(timeout=WAIT) == ("s", "cancelled")


def test_shutdown_from_another_thread_ends_serve():
    server = make_server()
    wire = Wire(server)
    wire.handshake()
    wire.assert_silent()
    server.shutdown("test")
    wire._serving.join(WAIT)
    assert wire.why == "test" and server.conn.state is State.CLOSED
    with pytest.raises(EOFError):
        wire.recv()  # the server closed its output
    assert wire.close() == []


def test_a_broken_output_ends_serving_with_an_error():
    c2s_r, c2s_w = os.pipe()
    s2c_r, s2c_w = os.pipe()
    os.close(s2c_r)  # nobody will ever read the server's output
    server = make_server()
    why = []
    thread = threading.Thread(target=lambda: why.append(server.serve(open(c2s_r, "rb"), open(s2c_w, "wb"))))
    thread.start()
    with open(c2s_w, "wb") as to_server:
        to_server.write(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
        to_server.flush()
        thread.join(WAIT)
    assert why and "write failed" in why[0] and server._failed


# ==== 3. Real processes: the server ===========================================

INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "test", "version": "0"}}}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def lines_of(*msgs) -> bytes:
    return b"".join(json.dumps(m).encode() + b"\n" for m in msgs)


def spawn(args, **options) -> subprocess.Popen:
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=HERE, **options)


def serve_script(tmp_path, body: str) -> list:
    """A server program: the demo server plus the tools in `body`."""
    path = tmp_path / "server.py"
    path.write_text(textwrap.dedent(f"""\
        import os, subprocess, sys, time
        sys.path.insert(0, {str(HERE)!r})
        import mcp_ref
        server = mcp_ref.demo_server()
        """) + textwrap.dedent(body) + "\nraise SystemExit(server.run())\n")
    return [PY, str(path)]


def read_replies(stream, count: int) -> list:
    return [json.loads(stream.readline()) for _ in range(count)]


def test_serve_answers_everything_read_before_eof_and_exits_0():
    calls = [{"jsonrpc": "2.0", "id": i, "method": "tools/call",
              "params": {"name": "echo", "arguments": {"text": str(i)}}} for i in range(1, 51)]
    proc = spawn([PY, "mcp_ref.py", "serve"])
    out, err = proc.communicate(lines_of(INIT, INITIALIZED, *calls) + b"{garbage\n", timeout=WAIT)
    replies = [json.loads(line) for line in out.splitlines()]
    assert proc.returncode == 0
    assert sorted(r["id"] for r in replies if "id" in r) == list(range(51))
    assert [r["error"]["code"] for r in replies if "id" not in r] == [-32700]


def test_serve_with_stdin_at_eof_from_the_start_exits_0():
    proc = spawn([PY, "mcp_ref.py", "serve"], )
    out, err = proc.communicate(b"", timeout=WAIT)
    assert proc.returncode == 0 and out == b""


@NO_SIGNALS
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("busy", [False, True])
def test_serve_ends_cleanly_on_a_signal(sig, busy):
    proc = spawn([PY, "mcp_ref.py", "serve"])
    proc.stdin.write(lines_of(INIT, INITIALIZED))
    if busy:
        proc.stdin.write(lines_of({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                   "params": {"name": "slow", "arguments": {"seconds": 1, "steps": 4},
                                              "_meta": {"progressToken": 1}}}))
    proc.stdin.flush()
    assert read_replies(proc.stdout, 1)[0]["id"] == 0
    if busy:
        assert read_replies(proc.stdout, 1)[0]["method"] == "notifications/progress"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0
    assert b"Traceback" not in err
    if busy:
        # A request already running is let finish (within the drain deadline) and answered.
        last = json.loads(out.splitlines()[-1])
        assert last["id"] == 1 and last["result"]["content"][0]["text"] == "waited 1 s"


@NO_SIGNALS
def test_sigterm_with_stdin_still_open_exits_at_once():
    proc = spawn([PY, "mcp_ref.py", "serve"])
    proc.stdin.write(lines_of(INIT, INITIALIZED))
    proc.stdin.flush()
    assert read_replies(proc.stdout, 1)[0]["id"] == 0
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(WAIT) == 0  # nothing waits for the still-open stdin
    assert proc.stdout.read() == b""
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        stream.close()


def test_stray_output_from_tools_and_their_children_never_reaches_stdout(tmp_path):
    cmd = serve_script(tmp_path, """
        @server.tool()
        def noisy() -> str:
            print("print() from a tool")
            os.write(1, b"raw write to fd 1\\n")
            subprocess.run([sys.executable, "-c", "print('a child process'); import sys; sys.stdin.read()"])
            return "quiet"
        """)
    proc = spawn(cmd)
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "noisy", "arguments": {}}}
    out, err = proc.communicate(lines_of(INIT, INITIALIZED, call), timeout=WAIT)
    replies = [json.loads(line) for line in out.splitlines()]  # every line is JSON
    assert replies[-1]["result"]["content"][0]["text"] == "quiet"
    assert b"print() from a tool" in err and b"raw write" in err and b"a child process" in err
    assert proc.returncode == 0


def test_serve_ends_when_the_client_closes_its_stdout():
    proc = spawn([PY, "mcp_ref.py", "serve"])
    proc.stdin.write(lines_of(INIT))
    proc.stdin.flush()
    proc.stdout.readline()
    proc.stdout.close()  # nobody reads any more
    proc.stdin.write(lines_of({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
    proc.stdin.flush()
    assert proc.wait(WAIT) == 1  # an error, not a deliberate end
    proc.stdin.close()
    proc.stderr.close()


# ==== 3. Real processes: the client ============================================

def fault_server(tmp_path, body: str, name="fault.py") -> list:
    """A hand-written misbehaving server: `body` runs after a helper prelude."""
    path = tmp_path / name
    path.write_text(textwrap.dedent("""\
        import json, os, signal, sys, time
        def read():
            line = sys.stdin.readline()
            return json.loads(line) if line else None
        def send(msg):
            sys.stdout.write(json.dumps(msg) + "\\n")
            sys.stdout.flush()
        def answer_initialize(version="2025-11-25"):
            msg = read()
            while msg["method"] != "initialize":  # a probing client: refuse, as a handshake-only server would
                if "id" in msg:
                    send({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "Method not found"}})
                msg = read()
            send({"jsonrpc": "2.0", "id": msg["id"], "result": {
                "protocolVersion": version, "capabilities": {"tools": {}},
                "serverInfo": {"name": "fault", "version": "0"}}})
            assert read()["method"] == "notifications/initialized"
        """) + textwrap.dedent(body))
    return [PY, str(path)]


def demo_client(**options) -> Client:
    return Client([PY, str(HERE / "mcp_ref.py"), "serve"], **options)


@pytest.mark.parametrize("era, version", [("legacy", "2025-11-25"), ("auto", "2026-07-28")])
def test_client_against_the_demo_server_end_to_end(era, version):
    with demo_client(close_grace=WAIT, era=era) as client:
        assert client.state is State.READY and client.protocol_version == version
        assert client.server_info["name"] == "mcp_ref-demo"
        assert "tools" in client.server_capabilities and client.instructions
        assert "echo" in [t["name"] for t in client.list_tools()]
        assert client.call_tool("echo", {"text": "hi"})["content"][0]["text"] == "hi"
        assert client.call_tool("fail")["isError"] is True
        if client.era == "legacy":
            assert client.ping() == {}
        else:
            with pytest.raises(MCPError, match="does not exist"):
                client.ping()  # 2026-07-28 removed ping
        client.set_logging_level("error")  # either era
        assert client.call_tool("echo", {"text": "still"})["content"][0]["text"] == "still"
        assert client.read_resource("demo://greeting/Ada")["contents"][0]["text"] == "Hello, Ada!"
        assert [r["uri"] for r in client.list_resources()] == ["demo://readme"]
        assert client.list_resource_templates()[0]["uriTemplate"] == "demo://greeting/{name}"
        assert client.get_prompt("review", {"code": "x"})["messages"][0]["role"] == "user"
        assert client.list_prompts()[0]["name"] == "review"
        with pytest.raises(RPCError) as info:
            client.call_tool("no-such-tool")
        assert info.value.code == -32602
        progress = []
        client.call_tool("slow", {"seconds": 0.05, "steps": 3},
                         on_progress=lambda p, total, message: progress.append(p))
        assert progress == [1, 2, 3]
        proc = client._proc
        closing = time.monotonic()
    # close() did not wait out a grace period: the server exits on EOF.
    assert time.monotonic() - closing < WAIT / 2
    assert proc.returncode == 0 and client.state is State.CLOSED
    client.close()  # idempotent


def test_a_missing_command_is_not_retried():
    client = Client(["/nonexistent/server"], restart=RestartPolicy(initial_delay=0.01))
    with pytest.raises(FileNotFoundError):
        client.open()


def test_client_close_from_many_threads_at_once():
    client = demo_client().open()
    threads = [threading.Thread(target=client.close) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert client.state is State.CLOSED and client._proc.returncode == 0


def test_a_server_that_ignores_eof_is_ended_by_sigterm(tmp_path):
    cmd = fault_server(tmp_path, """
        answer_initialize()
        while read() is not None:
            pass
        time.sleep(60)  # ignores EOF
        """)
    with Client(cmd, close_grace=0.3) as client:
        proc = client._proc
    # Windows: terminate() is TerminateProcess with exit code 1.
    assert proc.returncode == (1 if WINDOWS else -signal.SIGTERM)


@posix_only("a Windows process cannot ignore terminate(), so there is no later step to reach")
def test_a_server_that_ignores_sigterm_is_killed_and_reaped(tmp_path):
    cmd = fault_server(tmp_path, """
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        answer_initialize()
        while read() is not None:
            pass
        time.sleep(60)
        """)
    with Client(cmd, close_grace=0.3) as client:
        proc = client._proc
    assert proc.returncode == -signal.SIGKILL


@posix_only("Windows has no process groups to clear: a server's own children are out of reach "
            "without job objects, which the stdlib lacks")
@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="Linux only: waits on a pidfd")
def test_close_leaves_no_grandchild_in_the_process_group(tmp_path):
    cmd = fault_server(tmp_path, """
        import subprocess
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        sys.stderr.write(f"grandchild {child.pid}\\n")
        sys.stderr.flush()
        answer_initialize()
        while read() is not None:
            pass
        """)
    lines = queue.Queue()
    with Client(cmd, on_stderr=lines.put) as client:
        grandchild = int(lines.get(timeout=WAIT).split()[1])
        # A pidfd becomes readable when the process ends: an event to wait
        # on, since SIGKILL takes effect a moment after it is sent.
        pidfd = os.pidfd_open(grandchild)
    try:
        ended, _, _ = select.select([pidfd], [], [], WAIT)
    finally:
        os.close(pidfd)
    assert ended, "the grandchild outlived close()"


def test_a_server_dying_mid_request_fails_the_call_at_once(tmp_path):
    cmd = serve_script(tmp_path, """
        @server.tool()
        def die() -> str:
            sys.stderr.write("about to die\\n")
            sys.stderr.flush()
            os._exit(3)
        """)
    with Client(cmd, timeout=WAIT * 3) as client:
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as info:
            client.call_tool("die")
        assert time.monotonic() - started < WAIT  # not the call's timeout
        assert info.value.returncode == 3 and "about to die" in info.value.stderr_tail
        assert client.state is State.FAILED
        with pytest.raises(ConnectionClosed):
            client.list_tools()  # every later call fails at once too
    assert client.state is State.CLOSED


def test_a_server_that_never_answers_initialize_times_out(tmp_path):
    cmd = fault_server(tmp_path, "time.sleep(60)\n")
    client = Client(cmd, handshake_timeout=0.3, close_grace=0.3)
    with pytest.raises(RequestTimeout):
        client.open()
    assert client.state is State.CLOSED


def test_an_unsupported_version_disconnects(tmp_path):
    cmd = fault_server(tmp_path, """
        answer_initialize("1999-01-01")
        """)
    client = Client(cmd)
    with pytest.raises(UnsupportedVersion) as info:
        client.open()
    assert info.value.version == "1999-01-01" and client.state is State.CLOSED


def test_a_stderr_flood_does_not_deadlock(tmp_path):
    cmd = fault_server(tmp_path, """
        sys.stderr.write(("x" * 1023 + "\\n") * 10 * 1024)
        sys.stderr.flush()
        answer_initialize()
        while read() is not None:
            pass
        """)
    seen = []
    with Client(cmd, on_stderr=seen.append) as client:
        assert client.state is State.READY
    assert len(seen) == 10 * 1024


def test_the_client_answers_the_servers_ping_and_roots(tmp_path):
    cmd = serve_script(tmp_path, """
        @server.tool()
        def ask(ctx: mcp_ref.Context) -> dict:
            return {"ping": ctx.request("ping"), "roots": ctx.list_roots()}
        """)
    roots = [{"uri": "file:///work", "name": "work"}]
    with Client(cmd, roots=lambda: roots, era="legacy") as client:
        result = client.call_tool("ask")
    assert result["structuredContent"] == {"ping": {}, "roots": roots}
    with Client(cmd, roots=lambda: roots, era="modern") as client:
        result = client.call_tool("ask")  # a 2026-07-28 server sends no requests
    assert result["isError"] is True


def test_out_of_order_answers_are_matched_and_unknown_ids_and_garbage_are_skipped(tmp_path):
    cmd = fault_server(tmp_path, """
        print("a banner on stdout, not JSON", flush=True)
        answer_initialize()
        first, second = read(), read()
        send({"jsonrpc": "2.0", "id": 999, "result": {"stray": True}})
        for msg in (second, first):
            send({"jsonrpc": "2.0", "id": msg["id"], "result": {"content": [], "echo": msg["params"]["name"]}})
        while read() is not None:
            pass
        """)
    with Client(cmd) as client:
        results = {}
        threads = [threading.Thread(target=lambda n=n: results.update({n: client.call_tool(n)}))
                   for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
    assert results == {"a": {"content": [], "echo": "a"}, "b": {"content": [], "echo": "b"}}


def test_a_timeout_sends_cancelled_and_raises(tmp_path):
    cmd = serve_script(tmp_path, """
        @server.tool()
        def stall(ctx: mcp_ref.Context) -> str:
            if ctx.cancelled.wait(30):
                sys.stderr.write("cancelled by the client\\n")
                sys.stderr.flush()
            return "late"
        """)
    lines = queue.Queue()
    with Client(cmd, on_stderr=lines.put) as client:
        with pytest.raises(RequestTimeout):
            client.call_tool("stall", timeout=0.2)
        while lines.get(timeout=WAIT) != "cancelled by the client":
            pass
        assert client.call_tool("echo", {"text": "ok"})["content"][0]["text"] == "ok"  # a late answer was dropped


def test_the_client_sends_only_what_the_server_declared_and_roots_changes(tmp_path):
    cmd = fault_server(tmp_path, """
        answer_initialize()  # declares tools only
        while (msg := read()) is not None:
            sys.stderr.write(msg["method"] + "\\n")
            sys.stderr.flush()
        """)
    lines = queue.Queue()
    with Client(cmd, roots=lambda: [], on_stderr=lines.put) as client:
        for call in (client.list_prompts, client.list_resources, lambda: client.set_logging_level("info")):
            with pytest.raises(MCPError, match="did not declare"):
                call()
        client.roots_changed()
        assert lines.get(timeout=WAIT) == "notifications/roots/list_changed"  # nothing was sent before it


@pytest.mark.parametrize("reset", [True, False])
def test_progress_can_restart_the_clock_within_a_maximum(reset):
    with demo_client(reset_timeout_on_progress=reset) as client:
        call = lambda: client.call_tool("slow", {"seconds": 1.5, "steps": 15}, timeout=0.6,
                                        on_progress=lambda *a: None)
        if reset:
            assert call()["content"][0]["text"] == "waited 1.5 s"
        else:
            with pytest.raises(RequestTimeout):
                call()


def test_a_crash_loop_is_given_up(tmp_path):
    client = Client([PY, "-c", "import sys; sys.exit(3)"],
                    restart=RestartPolicy(max_crashes=3, window=60, initial_delay=0.01))
    with pytest.raises(CrashLoop) as info:
        client.open()
    assert info.value.crashes == 3 and isinstance(info.value.last, ConnectionClosed)
    assert client.state is State.CLOSED


def test_a_crashed_server_is_restarted_and_exit_0_is_not(tmp_path):
    cmd = serve_script(tmp_path, """
        @server.tool()
        def crash(code: int) -> str:
            os._exit(code)
        """)
    with Client(cmd, restart=RestartPolicy(initial_delay=0.01)) as client:
        first = client.pid
        with pytest.raises(ConnectionClosed):
            client.call_tool("crash", {"code": 1})
        assert client.wait_ready(WAIT)
        assert client.pid != first and client.call_tool("echo", {"text": "back"})["content"][0]["text"] == "back"
        with pytest.raises(ConnectionClosed):
            client.call_tool("crash", {"code": 0})
        assert not client.wait_ready(0.3)
        assert client.state is State.FAILED


def test_keepalive_declares_a_silent_server_dead(tmp_path):
    cmd = fault_server(tmp_path, """
        answer_initialize()
        while read() is not None:
            pass  # reads everything, answers nothing
        time.sleep(60)
        """)
    with Client(cmd, keepalive=0.05, keepalive_timeout=0.1, keepalive_misses=2,
                close_grace=0.3) as client:
        with pytest.raises(ConnectionClosed) as info:
            client.call_tool("anything", timeout=WAIT)
        assert "ping" in str(info.value)
        assert client.state is State.FAILED


def test_a_server_that_closes_stdout_but_runs_on_fails_fast(tmp_path):
    cmd = fault_server(tmp_path, """
        answer_initialize()
        read()
        os.close(1)
        sys.stdout = open(os.devnull, "w")
        time.sleep(60)
        """)
    with Client(cmd, close_grace=0.3, timeout=WAIT * 3) as client:
        with pytest.raises(ConnectionClosed) as info:
            client.call_tool("x")
        assert "stdout" in str(info.value)
        proc = client._proc
    assert proc.returncode is not None


def test_half_a_line_then_death(tmp_path):
    cmd = fault_server(tmp_path, """
        answer_initialize()
        read()
        sys.stdout.write('{"jsonrpc": "2.0", "id": 1, "res')
        sys.stdout.flush()
        os._exit(5)
        """)
    with Client(cmd) as client:
        with pytest.raises(ConnectionClosed) as info:
            client.call_tool("x")
        assert info.value.returncode == 5


def test_command_line_client_against_the_demo_server():
    proc = subprocess.run([PY, "mcp_ref.py", "client", "--call", "add", "--args", '{"a": 2, "b": 3}',
                           "--ping", "--", PY, "mcp_ref.py", "serve"],
                          cwd=HERE, capture_output=True, timeout=WAIT * 3)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["protocolVersion"] == "2026-07-28" and "echo" in summary["tools"]
    assert (summary["era"], summary["negotiation"]) == ("modern", "server/discover")
    assert summary["result"]["content"][0]["text"] == "5"
    assert {"spawn_to_ready", "call", "close"} <= set(summary["timings_ms"])
    legacy = subprocess.run([PY, "mcp_ref.py", "client", "--era", "legacy", "--ping", "--", PY, "mcp_ref.py",
                             "serve"], cwd=HERE, capture_output=True, timeout=WAIT * 3)
    summary = json.loads(legacy.stdout)
    assert (summary["era"], summary["protocolVersion"]) == ("legacy", "2025-11-25")
    assert "ping" in summary["timings_ms"]


def test_command_line_client_fails_clearly():
    proc = subprocess.run([PY, "mcp_ref.py", "client", "--timeout", "5", "--", PY, "-c", "pass"],
                          cwd=HERE, capture_output=True, timeout=WAIT * 3)
    assert proc.returncode == 1 and b"ConnectionClosed" in proc.stderr and proc.stdout == b""


# ==== 4. Hostile input: tables by category, a fuzzer, floods ===================
#
# What must hold for any bytes a client sends: the server (a) stays up and
# keeps answering ping, (b) writes only strict JSON-RPC lines, and (c)
# answers every request exactly once and never a notification or response.

SILENT = None  # no answer at all
FRAMING = [
    (b"{not json", -32700),
    (b"\xff\xfe\x00{}", -32700),
    (b'{"jsonrpc":"2.0","id":1,"method":"ping"}\x00', -32700),
    (b'{"jsonrpc":"2.0","id":1,"method":"ping"} trailing', -32700),
    (b'{"jsonrpc":"2.0","id":1,"method":"ping"}{"jsonrpc":"2.0","id":2,"method":"ping"}', -32700),
    (b'"a scalar"', -32600),
    (b"42", -32600),
    (b"null", -32600),
    (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', -32600),  # a batch, not negotiated
    (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":NaN}}', -32700),
    (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":-Infinity}}', -32700),
    (b'{"jsonrpc":"2.0","id":' + b"9" * 5000 + b',"method":"ping"}', -32700),
    (b'{"jsonrpc":"2.0","id":1e999,"method":"ping"}', -32600),
    (b"[" * 50000 + b"]" * 50000, -32700),
    (b'{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}', ("\ud800", {})),
    (b'{"jsonrpc":"2.0","id":7,"method":"ping"}\r', (7, {})),
    (b'   {"jsonrpc":"2.0","id":8,"method":"ping"}   ', (8, {})),
]
ENVELOPE = [
    ({"jsonrpc": "2.1", "id": 1, "method": "ping"}, -32600),
    ({"jsonrpc": 2.0, "id": 1, "method": "ping"}, -32600),
    ({"jsonrpc": None, "id": 1, "method": "ping"}, -32600),
    ({"jsonrpc": "2.0", "id": 1, "method": None}, -32600),
    ({"jsonrpc": "2.0", "id": 1, "method": ["ping"]}, -32600),
    ({"jsonrpc": "2.0", "id": 1, "method": ""}, -32601),
    ({"jsonrpc": "2.0", "id": {}, "method": "ping"}, -32600),
    ({"jsonrpc": "2.0", "id": False, "method": "ping"}, -32600),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": 3}, -32600),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": None}, -32600),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": [1]}, -32600),
    ({"jsonrpc": "2.0", "method": "tools/list", "params": 3}, SILENT),
    ({"jsonrpc": "2.0", "method": 5}, SILENT),
    ({"jsonrpc": "2.0", "id": 99, "result": {}}, SILENT),
    ({"jsonrpc": "2.0", "id": 99, "error": {"code": -1, "message": "m"}}, SILENT),
    ({"jsonrpc": "2.0", "id": None, "error": {"code": -1, "message": "m"}}, SILENT),
    ({"jsonrpc": "2.0", "id": 99, "result": {}, "error": {}}, SILENT),
    ({}, -32600),
]
FEATURES = [
    ("tools/call", {"name": "nope"}, -32602),
    ("tools/call", {}, -32602),
    ("tools/call", {"name": 5}, -32602),
    ("tools/call", {"name": "echo", "arguments": "x"}, -32602),
    ("tools/call", {"name": "echo", "arguments": {"text": 1}}, "isError"),
    ("tools/call", {"name": "echo", "arguments": {"text": "x", "extra": 1}}, "isError"),
    ("tools/call", {"name": "echo", "arguments": {}}, "isError"),
    ("tools/call", {"name": "echo", "arguments": {"text": "\ud800 \u2028 \x00"}}, "ok"),
    ("tools/call", {"name": "not_json"}, "isError"),  # a result that is not strict JSON: the model is told
    ("resources/read", {"uri": "test://missing"}, -32002),
    ("resources/read", {"uri": None}, -32602),
    ("prompts/get", {"name": "greet", "arguments": {}}, -32602),
    ("prompts/get", {"name": "greet", "arguments": "x"}, -32602),
    ("prompts/get", {"name": "missing"}, -32602),
    ("tools/list", {"cursor": "!!!"}, -32602),
    ("tools/list", {"cursor": 12}, -32602),
    ("resources/list", {"cursor": "bm9wZQ=="}, -32602),
    ("logging/setLevel", {"level": "verbose"}, -32602),
    ("logging/setLevel", {}, -32602),
    ("completion/complete", {}, -32601),
    ("tools/call", {"name": ["echo"]}, -32602),
    ("logging/setLevel", {"level": ["debug"]}, -32602),
    ("resources/read", {"uri": {"a": 1}}, -32602),
]


def expect(reply, expected, id=None):
    if isinstance(expected, tuple):
        assert (reply.get("id"), reply.get("result")) == expected
    elif expected == "isError":
        assert reply["result"]["isError"] is True
    elif expected == "ok":
        assert reply["result"]["isError"] is False
    else:
        assert rpc_error(reply) == expected, reply
        if id is not None:
            assert reply.get("id") == id


def test_hostile_framing_table():
    with Wire(make_server()) as wire:
        wire.handshake()
        for line, expected in FRAMING:
            wire.send(line)
            expect(wire.recv(), expected)
        wire.assert_silent()


def test_hostile_envelope_table():
    with Wire(make_server()) as wire:
        wire.handshake()
        for msg, expected in ENVELOPE:
            wire.send(msg)
            if expected is SILENT:
                wire.assert_silent()
            else:
                expect(wire.recv(), expected)


def test_hostile_features_table():
    with Wire(make_server()) as wire:
        wire.handshake()
        for i, (method, params, expected) in enumerate(FEATURES):
            expect(wire.request(i, method, params), expected, id=i)
        wire.assert_silent()


@NO_PROC
def test_a_40_mb_line_is_refused_with_bounded_memory_and_the_server_lives():
    proc = spawn([PY, "mcp_ref.py", "serve"])
    feeder = threading.Thread(target=lambda: (
        proc.stdin.write(lines_of(INIT, INITIALIZED)),
        proc.stdin.write(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo",'
                         b'"arguments":{"text":"' + b"x" * (40 << 20) + b'"}}}\n'),
        proc.stdin.write(lines_of({"jsonrpc": "2.0", "id": 2, "method": "ping"})),
        proc.stdin.flush()))
    feeder.start()
    replies = read_replies(proc.stdout, 3)
    feeder.join(WAIT)
    peak_kb = int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{proc.pid}/status").read_text()).group(1))
    proc.stdin.close()
    assert proc.wait(WAIT) == 0
    proc.stdout.close()
    proc.stderr.close()
    assert rpc_error(replies[1]) == -32600 and "id" not in replies[1]
    assert replies[2] == {"jsonrpc": "2.0", "id": 2, "result": {}}
    assert peak_kb < (mcp_ref.MAX_LINE_BYTES >> 10) + 60_000  # the line was never held whole


def test_8_mb_echo_round_trips():
    with demo_client() as client:
        text = "0123456789abcdef" * (1 << 19)
        assert client.call_tool("echo", {"text": text})["content"][0]["text"] == text


def pipelined(proc, messages: list, count: int) -> list:
    """Write `messages` from a thread while reading `count` replies (pipes must not deadlock)."""
    writer = threading.Thread(target=lambda: (proc.stdin.write(lines_of(*messages)), proc.stdin.flush()))
    writer.start()
    replies = [json.loads(proc.stdout.readline()) for _ in range(count)]
    writer.join(WAIT)
    return replies


def test_ten_thousand_pipelined_requests_are_all_answered_with_matching_ids():
    proc = spawn([PY, "mcp_ref.py", "serve"])
    calls = [{"jsonrpc": "2.0", "id": i, "method": "ping" if i % 2 else "tools/call",
              "params": {"name": "echo", "arguments": {"text": str(i)}}} for i in range(1, 10_001)]
    replies = pipelined(proc, [INIT, INITIALIZED] + calls, 10_001)
    out, err = proc.communicate(timeout=WAIT)
    assert out == b"" and proc.returncode == 0
    by_id = {r["id"]: r for r in replies}
    assert len(by_id) == 10_001
    for i in range(1, 10_001):
        assert by_id[i]["result"] == ({} if i % 2 else {"content": [{"type": "text", "text": str(i)}],
                                                         "isError": False})


def test_a_hundred_thousand_notifications_get_no_answer():
    proc = spawn([PY, "mcp_ref.py", "serve"])
    note = {"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": "none", "progress": 1}}
    replies = pipelined(proc, [INIT, INITIALIZED] + [note] * 100_000
                        + [{"jsonrpc": "2.0", "id": "last", "method": "ping"}], 2)
    out, err = proc.communicate(timeout=WAIT)
    assert [r["id"] for r in replies] == [0, "last"] and out == b""


def test_eof_right_after_a_burst_answers_everything():
    proc = spawn([PY, "mcp_ref.py", "serve"])
    calls = [{"jsonrpc": "2.0", "id": i, "method": "tools/call",
              "params": {"name": "slow", "arguments": {"seconds": 0.2, "steps": 1}}} for i in range(1, 21)]
    out, err = proc.communicate(lines_of(INIT, INITIALIZED, *calls), timeout=WAIT)
    ids = [json.loads(line)["id"] for line in out.splitlines()]
    assert sorted(ids) == list(range(21)) and proc.returncode == 0


# ---- the fuzzer ----------------------------------------------------------------

VALID = [
    {"jsonrpc": "2.0", "id": 1, "method": "ping"},
    {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
    {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}},
    {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 1, "b": 2}}},
    {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "fail", "arguments": {}}},
    {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "demo://greeting/x"}},
    {"jsonrpc": "2.0", "id": 1, "method": "prompts/get", "params": {"name": "review", "arguments": {"code": "x"}}},
    {"jsonrpc": "2.0", "id": 1, "method": "logging/setLevel", "params": {"level": "error"}},
    {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25"}},
    {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"},
    {"jsonrpc": "2.0", "id": 1, "result": {}},
]
ODD_VALUES = [None, True, False, 0, -1, 2 ** 70, 1.5, 1e308, "", "x" * 300, "\u2028", "\ud800", [], [1, [2]],
              {}, {"a": {"b": None}}, "notifications/initialized", "tools/call", "echo", "2.0"]


def mutate(rng, msg: dict) -> bytes:
    """One hostile variant of a valid message: structural or byte-level."""
    msg = json.loads(json.dumps(msg))
    for _ in range(rng.randint(1, 3)):
        target = msg
        if isinstance(msg.get("params"), dict) and rng.random() < 0.5:
            target = msg["params"]
        key = rng.choice(list(target) + ["id", "method", "params", "extra"])
        roll = rng.random()
        if roll < 0.5:
            target[key] = copy.deepcopy(rng.choice(ODD_VALUES))
        elif roll < 0.7:
            target.pop(key, None)
        else:
            target[rng.choice(["id", "jsonrpc", "method"])] = copy.deepcopy(rng.choice(ODD_VALUES))
    data = bytearray(json.dumps(msg).encode())
    if rng.random() < 0.4:
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data) + 1)
            roll = rng.random()
            if roll < 0.4 and data:
                del data[at:at + rng.randint(1, 5)]
            elif roll < 0.8:
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 3)))
            else:
                data = data[:at]
    return bytes(data).replace(b"\n", b" ")


def oracle(line: bytes) -> tuple:
    """(readable id or None, must it be answered?) for one fuzzed line."""
    try:
        msg = json.loads(line.decode("utf-8"), parse_constant=lambda c: 1 / 0)
    except (ValueError, ZeroDivisionError, RecursionError):
        return None, False
    if not isinstance(msg, dict) or not mcp_ref.is_valid_id(msg.get("id")):
        return None, False
    valid = (msg.get("jsonrpc") == "2.0" and isinstance(msg.get("method"), str)
             and isinstance(msg.get("params", {}), dict))
    return msg["id"], valid


def test_fuzz_a_live_server(tmp_path):
    import random
    rng = random.Random(20261121)
    lines, must_answer, seen_ids = [], set(), {json.dumps(0), json.dumps("still alive?")}
    while len(lines) < 3000:
        line = mutate(rng, rng.choice(VALID))
        id, valid = oracle(line)
        if id is not None and json.dumps(id) in seen_ids:
            continue  # keep readable ids unique, so "exactly once" is checkable
        if b"notifications/cancelled" in line:
            continue  # a cancel legitimately suppresses an answer
        if id is not None:
            seen_ids.add(json.dumps(id))
        if valid:
            must_answer.add(json.dumps(id))
        lines.append(line)
    proc = spawn([PY, "mcp_ref.py", "serve"])
    payload = lines_of(INIT, INITIALIZED) + b"\n".join(lines) + b"\n" + lines_of(
        {"jsonrpc": "2.0", "id": "still alive?", "method": "ping"})
    out, err = proc.communicate(payload, timeout=WAIT * 3)
    assert proc.returncode == 0, err[-2000:]
    answered = {}  # id (as JSON) -> how many answers
    for raw in out.splitlines():
        reply = json.loads(raw, parse_constant=lambda c: 1 / 0)  # (b) strict JSON only
        assert reply["jsonrpc"] == "2.0"
        if "method" in reply:  # a log message the fuzzer asked for with logging/setLevel
            assert reply["method"] == "notifications/message" and "Traceback" not in str(reply)
            continue
        assert ("result" in reply) != ("error" in reply), reply
        if "id" in reply:
            key = json.dumps(reply["id"])
            answered[key] = answered.get(key, 0) + 1
    assert json.dumps("still alive?") in answered  # (a) alive to the end
    assert all(count == 1 for count in answered.values())  # (c) never twice
    assert must_answer <= set(answered)  # (c) every valid request answered
    assert set(answered) <= seen_ids  # and no answer to an id nobody sent


def test_soak_leaves_no_process_fd_or_thread_behind():
    import soak
    figures = soak.soak([PY, str(HERE / "mcp_ref.py"), "serve"], cycles=10)
    assert (figures["processes_left"], figures["fds_leaked"], figures["threads_left"]) == (0, 0, 0)


# ==== 5. The modern era (2026-07-28) beside the handshake =====================

MODERN = "2026-07-28"


def envelope(version=MODERN, capabilities=None, **extra) -> dict:
    meta = {"io.modelcontextprotocol/protocolVersion": version,
            "io.modelcontextprotocol/clientCapabilities": capabilities or {},
            "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "0"}}
    meta.update(extra)
    return {"_meta": meta}


def modern(wire, id, method, params=None, **meta):
    return wire.request(id, method, {**(params or {}), **envelope(**meta)})


def test_server_discover_answers_without_a_handshake():
    with Wire(make_server(cache_ttl_ms=5000, cache_scope="public")) as wire:
        result = modern(wire, 1, "server/discover")["result"]
        assert result["supportedVersions"] == [MODERN]
        assert result["resultType"] == "complete"
        assert result["ttlMs"] == 5000 and result["cacheScope"] == "public"
        assert result["instructions"] == "Be nice."
        assert set(result["capabilities"]) == {"tools", "resources", "prompts", "logging"}
        info = result["_meta"]["io.modelcontextprotocol/serverInfo"]
        assert info["name"] == "test-server" and info["websiteUrl"] == "https://example.invalid"
        assert "serverInfo" not in result and "protocolVersion" not in result


def test_modern_results_carry_result_type_server_info_and_cache_hints():
    with Wire(make_server()) as wire:
        for id, method, params in [(1, "tools/list", {}), (2, "resources/list", {}),
                                   (3, "resources/templates/list", {}), (4, "prompts/list", {}),
                                   (5, "resources/read", {"uri": "test://a"})]:
            result = modern(wire, id, method, params)["result"]
            assert result["resultType"] == "complete"
            assert (result["ttlMs"], result["cacheScope"]) == (0, "private")
            assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["version"] == "1.2.3"
        for id, method, params in [(6, "tools/call", {"name": "echo", "arguments": {"text": "x"}}),
                                   (7, "prompts/get", {"name": "greet", "arguments": {"name": "A"}})]:
            result = modern(wire, id, method, params)["result"]
            assert result["resultType"] == "complete" and "ttlMs" not in result
        first = modern(wire, 8, "tools/list")["result"]["tools"]
        assert modern(wire, 9, "tools/list")["result"]["tools"] == first  # a deterministic order


def test_modern_envelope_errors():
    with Wire(make_server()) as wire:
        reply = wire.request(1, "tools/list", {"_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}})
        assert rpc_error(reply) == -32602 and "clientCapabilities" in reply["error"]["message"]
        reply = modern(wire, 2, "tools/list", version="2099-01-01")
        assert rpc_error(reply) == -32022
        assert reply["error"]["data"]["requested"] == "2099-01-01"
        # Only what a modern client can pick here, as server/discover lists.
        assert reply["error"]["data"]["supported"] == [MODERN]
        for id, method in enumerate(["ping", "initialize", "logging/setLevel", "resources/subscribe"], 3):
            assert rpc_error(modern(wire, id, method, {"level": "info", "uri": "test://a"})) == -32601
        assert rpc_error(modern(wire, 9, "resources/read", {"uri": "test://none"})) == -32602
        assert rpc_error(modern(wire, 10, "tools/list", **{"io.modelcontextprotocol/logLevel": "loud"})) == -32602
        assert rpc_error(modern(wire, 13, "tools/list", **{"io.modelcontextprotocol/logLevel": []})) == -32602
        assert rpc_error(modern(wire, 11, "completion/complete")) == -32601
        assert "result" in modern(wire, 12, "tools/list")  # the connection is fine


def test_both_eras_on_one_server_process():
    with Wire(make_server()) as wire:
        assert "result" in modern(wire, 1, "tools/list")  # modern, before any handshake
        assert rpc_error(wire.request(2, "tools/list")) == -32602  # handshake era: not initialised yet
        wire.handshake("2025-06-18")
        legacy = wire.request(3, "tools/list")["result"]
        assert "resultType" not in legacy and "ttlMs" not in legacy
        assert rpc_error(wire.request(4, "resources/read", {"uri": "test://none"})) == -32002
        assert modern(wire, 5, "tools/list")["result"]["resultType"] == "complete"
        assert rpc_error(modern(wire, 6, "resources/read", {"uri": "test://none"})) == -32602
        assert wire.request(7, "ping")["result"] == {}
        assert wire.server.conn.state is State.READY


def test_modern_logging_only_for_requests_that_ask():
    server = make_server()

    @server.tool()
    def chatty(ctx: Context) -> str:
        mcp_ref.log.warning("from a tool")
        ctx.log("error", "through the context")
        return "done"
    import logging
    logging.getLogger("mcp_ref").addHandler(server.log_handler)
    try:
        with Wire(server) as wire:
            call = {"name": "chatty", "arguments": {}}
            assert modern(wire, 1, "tools/call", call)["result"]["content"][0]["text"] == "done"
            wire.send(mcp_ref.make_request(2, "tools/call", {**call, **envelope(
                **{"io.modelcontextprotocol/logLevel": "warning"})}))
            messages = [wire.recv() for _ in range(3)]
            assert [m["params"]["data"] for m in messages[:2]] == ["from a tool", "through the context"]
            assert messages[2]["id"] == 2
    finally:
        logging.getLogger("mcp_ref").removeHandler(server.log_handler)


def test_modern_server_sends_no_requests_and_names_missing_capabilities():
    server = make_server()

    @server.tool()
    def ask(ctx: Context) -> str:
        return str(ctx.elicit("name?", {"type": "object"}))
    with Wire(server) as wire:
        reply = modern(wire, 1, "tools/call", {"name": "ask", "arguments": {}})
        assert rpc_error(reply) == -32021
        assert reply["error"]["data"] == {"requiredCapabilities": {"elicitation": {}}}
        result = modern(wire, 2, "tools/call", {"name": "ask", "arguments": {}},
                        capabilities={"elicitation": {}})["result"]
        assert result["resultType"] == "input_required"  # the question travels in the result
        wire.assert_silent()  # and no request was sent


def test_subscriptions_listen_acknowledges_filters_tags_and_ends():
    server = make_server()
    with Wire(server) as wire:
        wire.send(mcp_ref.make_request("sub", "subscriptions/listen", {
            "notifications": {"toolsListChanged": True, "resourceSubscriptions": ["test://a"]}, **envelope()}))
        ack = wire.recv()
        assert ack["method"] == "notifications/subscriptions/acknowledged"
        assert ack["params"] == {"_meta": {"io.modelcontextprotocol/subscriptionId": "sub"},
                                 "notifications": {"toolsListChanged": True, "resourceSubscriptions": ["test://a"]}}
        server.prompt(lambda: "p", name="late_prompt")  # not asked for: nothing
        server.tool(lambda: "t", name="late_tool")
        assert wire.recv() == {"jsonrpc": "2.0", "method": "notifications/tools/list_changed",
                               "params": {"_meta": {"io.modelcontextprotocol/subscriptionId": "sub"}}}
        server.notify_resource_updated("test://bin")  # not in the filter
        server.notify_resource_updated("test://a")
        assert wire.recv()["params"] == {"uri": "test://a", "_meta": {"io.modelcontextprotocol/subscriptionId": "sub"}}
        wire.send(mcp_ref.make_request(2, "subscriptions/listen", {"notifications": {"promptsListChanged": True},
                                                                   **envelope()}))
        assert wire.recv()["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == 2
        # Cancelling ends a subscription without an answer.
        wire.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "sub"}})
        wire.assert_silent()
        server.tool(lambda: "t", name="later_tool")
        wire.assert_silent()
        rest = wire.close()
    # Shutdown answers the subscriptions still open with their completion result, then cancels them.
    assert rest == [{"jsonrpc": "2.0", "id": 2, "result": {
        "_meta": {"io.modelcontextprotocol/subscriptionId": 2, "io.modelcontextprotocol/serverInfo":
                  server._server_info(MODERN)}, "resultType": "complete"}},
        {"jsonrpc": "2.0", "method": "notifications/cancelled",
         "params": {"requestId": 2, "reason": "the server is shutting down"}}]
    assert wire.why and "EOF" in wire.why


def test_client_auto_falls_back_to_initialize_on_a_handshake_only_server(tmp_path):
    cmd = fault_server(tmp_path, """
        answer_initialize()  # refuses server/discover with -32601 first
        while read() is not None:
            pass
        """)
    with Client(cmd) as client:
        assert (client.era, client.protocol_version) == ("legacy", "2025-11-25")
        assert client.negotiation.startswith("initialize, after server/discover failed")
        assert client.state is State.READY


def test_client_auto_falls_back_when_discover_gets_no_answer(tmp_path):
    cmd = fault_server(tmp_path, """
        assert read()["method"] == "server/discover"  # ignored, as some old servers do
        answer_initialize()
        while read() is not None:
            pass
        """)
    with Client(cmd, handshake_timeout=0.5) as client:
        assert client.era == "legacy" and "no answer" in client.negotiation


def test_client_modern_only_refuses_a_handshake_only_server(tmp_path):
    cmd = fault_server(tmp_path, """
        answer_initialize()
        """)
    client = Client(cmd, era="modern")
    with pytest.raises(RPCError) as info:
        client.open()
    assert info.value.code == -32601 and client.state is State.CLOSED


def test_client_gives_up_on_a_modern_server_with_no_version_in_common(tmp_path):
    cmd = fault_server(tmp_path, """
        msg = read()
        send({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32022, "message": "Unsupported protocol version",
              "data": {"supported": ["2031-01-01"], "requested": "2026-07-28"}}})
        read()
        """)
    client = Client(cmd)
    with pytest.raises(UnsupportedVersion) as info:
        client.open()  # a recognised modern error: no fallback to initialize
    assert info.value.version == ["2031-01-01"]


def test_client_modern_requests_carry_the_envelope_and_no_ping(tmp_path):
    cmd = fault_server(tmp_path, """
        msg = read()
        assert msg["method"] == "server/discover"
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {
            "supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}},
            "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "m", "version": "1"}},
            "resultType": "complete", "ttlMs": 0, "cacheScope": "private"}})
        while (msg := read()) is not None:
            # answers without resultType: a client must read that as complete
            send({"jsonrpc": "2.0", "id": msg["id"], "result": {"tools": [], "echo": msg}})
        """)
    with Client(cmd, keepalive=0.01, roots=lambda: []) as client:
        assert (client.era, client.negotiation, client.server_info) == ("modern", "server/discover",
                                                                         {"name": "m", "version": "1"})
        meta = client.request("tools/list")["echo"]["params"]["_meta"]
        assert meta == {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                        "io.modelcontextprotocol/clientCapabilities": {"roots": {"listChanged": True}},
                        "io.modelcontextprotocol/clientInfo": client.client_info}
        assert not [t for t in client._threads if t.name.endswith("keepalive")]  # no ping in 2026-07-28


# ==== 6. Regressions found in review ============================================

def test_a_shutdown_before_serve_is_not_lost():
    server = make_server()
    server.shutdown("SIGTERM")  # say, a signal between installing handlers and serving
    c2s_r, c2s_w = os.pipe()
    s2c_r, s2c_w = os.pipe()
    assert server.serve(open(c2s_r, "rb"), open(s2c_w, "wb")) == "SIGTERM"
    os.close(c2s_w)  # EOF for the reader thread, which ends
    with open(s2c_r, "rb") as out:
        assert out.read() == b""


def test_no_log_message_after_a_request_was_cancelled():
    server, gate, started, outcome = gate_server()

    @server.tool()
    def late_logger(ctx: Context) -> str:
        started.put("late")
        ctx.cancelled.wait(WAIT)
        ctx.log("error", "too late")  # after the cancel: must not be sent
        outcome.put("logged")
        return "x"
    with Wire(server) as wire:
        wire.handshake()
        wire.request(1, "logging/setLevel", {"level": "debug"})
        wire.send(mcp_ref.make_request(2, "tools/call", {"name": "late_logger", "arguments": {}}))
        started.get(timeout=WAIT)
        wire.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}})
        assert outcome.get(timeout=WAIT) == "logged"
        wire.assert_silent()


def test_a_modern_client_never_answers_requests_from_the_server(tmp_path):
    cmd = fault_server(tmp_path, """
        msg = read()
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {
            "supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}}}})
        first = read()
        send({"jsonrpc": "2.0", "id": "from-server", "method": "ping"})  # not allowed in 2026-07-28
        send({"jsonrpc": "2.0", "id": first["id"], "result": {"tools": []}})
        second = read()  # the client's next request, not an answer to our ping
        send({"jsonrpc": "2.0", "id": second["id"], "result": {"tools": [], "next": second.get("method")}})
        read()
        """)
    with Client(cmd) as client:
        assert client.list_tools() == []
        assert client.request("tools/list")["next"] == "tools/list"


def test_modern_version_must_be_a_string_and_cache_hints_must_be_valid():
    with Wire(make_server()) as wire:
        assert rpc_error(modern(wire, 1, "tools/list", version=2026)) == -32602
    for bad in ({"cache_ttl_ms": -1}, {"cache_scope": "shared"}):
        with pytest.raises(ValueError):
            make_server(**bad)


def test_configuration_is_class_attributes_overridden_by_keyword_and_typos_are_refused():
    server = Server("x", tool_timeout=5, page_size=2)
    assert (server.tool_timeout, server.page_size, Server.tool_timeout) == (5, 2, mcp_ref.TOOL_TIMEOUT)
    client = Client([PY, "-c", "pass"], timeout=7, keepalive=30)  # not opened: nothing is spawned
    assert (client.timeout, client.keepalive, Client.timeout) == (7, 30, mcp_ref.REQUEST_TIMEOUT)
    for make, typo in ((lambda **kw: Server("x", **kw), "tool_timout"),
                       (lambda **kw: Client([PY], **kw), "keep_alive"),
                       (lambda **kw: Client([PY], **kw), "close"),   # a method, not a setting
                       (lambda **kw: Client([PY], **kw), "state"),   # a property
                       (lambda **kw: Server("x", **kw), "_lock")):
        with pytest.raises(TypeError, match=typo):
            make(**{typo: 1})
    with pytest.raises(ValueError):
        Server("x", tool_timeout=0)


def test_held_notifications_are_bounded_and_subscriptions_are_limited():
    server = make_server()
    with Wire(server) as wire:
        assert "result" in modern(wire, 1, "tools/list")  # a 2026-07-28 client: no handshake, ever
        for i in range(mcp_ref.MAX_HELD + 50):
            server.notify("notifications/custom", {"n": i})
        assert len(server._held) == mcp_ref.MAX_HELD
        for i in range(mcp_ref.MAX_SUBSCRIPTIONS):
            wire.send(mcp_ref.make_request(f"s{i}", "subscriptions/listen",
                                           {"notifications": {"toolsListChanged": True}, **envelope()}))
            assert wire.recv()["method"] == "notifications/subscriptions/acknowledged"
        reply = wire.request("one too many", "subscriptions/listen",
                             {"notifications": {"toolsListChanged": True}, **envelope()})
        assert rpc_error(reply) == -32603
        rest = wire.close()
    # Each ended with its completion result, and a cancel.
    assert [m["id"] for m in rest if "result" in m] == [f"s{i}" for i in range(mcp_ref.MAX_SUBSCRIPTIONS)]
    assert len(rest) == 2 * mcp_ref.MAX_SUBSCRIPTIONS


def test_closing_a_writer_blocked_on_a_full_pipe_gives_up_after_its_timeout():
    read_end, write_end = os.pipe()
    writer = mcp_ref.LineWriter(open(write_end, "wb"))
    blocked = threading.Thread(target=writer.write, args=(b"x" * (1 << 20),))
    blocked.start()  # fills the pipe and blocks, holding the writer's lock
    with open(read_end, "rb") as reader:
        reader.read(1)  # the writer is surely inside write() now
        assert writer.close(timeout=0.2) is False
        while blocked.is_alive():
            reader.read(1 << 16)  # drain, so the blocked write finishes
            blocked.join(0.01)
        assert writer.close(timeout=WAIT) is True


def test_request_params_that_are_not_json_raise_before_anything_is_sent():
    with demo_client(era="legacy") as client:
        with pytest.raises(TypeError):
            client.call_tool("echo", {"text": {1, 2}})
        assert client.ping() == {}


def serve_in_thread(server):
    """serve() over fresh pipes in a thread: (thread, to_server, from_server, result list)."""
    c2s_r, c2s_w = os.pipe()
    s2c_r, s2c_w = os.pipe()
    result = []
    thread = threading.Thread(target=lambda: result.append(server.serve(open(c2s_r, "rb"), open(s2c_w, "wb"))))
    thread.start()
    return thread, open(c2s_w, "wb"), open(s2c_r, "rb"), result


def test_a_server_can_serve_again_and_an_old_connection_cannot_end_the_new_one():
    server = make_server()
    old, old_in, old_out, old_why = serve_in_thread(server)
    server.shutdown("first")
    server.shutdown("ignored: only the first reason counts")
    old.join(WAIT)
    assert old_why == ["first"]
    new, new_in, new_out, new_why = serve_in_thread(server)
    old_in.close()  # the first connection's reader reaches EOF only now
    new_in.write(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
    new_in.flush()
    assert json.loads(new_out.readline())["id"] == 1  # still serving
    new_in.close()
    new.join(WAIT)
    assert new_why and "EOF" in new_why[0]
    old_out.close()
    new_out.close()


def test_a_request_abandoned_while_queued_is_never_started():
    server, gate, started, outcome = gate_server(max_workers=1, drain_timeout=0.2)
    wire = Wire(server)
    wire.handshake()
    wire.send(mcp_ref.make_request(1, "tools/call", {"name": "wait", "arguments": {"tag": "first"}}),
              mcp_ref.make_request(2, "tools/call", {"name": "wait", "arguments": {"tag": "queued"}}))
    assert started.get(timeout=WAIT) == "first"
    rest = wire.close()  # EOF: the drain times out, both are abandoned
    assert sorted(r["id"] for r in rest) == [1, 2] and all(rpc_error(r) == -32603 for r in rest)
    assert started.empty()  # the queued one never ran, not even after the cleanup


def test_eof_fails_the_servers_own_requests_to_the_client_at_once():
    server = make_server(drain_timeout=WAIT * 3)

    @server.tool()
    def roots(ctx: Context) -> str:
        ctx.list_roots(timeout=WAIT * 3)  # the client will never answer
        return "unreachable"
    wire = Wire(server)
    wire.handshake(capabilities={"roots": {}})
    wire.send(mcp_ref.make_request(1, "tools/call", {"name": "roots", "arguments": {}}))
    assert wire.recv()["method"] == "roots/list"
    rest = wire.close()  # within WAIT: the pending roots/list failed at EOF
    assert rest[0]["id"] == 1 and rest[0]["result"]["isError"] is True


def test_cancelled_subscriptions_free_their_place():
    with Wire(make_server()) as wire:
        for i in range(mcp_ref.MAX_SUBSCRIPTIONS):
            wire.send(mcp_ref.make_request(i, "subscriptions/listen",
                                           {"notifications": {"toolsListChanged": True}, **envelope()}))
            assert wire.recv()["method"] == "notifications/subscriptions/acknowledged"
            wire.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": i}})
        wire.send(mcp_ref.make_request("more", "subscriptions/listen",
                                       {"notifications": {"toolsListChanged": True}, **envelope()}))
        assert wire.recv()["method"] == "notifications/subscriptions/acknowledged"


def test_a_client_may_close_itself_from_its_own_callback(tmp_path):
    cmd = serve_script(tmp_path, """
        @server.tool()
        def grow() -> str:
            server.tool(lambda: "new", name="new_tool")
            return "grown"
        """)
    closed = threading.Event()
    client = None

    def on_list_changed(kind, items):
        client.close()  # on one of the client's own worker threads
        closed.set()
    client = Client(cmd, era="legacy", on_list_changed=on_list_changed).open()
    try:
        client.call_tool("grow")
        assert closed.wait(WAIT) and client.state is State.CLOSED
    finally:
        client.close()


def test_a_client_skips_a_stray_array_from_the_server(tmp_path):
    cmd = fault_server(tmp_path, """
        print("[1, 2, 3]", flush=True)  # not a message the client may answer
        answer_initialize()             # would fail if an error reply came before initialized
        while read() is not None:
            pass
        """)
    with Client(cmd) as client:
        assert client.era == "legacy"


# ==== 7. Liveness under load and slow peers ======================================

def call(id, name, **arguments):
    return mcp_ref.make_request(id, "tools/call", {"name": name, "arguments": arguments})


def test_ping_cancel_and_answers_are_read_while_every_worker_is_busy():
    server, gate, started, outcome = gate_server(max_workers=2, max_in_flight=4)
    with Wire(server) as wire:
        wire.handshake()
        for i in range(4):
            wire.send(call(i, "wait", tag=str(i)))
        assert {started.get(timeout=WAIT), started.get(timeout=WAIT)} == {"0", "1"}
        # Two run, two wait for a worker: the reader still reads everything.
        assert wire.request("p", "ping") == {"jsonrpc": "2.0", "id": "p", "result": {}}
        wire.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 3}})
        wire.assert_silent()
        wire.send(call(8, "wait", tag="8"))  # takes the place the cancelled one left
        # Past the in-flight limit a request is refused at once, echoing its id.
        busy = wire.request(9, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
        assert busy["id"] == 9 and rpc_error(busy) == -32603 and "busy" in busy["error"]["message"]
        gate.set()
        answers = {wire.recv()["id"] for _ in range(4)}
        assert answers == {0, 1, 2, 8}
        wire.assert_silent()  # the cancelled request got no answer...
    assert "3" not in {started.get_nowait() for _ in range(started.qsize())}  # ...and never ran


def test_a_flood_of_slow_requests_is_bounded_and_every_request_answered():
    server, gate, started, _ = gate_server(max_workers=4, max_in_flight=10)
    before = threading.active_count()
    with Wire(server) as wire:
        wire.handshake()
        for i in range(200):
            wire.send(call(i, "wait"))
        refused = [wire.recv() for _ in range(190)]
        assert all(rpc_error(r) == -32603 for r in refused)
        assert {r["id"] for r in refused} == set(range(10, 200))
        for _ in range(4):
            started.get(timeout=WAIT)
        assert len(server.conn._in_flight) == 10
        # 4 workers, the reader and the deadline thread, and the test's two threads
        assert threading.active_count() - before <= 4 + 2 + 2
        assert wire.request("p", "ping")["result"] == {}
        gate.set()
        assert {wire.recv()["id"] for _ in range(10)} == set(range(10))


def test_the_pool_grows_past_the_sdk_thread_limit_and_shrinks_when_idle(monkeypatch):
    monkeypatch.setattr(mcp_ref.WorkerPool, "idle_timeout", 0.2)
    server, gate, started, _ = gate_server()
    # The official Python SDK runs sync tools on anyio's default limiter: 40 threads.
    assert mcp_ref.MAX_WORKERS >= 40
    with Wire(server) as wire:
        wire.handshake()
        for i in range(40):
            wire.send(call(i, "wait", tag=str(i)))
        assert {started.get(timeout=WAIT) for _ in range(40)} == {str(i) for i in range(40)}
        workers = list(server.conn._pool._threads)
        assert len(workers) == 40
        gate.set()
        assert {wire.recv()["id"] for _ in range(40)} == set(range(40))
        for thread in workers:
            thread.join(WAIT)
        assert not any(t.is_alive() for t in workers), "idle workers did not exit"
        assert server.conn._pool._threads == []
        assert wire.request(99, "tools/call", {"name": "echo", "arguments": {"text": "again"}})["id"] == 99


def test_a_subscription_opens_and_ends_without_a_worker():
    server, gate, started, _ = gate_server(max_workers=1)
    with Wire(server) as wire:
        wire.send(mcp_ref.make_request(1, "tools/call", {"name": "wait", "arguments": {}, **envelope()}))
        started.get(timeout=WAIT)  # the only worker is busy
        wire.send(mcp_ref.make_request("sub", "subscriptions/listen",
                                       {"notifications": {"toolsListChanged": True}, **envelope()}))
        ack = wire.recv()
        assert ack["method"] == "notifications/subscriptions/acknowledged"
        gate.set()
        assert wire.recv()["id"] == 1
        rest = wire.close()
    assert [m.get("id") for m in rest if "result" in m] == ["sub"]
    assert rest[0]["result"]["resultType"] == "complete" and rest[1]["method"] == "notifications/cancelled"


def stuck_server(tmp_path) -> list:
    return serve_script(tmp_path, """
        @server.tool()
        def stuck() -> str:
            sys.stderr.write("stuck started\\n")
            sys.stderr.flush()
            time.sleep(30)  # ignores cancellation, like most real tools
            return "too late"

        @server.on_shutdown
        def hook():
            sys.stderr.write("hook ran\\n")
            sys.stderr.flush()
        """)


def test_our_client_closes_our_server_without_a_signal_even_with_a_stuck_tool(tmp_path, caplog):
    lines = queue.Queue()
    client = Client(stuck_server(tmp_path), on_stderr=lines.put).open()
    failed = []
    caller = threading.Thread(target=lambda: failed.append(pytest.raises(MCPError, client.call_tool, "stuck")))
    caller.start()
    try:
        assert lines.get(timeout=WAIT) == "stuck started"
        proc = client._proc
        with caplog.at_level("INFO", logger="mcp_ref"):
            client.close()
    finally:
        client.close()
        caller.join(WAIT)
    assert proc.returncode == 0, "the server had to be signalled"
    assert not [r for r in caplog.records if "sending SIG" in r.getMessage()]
    assert "hook ran" in list(lines.queue)
    assert failed


def test_a_client_that_stops_reading_cannot_hold_the_server_past_its_deadline():
    proc = spawn([PY, "mcp_ref.py", "serve"])
    try:
        big = "x" * (1 << 20)
        proc.stdin.write(lines_of(INIT, INITIALIZED, *[call(i, "echo", text=big) for i in range(1, 9)]))
        proc.stdin.close()  # EOF, and we never read a byte of stdout
        proc.wait(WAIT)
        assert proc.returncode == 0
        assert b"stopped reading" in proc.stderr.read()  # what was dropped is logged
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_any_timeout_value_is_safe_on_both_sides(tmp_path):
    cmd = serve_script(tmp_path, """
        @server.tool(timeout=sys.maxsize)
        def forever_ok() -> str:
            return "fine"

        @server.tool(timeout=0.2)
        def briefly(seconds: float) -> str:
            time.sleep(seconds)
            return "slept"
        """)
    with Client(cmd, era="legacy", timeout=math.inf) as client:
        assert client.call_tool("echo", {"text": "a"})["content"][0]["text"] == "a"
        assert client.call_tool("echo", {"text": "b"}, timeout=math.inf)["content"][0]["text"] == "b"
        assert client.call_tool("forever_ok")["content"][0]["text"] == "fine"
        # The server's deadline thread survived the huge deadline: a short one still holds.
        with pytest.raises(RPCError, match="timed out"):
            client.call_tool("briefly", {"seconds": 5})
        for bad in (-1, math.nan, 0):
            with pytest.raises(ValueError):
                client.call_tool("echo", {"text": "c"}, timeout=bad)
        assert client._conn._pending == {}
    with pytest.raises(ValueError):
        Client(cmd, timeout=-5)


@posix_only("Windows pipes cannot be polled, so there the stderr thread ends at EOF only")
@NO_PROC
def test_a_detached_helper_holding_stderr_cannot_slow_the_client(tmp_path, caplog):
    pidfile = tmp_path / "helper.pid"
    cmd = fault_server(tmp_path, f"""
        # Like a browser or a language server a tool starts: its own session,
        # the server's stderr (a server on mcp_ref never hands out its stdout).
        helper = __import__("subprocess").Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                                start_new_session=True, stdout=__import__("subprocess").DEVNULL)
        open({str(pidfile)!r}, "w").write(str(helper.pid))
        answer_initialize()
        while read() is not None:
            pass
        """)
    fds_before = len(os.listdir("/proc/self/fd"))
    try:
        with caplog.at_level("WARNING", logger="mcp_ref"):
            with Client(cmd) as client:
                assert client.era == "legacy"
        # The fixture checks that the stderr thread ended; the pipe is closed too.
        assert len(os.listdir("/proc/self/fd")) == fds_before
        assert not [r for r in caplog.records if "did not end" in r.getMessage()]
    finally:
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_numbers_beyond_a_double_get_a_clear_answer_and_no_traceback(tmp_path):
    cmd = serve_script(tmp_path, """
        @server.tool()
        def passthrough(value) -> dict:
            return {"value": value}
        """)
    proc = spawn(cmd)
    big = b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"%s","arguments":%s}}\n'
    out, err = proc.communicate(lines_of(INIT, INITIALIZED)
                                + big % (1, b"add", b'{"a":1e400,"b":1}')
                                + big % (2, b"passthrough", b'{"value":[-1e400]}'), timeout=WAIT)
    replies = {m["id"]: m for m in map(json.loads, out.splitlines())}
    assert replies[1]["result"]["isError"] and "arguments.a: not a finite" in replies[1]["result"]["content"][0]["text"]
    assert replies[2]["result"]["isError"] and "JSON" in replies[2]["result"]["content"][0]["text"]
    assert b"Traceback" not in err and proc.returncode == 0
    server = make_server()
    server.tool(lambda x: x / 2, name="half")
    server._registry["tools"]["half"].definition["inputSchema"]["properties"]["x"] = {"type": "number"}
    with Wire(server) as wire:
        wire.handshake("2025-06-18")  # before 2025-11-25, a bad argument is a protocol error
        wire.send(big % (3, b"half", b'{"x":1e999}'))
        assert rpc_error(wire.recv()) == -32602


# ==== 8. Windows and POSIX alike: what differs by platform =======================

def test_protocol_lines_end_in_a_bare_newline_on_every_platform():
    proc = spawn([PY, "mcp_ref.py", "serve"])
    text = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "line one\r\nline two\n"}}}
    out, err = proc.communicate(lines_of(INIT, INITIALIZED, text), timeout=WAIT)
    # Binary mode on Windows too: no \r\n translation ever touches the stream.
    assert b"\r" not in out and out.count(b"\n") == 2 and out.endswith(b"\n")
    assert json.loads(out.splitlines()[1])["result"]["content"][0]["text"] == "line one\r\nline two\n"


@pytest.mark.skipif(not WINDOWS, reason="Windows only: Ctrl+Break is how a Windows host interrupts a console program")
def test_ctrl_break_takes_the_clean_shutdown_path_on_windows():
    proc = spawn([PY, "mcp_ref.py", "serve"], creationflags=subprocess.CREATE_NEW_PROCESS_GROUP)
    try:
        proc.stdin.write(lines_of(INIT, INITIALIZED))
        proc.stdin.flush()
        assert read_replies(proc.stdout, 1)[0]["id"] == 0
        try:
            os.kill(proc.pid, signal.CTRL_BREAK_EVENT)
        except OSError as exc:  # WinError 12 under Wine: no console shared with the server
            pytest.skip(f"no console to deliver CTRL_BREAK_EVENT through: {exc}")
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and b"Traceback" not in err  # not 0xC000013A, killed by the event


def test_the_client_shutdown_uses_only_what_the_platform_has(tmp_path, caplog):
    cmd = fault_server(tmp_path, """
        answer_initialize()
        while read() is not None:
            pass
        time.sleep(60)  # ignores EOF
        """)
    with caplog.at_level("INFO", logger="mcp_ref"):
        with Client(cmd, close_grace=0.3) as client:
            proc = client._proc
    steps = [r.getMessage().split("sending ")[1] for r in caplog.records if "sending " in r.getMessage()]
    assert steps == (["terminate()"] if WINDOWS else ["SIGTERM"])
    assert proc.returncode is not None and client.state is State.CLOSED


# ==== 9. The 2026-07-28 era complete: round trips, listen, async handlers =====

ASKING = {"elicitation": {}, "sampling": {}, "roots": {}}


def asking_server():
    """A server whose tool, prompt and resource ask the client; runs counts the handler's runs."""
    server = make_server()
    runs = []

    @server.tool()
    def interview(topic: str, ctx: Context) -> dict:
        runs.append(topic)  # before the first question: repeated every round (the documented contract)
        name = ctx.elicit(f"your name, for {topic}?", {"type": "object"})["content"]["name"]
        reply = ctx.create_message({"messages": [], "maxTokens": 5})["content"]["text"]
        roots = [r["uri"] for r in ctx.list_roots()]
        return {"name": name, "model": reply, "roots": roots}

    @server.prompt()
    def hello(ctx: Context) -> str:
        return "hello " + ctx.elicit("name?", {"type": "object"})["content"]["name"]

    @server.resource("test://whoami")
    def whoami(ctx: Context) -> str:
        return ctx.list_roots()[0]["uri"]
    return server, runs


ANSWERS = {"elicitation/create": {"action": "accept", "content": {"name": "Ada"}},
           "sampling/createMessage": {"role": "assistant", "content": {"type": "text", "text": "hi"}, "model": "m"},
           "roots/list": {"roots": [{"uri": "file:///work"}]}}


def round_trip(wire, method, params, rounds_expected, first_id=1):
    """Send `method`, answer every InputRequiredResult as a client would; the final result."""
    retry, id = dict(params), first_id
    for round in range(rounds_expected):
        result = wire.request(id, method, {**retry, **envelope(capabilities=ASKING)})["result"]
        id += 1
        if round == rounds_expected - 1:
            return result
        assert result["resultType"] == "input_required" and "ttlMs" not in result
        [(key, asked)] = result["inputRequests"].items()
        assert key == str(round + 1) and asked["method"] in ANSWERS
        # Only this round's answer: the earlier ones travel in the sealed state.
        retry = {**params, "requestState": result["requestState"],
                 "inputResponses": {key: ANSWERS[asked["method"]]}}
    raise AssertionError("unreachable")


def test_a_modern_tool_asks_through_input_required_rounds_and_gets_its_answers():
    server, runs = asking_server()
    with Wire(server) as wire:
        result = round_trip(wire, "tools/call", {"name": "interview", "arguments": {"topic": "t"}}, 4)
        assert result["resultType"] == "complete"
        assert result["structuredContent"] == {"name": "Ada", "model": "hi", "roots": ["file:///work"]}
        assert runs == ["t"] * 4  # the handler ran again from the top each round
        prompt = round_trip(wire, "prompts/get", {"name": "hello", "arguments": {}}, 2, first_id=10)
        assert prompt["messages"][0]["content"]["text"] == "hello Ada"
        read = round_trip(wire, "resources/read", {"uri": "test://whoami"}, 2, first_id=20)
        assert read["contents"][0]["text"] == "file:///work" and "ttlMs" in read
        wire.assert_silent()  # no request ever went to the client


def test_request_state_is_sealed_bound_and_expires(monkeypatch):
    server, runs = asking_server()
    call = {"name": "interview", "arguments": {"topic": "t"}}
    with Wire(server) as wire:
        first = modern(wire, 1, "tools/call", call, capabilities=ASKING)["result"]
        state = first["requestState"]
        answered = {"inputResponses": {"1": ANSWERS["elicitation/create"]}}

        def retry(id, state, params=call):
            return modern(wire, id, "tools/call", {**params, **answered, "requestState": state}, capabilities=ASKING)
        assert retry(2, state)["result"]["inputRequests"]["2"]["method"] == "sampling/createMessage"
        payload, mac = state.rsplit(".", 1)
        tampered = payload + "." + ("0" if mac[0] != "0" else "1") + mac[1:]
        assert rpc_error(reply := retry(3, tampered)) == -32602 and "verification" in reply["error"]["message"]
        other = {"name": "interview", "arguments": {"topic": "elsewhere"}}
        assert "different request" in retry(4, state, other)["error"]["message"]
        assert rpc_error(retry(5, "not a state")) == -32602
        # A state another server process sealed (a restart): asked again, from the start.
        again = retry(6, Server("other").round_trips.seal("tools/call", call, {}, "1"))["result"]
        assert again["resultType"] == "input_required" and list(again["inputRequests"]) == ["1"]
        monkeypatch.setattr(mcp_ref, "REQUEST_STATE_TTL", -1.0)
        stale = modern(wire, 7, "tools/call", call, capabilities=ASKING)["result"]["requestState"]
        assert "expired" in retry(8, stale)["error"]["message"]


def test_only_declared_capabilities_are_asked_and_only_where_the_spec_allows():
    server, _ = asking_server()

    @server.tool()
    def roots_only(ctx: Context) -> str:
        return str(ctx.list_roots())
    with Wire(server) as wire:
        reply = modern(wire, 1, "tools/call", {"name": "interview", "arguments": {"topic": "t"}},
                       capabilities={"roots": {}})
        assert rpc_error(reply) == -32021 and reply["error"]["data"] == {"requiredCapabilities": {"elicitation": {}}}
        # A task-tagged request is processed normally by a server without tasks.
        tagged = modern(wire, 2, "tools/call", {"name": "echo", "arguments": {"text": "x"}, "task": {"ttl": 1000}})
        assert tagged["result"]["resultType"] == "complete" and tagged["result"]["content"][0]["text"] == "x"


def test_teardown_sends_the_completion_result_and_a_cancel_for_each_subscription():
    with Wire(make_server()) as wire:
        wire.send(mcp_ref.make_request("s", "subscriptions/listen",
                                       {"notifications": {"toolsListChanged": True}, **envelope()}))
        assert wire.recv()["method"] == "notifications/subscriptions/acknowledged"
        rest = wire.close()
    assert [m.get("id", m.get("method")) for m in rest] == ["s", "notifications/cancelled"]
    assert rest[1]["params"]["requestId"] == "s"


def asking_script(tmp_path) -> list:
    return serve_script(tmp_path, """
        from mcp_ref import Context

        @server.tool()
        def interview(ctx: Context) -> dict:
            name = ctx.elicit("name?", {"type": "object"})["content"]["name"]
            model = ctx.create_message({"messages": [], "maxTokens": 5})["content"]["text"]
            return {"name": name, "model": model, "roots": [r["uri"] for r in ctx.list_roots()]}

        @server.tool()
        def grow(name: str) -> str:
            server.tool(lambda: "new", name=name)
            return "grown"

        @server.tool()
        def crash() -> str:
            os._exit(3)
        """)


def asking_client(cmd, **options) -> Client:
    return Client(cmd, roots=lambda: [{"uri": "file:///w", "name": "w"}],
                  sampling=lambda params: ANSWERS["sampling/createMessage"],
                  elicitation=lambda params: ANSWERS["elicitation/create"], **options)


@pytest.mark.parametrize("era", ["auto", "legacy"])
def test_our_client_answers_our_servers_questions_in_the_default_era_too(tmp_path, era):
    with asking_client(asking_script(tmp_path), era=era) as client:
        assert client.era == ("modern" if era == "auto" else "legacy")
        result = client.call_tool("interview")
        assert result["structuredContent"] == {"name": "Ada", "model": "hi", "roots": ["file:///w"]}


def test_a_question_the_host_cannot_answer_fails_the_call_clearly(tmp_path):
    with Client(asking_script(tmp_path), roots=lambda: []) as client:  # roots only
        assert client.era == "modern"
        with pytest.raises(RPCError) as info:  # our server refuses to ask what was not declared
            client.call_tool("interview")
        assert info.value.code == -32021


def modern_fault_server(tmp_path, body: str) -> list:
    """A hand-written 2026-07-28 server: answers server/discover, then runs `body`."""
    return fault_server(tmp_path, textwrap.dedent("""\
        def result(msg, **fields):
            send({"jsonrpc": "2.0", "id": msg["id"], "result": fields})
        msg = read()
        result(msg, supportedVersions=["2026-07-28"], capabilities={"tools": {}}, resultType="complete")
        """) + textwrap.dedent(body))


def test_the_client_retries_a_state_only_round_at_once_and_refuses_what_it_cannot_serve(tmp_path):
    cmd = modern_fault_server(tmp_path, """
        msg = read()
        result(msg, resultType="input_required", requestState="opaque-1")
        msg = read()
        assert msg["params"]["requestState"] == "opaque-1" and "inputResponses" not in msg["params"]
        result(msg, resultType="input_required", requestState="opaque-2",
               inputRequests={"q": {"method": "sampling/createMessage", "params": {}}})
        while read() is not None:
            pass
        """)
    with Client(cmd, roots=lambda: []) as client:
        with pytest.raises(MCPError, match="asked for 'sampling/createMessage', which this client has no handler"):
            client.call_tool("anything")


def test_listen_hears_list_changes_and_is_opened_again_after_a_restart(tmp_path):
    changed = queue.Queue()
    client = asking_client(asking_script(tmp_path), restart=RestartPolicy(initial_delay=0.01),
                           on_list_changed=lambda kind, items: changed.put((kind, [t["name"] for t in items])))
    with client:
        assert client.listen(prompts=False, resources=False) == {"toolsListChanged": True}
        client.call_tool("grow", {"name": "first"})
        kind, names = changed.get(timeout=WAIT)
        assert kind == "tools" and "first" in names
        pid = client.pid
        with pytest.raises(ConnectionClosed):
            client.call_tool("crash")
        assert client.wait_ready(WAIT)
        assert client.pid != pid
        client.call_tool("grow", {"name": "second"})  # heard on the stream opened after the restart
        assert "second" in changed.get(timeout=WAIT)[1]
        with pytest.raises(MCPError):
            client.listen()  # one stream per client


def async_server():
    server = make_server(max_workers=1)
    seen = queue.Queue()

    @server.tool(timeout=30)
    async def snooze(seconds: float, ctx: Context) -> str:
        import asyncio
        ctx.report_progress(1, 2)
        assert Context.current() is ctx
        seen.put(("started", ctx.id))
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            seen.put(("cancelled", ctx.id))
            raise
        return f"slept {seconds}"

    @server.tool(timeout=0.2)
    async def too_long() -> str:
        import asyncio
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.put(("deadline", None))
            raise
        return "never"

    @server.prompt()
    async def later() -> str:
        return "an async prompt"

    @server.resource("test://async")
    async def async_resource() -> str:
        return "an async resource"
    return server, seen


def test_async_handlers_run_without_holding_a_worker_and_cancel_cleanly():
    server, seen = async_server()
    with Wire(server) as wire:
        wire.handshake()
        # One worker, twenty calls at once: they all sleep together.
        for i in range(20):
            wire.send(call(i, "snooze", seconds=0.3))
        answers = {}
        while len(answers) < 20:
            msg = wire.recv()
            if "id" in msg:
                answers[msg["id"]] = msg["result"]["content"][0]["text"]
        assert set(answers.values()) == {"slept 0.3"}
        assert {seen.get(timeout=WAIT) for _ in range(20)} == {("started", i) for i in range(20)}
        wire.send(call("c", "snooze", seconds=30))
        assert seen.get(timeout=WAIT) == ("started", "c")
        wire.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "c"}})
        assert seen.get(timeout=WAIT) == ("cancelled", "c")
        reply = wire.request("d", "tools/call", {"name": "too_long", "arguments": {}})
        assert rpc_error(reply) == -32603 and "timed out" in reply["error"]["message"]
        assert seen.get(timeout=WAIT) == ("deadline", None)
        assert wire.request("p", "prompts/get", {"name": "later"})["result"]["messages"][0]["content"]["text"] \
            == "an async prompt"
        assert wire.request("r", "resources/read", {"uri": "test://async"})["result"]["contents"][0]["text"] \
            == "an async resource"
        wire.assert_silent()


def test_a_server_without_async_handlers_never_imports_asyncio(tmp_path):
    cmd = serve_script(tmp_path, """
        @server.on_shutdown
        def report():
            sys.stderr.write(f"asyncio loaded: {'asyncio' in sys.modules}\\n")
        """)
    proc = spawn(cmd)
    out, err = proc.communicate(lines_of(INIT, INITIALIZED, call(1, "echo", text="x")), timeout=WAIT)
    assert b"asyncio loaded: False" in err and proc.returncode == 0


# ==== 10. Schemas you can trust: hints, explicit schemas, one validator, completions

class Address(typing.TypedDict):
    street: str
    city: typing.Annotated[str, "the city's name"]


@__import__("dataclasses").dataclass
class Forecast:
    city: str
    days: list[float]
    note: str = ""


def test_nested_schemas_and_descriptions_from_hints():
    def f(where: Address, temps: dict[str, float], pair: tuple[int, str], tags: list[list[int]],
          days: typing.Annotated[int, "how many days"] = 3) -> Forecast:
        pass
    schema, _ = mcp_ref.signature_schema(f)
    props = schema["properties"]
    assert props["where"] == {"type": "object", "properties": {
        "street": {"type": "string"}, "city": {"type": "string", "description": "the city's name"}},
        "required": ["street", "city"]}
    assert props["temps"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert props["pair"] == {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],
                             "minItems": 2, "maxItems": 2}
    assert props["tags"] == {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}
    assert props["days"] == {"type": "integer", "description": "how many days", "default": 3}
    assert mcp_ref.schema_for(Forecast) == {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "array", "items": {"type": "number"}},
        "note": {"type": "string"}}, "required": ["city", "days"]}


@pytest.mark.parametrize("schema, value, problem", [
    ({"type": "string", "minLength": 2, "maxLength": 3, "pattern": "^a"}, "ab", None),
    ({"type": "string", "minLength": 2}, "a", "v: shorter than 2 characters"),
    ({"type": "string", "pattern": "^a"}, "ba", "v: does not match '^a'"),
    ({"type": "number", "minimum": 1, "exclusiveMaximum": 5}, 5, "v: 5 breaks exclusiveMaximum 5"),
    ({"const": True}, 1, "v: must be true"),
    ({"enum": [1, "a"]}, 1.0, None),
    ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, [], "v: matches none of anyOf (the first: expected string)"),
    ({"oneOf": [{"type": "number"}, {"type": "integer"}]}, 2, "v: matches 2 of oneOf, not exactly one"),
    ({"allOf": [{"type": "object"}, {"required": ["a"]}]}, {}, "v.a: required"),
    ({"type": "array", "items": {"type": "integer"}, "maxItems": 2}, [1, "x"], "v[1]: expected integer"),
    ({"$defs": {"P": {"type": "object", "properties": {"x": {"$ref": "#/$defs/N"}}}, "N": {"type": "number"}},
      "$ref": "#/$defs/P"}, {"x": "no"}, "v.x: expected number"),
    ({"$ref": "#/$defs/missing"}, 1, "v: cannot resolve $ref '#/$defs/missing'"),
    ({"type": "object", "additionalProperties": {"type": "string"}}, {"a": 1}, "v.a: expected string"),
    ({"x-unknown-keyword": 1, "type": "integer"}, 1, None),
    (False, 1, "v: not allowed"),
])
def test_the_validator_names_the_path_of_the_first_problem(schema, value, problem):
    assert mcp_ref.validate(schema, value, "v") == problem


EXPLICIT = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
            "$defs": {"point": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                                "required": ["x", "y"], "additionalProperties": False}},
            "properties": {"route": {"type": "array", "items": {"$ref": "#/$defs/point"}, "minItems": 1}},
            "required": ["route"]}


def schema_server():
    server = make_server()

    @server.tool(input_schema=EXPLICIT, output_schema={"type": "object", "properties": {
        "length": {"type": "number"}}, "required": ["length"]})
    def measure(route: list) -> dict:
        return {"length": float(len(route))}

    @server.tool(output_schema={"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    def liar(kind: str) -> typing.Any:
        return {"n": "not a number"} if kind == "wrong" else "just text"

    @server.tool()
    def forecast(city: str) -> Forecast:
        return Forecast(city, [21.5, 19.0])

    @server.prompt()
    def brief(topic: typing.Annotated[str, "what the brief is about"], tone: str = "plain") -> str:
        return f"a {tone} brief on {topic}"

    @server.completion("brief", "tone")
    def tones(value: str, context: dict) -> list:
        return [t for t in ("plain", "playful", "precise") if t.startswith(value)] + \
            ([f"about {context['topic']}"] if "topic" in context else [])

    @server.completion("test://item/{id}", "id")
    def item_ids(value: str, context: dict) -> list:
        return [f"{value}{i}" for i in range(250)]
    return server


def test_explicit_schemas_pass_through_byte_for_byte_and_nested_errors_name_their_path():
    with Wire(schema_server()) as wire:
        wire.handshake()
        tools = {t["name"]: t for t in wire.request(1, "tools/list")["result"]["tools"]}
        assert json.dumps(tools["measure"]["inputSchema"]) == json.dumps(EXPLICIT)
        ok = wire.request(2, "tools/call", {"name": "measure", "arguments": {"route": [{"x": 1, "y": 2}]}})
        assert ok["result"]["structuredContent"] == {"length": 1.0}
        bad = wire.request(3, "tools/call", {"name": "measure", "arguments": {"route": [{"x": 1, "y": "2"}]}})
        assert bad["result"]["isError"] and "arguments.route[0].y: expected number" in bad["result"]["content"][0]["text"]
        assert tools["forecast"]["outputSchema"] == mcp_ref.schema_for(Forecast)
        structured = wire.request(4, "tools/call", {"name": "forecast", "arguments": {"city": "Oslo"}})["result"]
        assert structured["structuredContent"] == {"city": "Oslo", "days": [21.5, 19.0], "note": ""}
        for id, kind, expected in ((5, "wrong", "structuredContent.n: expected integer"),
                                   (6, "text", "structuredContent: expected an object")):
            result = wire.request(id, "tools/call", {"name": "liar", "arguments": {"kind": kind}})["result"]
            assert result["isError"] and "structuredContent" not in result
            assert expected in result["content"][0]["text"]


def test_prompt_arguments_are_described_strings():
    with Wire(schema_server()) as wire:
        wire.handshake()
        [brief] = [p for p in wire.request(1, "prompts/list")["result"]["prompts"] if p["name"] == "brief"]
        assert brief["arguments"] == [{"name": "topic", "required": True, "description": "what the brief is about"},
                                      {"name": "tone", "required": False}]


def test_prompt_arguments_must_be_strings():
    server = Server("x")
    with pytest.raises(ValueError, match="prompt arguments are strings"):
        @server.prompt()
        def bad(count: int) -> str:
            return ""


@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_completions_for_prompts_and_templates_in_both_eras(era):
    with Wire(schema_server()) as wire:
        if era == "legacy":
            assert wire.handshake()["capabilities"]["completions"] == {}

            def ask(id, params):
                return wire.request(id, "completion/complete", params)
        else:
            def ask(id, params):
                return modern(wire, id, "completion/complete", params)
        tone = ask(1, {"ref": {"type": "ref/prompt", "name": "brief"}, "argument": {"name": "tone", "value": "p"},
                       "context": {"arguments": {"topic": "tides"}}})["result"]["completion"]
        assert tone == {"values": ["plain", "playful", "precise", "about tides"], "total": 4, "hasMore": False}
        many = ask(2, {"ref": {"type": "ref/resource", "uri": "test://item/{id}"},
                       "argument": {"name": "id", "value": "n"}})["result"]["completion"]
        assert len(many["values"]) == 100 and many["total"] == 250 and many["hasMore"] is True
        none = ask(3, {"ref": {"type": "ref/prompt", "name": "greet"}, "argument": {"name": "name", "value": ""}})
        assert none["result"]["completion"]["values"] == []
        for id, ref in ((4, {"type": "ref/prompt", "name": "nope"}), (5, {"type": "ref/resource", "uri": "test://a"}),
                        (6, {"type": "ref/other"})):
            assert rpc_error(ask(id, {"ref": ref, "argument": {"name": "x", "value": ""}})) == -32602
    with Wire(make_server()) as wire:  # no completer registered: no capability, no method
        assert "completions" not in wire.handshake()["capabilities"]


def test_the_client_checks_what_it_interprets(tmp_path):
    cmd = fault_server(tmp_path, """
        answer_initialize()
        msg = read()
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {"tools": "not-a-list"}})
        msg = read()
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {"tools": [{"name": "t", "inputSchema": {"type": "object"},
              "outputSchema": {"type": "object", "properties": {"n": {"type": "integer"}}}}]}})
        msg = read()
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {"content": [], "structuredContent": {"n": "x"}}})
        while read() is not None:
            pass
        """, name="liar.py")
    with Client(cmd, name="liar") as client:
        with pytest.raises(MCPError, match="liar answered tools/list with a malformed result: result.tools: expected array"):
            client.list_tools()
        assert client.list_tools()[0]["name"] == "t"
        with pytest.raises(MCPError, match="tool t broke its outputSchema: structuredContent.n: expected integer"):
            client.call_tool("t")


def test_client_complete_against_our_server(tmp_path):
    cmd = serve_script(tmp_path, """
        @server.completion("review", "focus")
        def focus(value, context):
            return [f for f in ("correctness", "clarity", "speed") if f.startswith(value)]
        """)
    for era in ("auto", "legacy"):
        with Client(cmd, era=era) as client:
            assert client.complete({"type": "ref/prompt", "name": "review"}, {"name": "focus", "value": "c"},
                                   context={"code": "x"}) == {"values": ["correctness", "clarity"], "total": 2,
                                                              "hasMore": False}


# ==== 11. Watching a connection: the trace hook, the tour =======================

def traced():
    events = []

    def hook(kind, detail, at):
        assert isinstance(at, float)
        if kind == "state":
            events.append(("state", detail[0].value, detail[1].value, detail[2].value))
        else:
            events.append((kind, detail.get("method") or ("result" if "result" in detail else "error"),
                           detail.get("id")))
    return events, hook


def test_the_trace_hook_sees_every_message_and_transition_in_order():
    events, hook = traced()
    server = make_server(trace=hook)
    with Wire(server) as wire:
        wire.handshake()
        wire.request(1, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
        modern(wire, 2, "server/discover")
    assert events == [
        ("state", "new", "open", "connected"),
        ("recv", "initialize", 0), ("state", "connected", "initialize", "initializing"), ("send", "result", 0),
        ("recv", "notifications/initialized", None), ("state", "initializing", "initialized", "ready"),
        ("recv", "tools/call", 1), ("send", "result", 1),
        ("recv", "server/discover", 2), ("send", "result", 2),  # the modern era changes no state
        ("state", "ready", "close", "closing"), ("state", "closing", "finish", "closed")]


@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_the_clients_trace_follows_the_state_table(era):
    events, hook = traced()
    with demo_client(era=era, trace=hook) as client:
        client.call_tool("echo", {"text": "x"})
    states = [e[1:] for e in events if e[0] == "state"]
    assert all(mcp_ref.TRANSITIONS[mcp_ref.State(a), mcp_ref.Event(b)] is mcp_ref.State(to) for a, b, to in states)
    expected = (["new", "connected", "initializing", "ready", "closing", "closed"] if era == "legacy"
                else ["new", "connected", "ready", "closing", "closed"])
    assert [states[0][0]] + [to for _, _, to in states] == expected
    first = ["initialize", "notifications/initialized"] if era == "legacy" else ["server/discover"]
    sends = [e for e in events if e[0] == "send"]
    assert [e[1] for e in sends][:len(first)] == first
    call = [e for e in sends if e[1] == "tools/call"][0]
    assert ("recv", "result", call[2]) in events  # every answer the client read is traced too


def test_a_raising_trace_hook_is_dropped_and_cannot_break_the_connection(caplog):
    calls = []

    def hook(kind, detail, at):
        calls.append(kind)
        raise RuntimeError("a buggy hook")
    server = make_server(trace=hook)
    with caplog.at_level("ERROR", logger="mcp_ref"):
        with Wire(server) as wire:
            wire.handshake()
            assert wire.request(1, "tools/call", {"name": "echo", "arguments": {"text": "x"}})["id"] == 1
    assert calls == ["state"]  # called once, then dropped
    assert len([r for r in caplog.records if "trace hook failed" in r.getMessage()]) == 1


def test_the_command_line_traces_to_stderr():
    proc = subprocess.run([PY, "mcp_ref.py", "client", "--trace", "--era", "legacy", "--",
                           PY, "mcp_ref.py", "serve"], capture_output=True, cwd=HERE, timeout=WAIT)
    lines = [json.loads(line[len("trace "):]) for line in proc.stderr.decode().splitlines()
             if line.startswith("trace ")]
    assert proc.returncode == 0 and lines[0] == {**lines[0], "side": "client", "kind": "state", "to": "connected"}
    assert [l["message"]["method"] for l in lines if l["kind"] == "send"][:2] == ["initialize",
                                                                                  "notifications/initialized"]


def without_timings(svg: str) -> str:
    return re.sub(r'<text class="time"[^>]*>[^<]*</text>', "", svg)


@pytest.mark.parametrize("args", [[], ["--era", "modern"], ["--crash"]])
def test_the_tour_follows_the_state_table_and_draws_the_committed_picture(tmp_path, args):
    svg = tmp_path / "tour.svg"
    proc = subprocess.run([PY, "examples/tour.py", *args, "--svg", str(svg)], capture_output=True, cwd=HERE,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    transcript = proc.stdout.decode()
    moves = re.findall(r"state  (\w+) --(\w+)--> (\w+)", transcript)
    assert moves, transcript
    for before, event, after in moves:
        assert mcp_ref.TRANSITIONS[mcp_ref.State(before), mcp_ref.Event(event)] is mcp_ref.State(after)
    if "--crash" not in args:
        assert "exit code 0" in transcript  # the polite end: stdin EOF, no signal
    if not args:  # the picture in the README is what the tour draws today
        assert without_timings(svg.read_text()) == without_timings((HERE / "examples" / "tour.svg").read_text())


@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_run_forwards_the_root_loggers_records_once_a_client_chooses_a_level(tmp_path, caplog, era):
    cmd = serve_script(tmp_path, """
        import logging

        @server.tool()
        def chatty() -> str:
            logging.getLogger("chatty").warning("hello from a tool")
            return "ok"
        """)
    with caplog.at_level("INFO", logger="mcp_ref.server.chatty-server"):
        with Client(cmd, era=era, name="chatty-server") as client:
            client.call_tool("chatty")  # no level chosen yet: nothing forwarded
            client.set_logging_level("info")
            client.call_tool("chatty")
    # notifications/message arrives at its own level; the server's stderr lines come at INFO.
    forwarded = [r.getMessage() for r in caplog.records if r.name == "mcp_ref.server.chatty-server"
                 and r.levelname == "WARNING"]
    assert forwarded == ["hello from a tool"]
