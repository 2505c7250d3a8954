"""mcp_ref: the Model Context Protocol connection lifecycle over stdio, in one file.

An MCP host (an IDE, a chat app, an agent) spawns an MCP server as a child
process and speaks JSON-RPC 2.0 to it, one JSON object per line, over the
child's stdin and stdout.  This module is a complete, dependency-free
reference for that conversation: the handshake (or, since 2026-07-28,
server/discover), version negotiation, ping, timeouts, cancellation,
progress, a clean stdout, and a shutdown that leaves no process, thread or
pipe behind.  Copy it into a project, or read it top to bottom to learn how
an MCP connection lives and dies.

It is not an SDK: no HTTP transport, no asyncio API, no schema library (a
small validator covers what tool schemas use).  Handlers may still be
``async def``: they run on an event loop of their own.

Quick start, a server (run it with ``python3 server.py``)::

    from mcp_ref import Server

    server = Server("demo", version="1.0.0")

    @server.tool()
    def add(a: int, b: int) -> int:
        "Add two numbers."
        return a + b

    if __name__ == "__main__":
        raise SystemExit(server.run())

and a host that uses it::

    from mcp_ref import Client

    with Client(["python3", "server.py"], timeout=30) as client:
        print(client.server_info, [t["name"] for t in client.list_tools()])
        print(client.call_tool("add", {"a": 2, "b": 3}))

The lifecycle, as both sides see it (see ``State`` for the exact table)::

      NEW --open--> CONNECTED --initialize--> INITIALIZING --initialized--> READY
                      |  |                          |                        ^  |
                      |  +--discover (a client, 2026-07-28: no handshake)----+  |
                      |                             |                           |
                      +------------close------------+------------close----------+
                      |                                                         v
                      |   any error: --fail--> FAILED --finish--+            CLOSING
                      |                                         v               |
                      +------------------------------------> CLOSED <--finish---+

Two eras.  Up to 2025-11-25 a connection starts with the initialize
handshake; 2026-07-28 dropped it: every request carries its protocol version
and the client's capabilities in params._meta, and a client learns about the
server from server/discover.  A Server answers both, request by request (see
``Server.route_request``); a Client probes server/discover and falls back
to initialize (see ``Client._handshake``).

Threads.  A server has a reader thread (parses lines, answers ``ping`` and
cancellations at once, applies the handshake in arrival order; it never
waits for a worker), a pool of worker threads that run requests (started on
demand, gone when idle), a deadline thread that answers requests whose
handler ran out of time, and, once an ``async def`` handler has run, an
asyncio event loop thread.  The thread that called ``Server.run()`` waits
for the end and runs the shutdown.  A client has the same reader, pool and
deadline threads, plus the two a ServerProcess owns (one draining the
server's stderr, one waiting for it to exit), and optional keepalive and
listen threads.

Locks nest in one order: a Server's or a Client's, then a Context's, then a
Connection's, then the line writer's.  Nothing takes them the other way
round, so the threads cannot deadlock one another.  Callbacks a host passes
in run on the thread that received what they report: on_progress and
on_notification on the reader, on_stderr on the stderr thread.  Keep them
short, because that thread reads nothing else while they run.

Errors say who broke the rules.  StateError is a bug in the calling code;
RPCError and ConnectionClosed come from the peer; RequestTimeout comes from
the clock.  Library code raises them and never exits the process: only
``main()`` and ``Server.run()`` turn an outcome into an exit code.

Spec revisions spoken: 2024-11-05, 2025-03-26, 2025-06-18 and 2025-11-25
(the handshake era) and 2026-07-28 (the modern, stateless era, with its
input_required round trips and subscriptions/listen on both sides).
SPEC_NOTES.md names every rule implemented here, the function that
implements it and the test that checks it, and the policy chosen where the
specification is silent.

Reading guide.  The sections in order, after a small lazy logger.  The
first nine are the lifecycle core, about 2,600 lines up to Server's
registration part, and can be read alone:

  The protocol as data   versions, ADDED_IN (what changed when), METHODS
                         (every method a server serves, with its facts),
                         error codes, limits and timeouts
  Errors                 MCPError and its children: who broke which rule
  The state machine      State, Event, TRANSITIONS: the lifecycle as a table
  JSON-RPC messages      build and classify
  Wire format            LineReader, LineWriter: one message per line
  The connection core    Context, WorkerPool, Connection, in the order a
                         request travels: read, route, admit, run, answer
  A clean stdout         protected_stdio
  The two eras           Era: the handshake's session, or one modern request
  Server                 route, handshake, serve and shut down, talk to the
                         client; then (skippable) registration and handlers
  ---------------------- the lifecycle core ends here -----------------------
  Describing functions   schemas from type hints, and the validator
  Results and pages      tool results, cursors, URI templates
  Forwarding logs        a logging.Handler that reaches the client
  Round trips            2026-07-28 input_required, sealed requestState
  Client                 spawn, negotiate, call, listen, restart, close
  The command line       demo_server, main

MIT licence; see LICENSE.
"""

__version__ = "0.1.0"

__all__ = [
    "Client", "ConnectionClosed", "Context", "CrashLoop", "MCPError",
    "RPCError", "RequestTimeout", "RestartPolicy", "Server", "State",
    "StateError", "ToolError", "UnsupportedVersion", "main",
]

import collections
import contextvars
import enum
import gc
import itertools
import json
import math
import os
import queue
import re
import select
import signal
import stat
import sys
import threading
import time
import types
# Imported where they are first needed, because a server pays for every
# import at every start (python3 -X importtime shows the bill):
#   subprocess   only a Client spawns processes            (Client._spawn)
#   base64       cursors and binary resources, not startup (page, Server._read_resource)
#   random       restart jitter                            (RestartPolicy.delay)
#   typing       only for hints that need it, and a server
#                that uses them has imported it already    (schema_for, signature_schema)
#   argparse     the command line, not `serve`             (main)
#   logging      only once a record can be seen            (_LazyLog, Server.log_handler)
#   asyncio      only for async def handlers               (EventLoop)
#   hashlib, hmac, secrets  2026-07-28 round trips         (RoundTrips)
#   msvcrt, ctypes  Windows only                           (protected_stdio)


# ==== Logging, imported on first use: _LazyLog, log ===========================

class _LazyLog:
    """A logger's methods, importing logging only once a record can be seen.

    Policy, on measurements: importing logging (it brings traceback,
    linecache, tokenize and string) costs a server about 6 ms of every
    start, and tearing it down more at exit: more than every other import
    of this module together.  While nothing has imported logging, no
    handler exists and the root logger's default level (WARNING) would
    drop a lower record, so a debug or info record is dropped here for
    free; anything else imports logging and goes to logging.getLogger(name).
    """

    WARNING = 30  # logging.WARNING

    def __init__(self, name: str):
        self.name = name
        self.setup = None  # called once, when logging is first needed: main() puts its stderr handler here

    def logger(self):
        """The real logging.Logger (logging is imported, and set up, now)."""
        import logging
        setup, self.setup = self.setup, None
        if setup is not None:
            setup()
        return logging.getLogger(self.name)

    def log(self, level: int, msg: str, *args, **kwargs) -> None:
        if level >= self.WARNING or "logging" in sys.modules:
            self.logger().log(level, msg, *args, stacklevel=kwargs.pop("stacklevel", 2), **kwargs)

    def debug(self, msg: str, *args, **kwargs) -> None:
        self.log(10, msg, *args, stacklevel=3, **kwargs)

    def info(self, msg: str, *args, **kwargs) -> None:
        self.log(20, msg, *args, stacklevel=3, **kwargs)

    def warning(self, msg: str, *args, **kwargs) -> None:
        self.log(30, msg, *args, stacklevel=3, **kwargs)

    def error(self, msg: str, *args, **kwargs) -> None:
        self.log(40, msg, *args, stacklevel=3, **kwargs)

    def exception(self, msg: str, *args, **kwargs) -> None:
        self.log(40, msg, *args, exc_info=True, stacklevel=3, **kwargs)


log = _LazyLog("mcp_ref")


# ==== The protocol as data: versions, METHODS, error codes, limits ===========

# Oldest first.  A version is a date, so comparing the strings compares the
# dates: `version >= "2025-06-18"` means "that revision or a later one".
PROTOCOL_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LATEST_PROTOCOL_VERSION = PROTOCOL_VERSIONS[-1]
# The modern era (2026-07-28): no handshake; every request carries its
# protocol version and the client's capabilities in params._meta.
MODERN_VERSIONS = ("2026-07-28",)
LATEST_MODERN_VERSION = MODERN_VERSIONS[-1]
# basic/index (2025-03-26 only): "Implementations MUST support receiving
# JSON-RPC batches"; the next revision removed them again.
BATCH_VERSIONS = ("2025-03-26",)

# What changed in which version: a field or a behaviour, and the first
# revision that has it (the modern era has them all).  has() reads it.
ADDED_IN = {
    "annotations": "2025-03-26",              # tools
    "progress message": "2025-03-26",         # notifications/progress
    "title": "2025-06-18",                    # tools, resources, prompts
    "outputSchema": "2025-06-18",             # tools
    "structuredContent": "2025-06-18",        # tool results
    "serverInfo.title": "2025-06-18",
    "serverInfo.description": "2025-11-25",
    "serverInfo.websiteUrl": "2025-11-25",
    "serverInfo.icons": "2025-11-25",
    "argument errors as results": "2025-11-25",  # tools: invalid arguments are an isError result
}


def has(version: str, feature: str) -> bool:
    """Whether protocol `version` has `feature` (one not in ADDED_IN every version has)."""
    return version >= ADDED_IN.get(feature, "")


# The modern era's reserved _meta keys.  The first two are required on every
# request; the io.modelcontextprotocol/ prefix belongs to the spec, so no
# extension can collide with them.
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
META_SUBSCRIPTION = "io.modelcontextprotocol/subscriptionId"

JSONRPC = "2.0"

# Process groups, signals and pollable pipes are POSIX; on Windows a Client's
# close() falls back to terminate() and kill() on the server process alone.
POSIX = os.name == "posix"

# The methods a server serves, one row each, keyed by the wire string.
# Routing, capability checks and handler lookup all read this table.
#
#   handler     the Server method that serves it: handler(era, params) if
#               inline, else handler(ctx, params) on a worker
#   capability  the server capability it needs.  Policy: neither side sends,
#               and a server does not serve, a method behind a capability
#               that was not declared (lifecycle: "Both parties MUST only
#               use capabilities that were successfully negotiated"); a
#               server answers it with METHOD_NOT_FOUND.
#   eras        where it exists: 2026-07-28 removed initialize, ping,
#               logging/setLevel and resources/(un)subscribe (changelog),
#               and added server/discover and subscriptions/listen
#   inline      served on the reader thread, in arrival order: it changes
#               what later requests mean, or must never wait for a worker
#   cacheable   2026-07-28 caching: its result carries ttlMs and cacheScope
#   round_trip  2026-07-28 mrtr: it may be answered with input_required
Method = collections.namedtuple("Method", "handler capability eras inline cacheable round_trip")
HANDSHAKE, MODERN = ("handshake",), ("modern",)
BOTH = HANDSHAKE + MODERN
METHODS = {
    #                                  handler            capability     eras       inline cache  round trip
    "initialize":               Method("_initialize",     None,          HANDSHAKE, True,  False, False),
    "ping":                     Method("_ping",           None,          HANDSHAKE, True,  False, False),
    "server/discover":          Method("_discover",       None,          MODERN,    True,  True,  False),
    "subscriptions/listen":     Method("_listen",         None,          MODERN,    True,  False, False),
    "tools/list":               Method("_list_tools",     "tools",       BOTH,      False, True,  False),
    "tools/call":               Method("_call_tool",      "tools",       BOTH,      False, False, True),
    "resources/list":           Method("_list_resources", "resources",   BOTH,      False, True,  False),
    "resources/templates/list": Method("_list_templates", "resources",   BOTH,      False, True,  False),
    "resources/read":           Method("_read_resource",  "resources",   BOTH,      False, True,  True),
    "resources/subscribe":      Method("_subscribe",      "resources",   HANDSHAKE, True,  False, False),
    "resources/unsubscribe":    Method("_unsubscribe",    "resources",   HANDSHAKE, True,  False, False),
    "prompts/list":             Method("_list_prompts",   "prompts",     BOTH,      False, True,  False),
    "prompts/get":              Method("_get_prompt",     "prompts",     BOTH,      False, False, True),
    "completion/complete":      Method("_complete",       "completions", BOTH,      False, False, False),
    "logging/setLevel":         Method("_set_level",      "logging",     HANDSHAKE, True,  False, False),
}

# JSON-RPC 2.0 error codes, and the one MCP adds in the handshake era.
# 2026-07-28 (basic/index) reserves -32020 to -32099 for the spec, and
# implementations "MUST NOT emit any code from this sub-range that is not
# defined by this specification"; so this module invents no codes of its own.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RESOURCE_NOT_FOUND = -32002          # handshake era only; 2026-07-28 uses INVALID_PARAMS
MISSING_CAPABILITY = -32021          # 2026-07-28: data.requiredCapabilities
UNSUPPORTED_VERSION = -32022         # 2026-07-28: data {supported, requested}

# RFC 5424 severities as MCP names them, mapped onto Python's logging levels
# (DEBUG 10, INFO 20, WARNING 30, ERROR 40, CRITICAL 50).  Python has no
# notice, alert or emergency: 25 sits between INFO and WARNING, 60 and 70
# above CRITICAL, so the order is kept and mcp_level() maps back.
LOG_LEVELS = {
    "debug": 10, "info": 20, "notice": 25, "warning": 30, "error": 40,
    "critical": 50, "alert": 60, "emergency": 70,
}

# Limits.  Each is a keyword argument too; these are the defaults.
MAX_LINE_BYTES = 32 * 1024 * 1024  # one message; big enough for a large file, small enough to bound memory
READ_CHUNK = 64 * 1024             # one read(); a pipe's buffer holds 64 KiB on Linux
# Policy: at least as many threads as the official Python SDK gives sync tools
# (anyio's default limiter: 40), since most tools block (network calls).
MAX_WORKERS = 64                   # threads running requests at once; started on demand, idle ones exit
WORKER_IDLE = 2.0                  # seconds an idle worker waits for work before it exits
MAX_IN_FLIGHT = 1024               # requests read but unanswered (running or waiting); past it, refused
MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024  # their total size: memory stays bounded under a flood
MAX_SUBSCRIPTIONS = 16             # open subscriptions/listen streams: they count as in flight until closed
MAX_HELD = 100                     # notifications raised before the handshake, kept until it completes
PAGE_SIZE = 100                    # items per page of a */list result
STDERR_TAIL = 20                   # lines of a server's stderr kept for error messages

# Timeouts, in seconds.  Policy: the spec asks only for "a reasonable time"
# (lifecycle/Shutdown); these are our choices.  DRAIN_TIMEOUT bounds a
# server's whole shutdown, and it is shorter than the CLOSE_GRACE a client
# (ours, and the official Python SDK's, which waits 2 s) allows between
# stdin EOF and SIGTERM: a server built on this module exits before anyone
# has to signal it, stuck tool or stalled peer.  A timeout of math.inf means
# "no deadline", on both sides; None means "the default".
TOOL_TIMEOUT = 60.0       # a handler's deadline, unless the tool sets its own
DRAIN_TIMEOUT = 1.5       # on shutdown, the deadline for everything: drain, hooks, last writes
REQUEST_TIMEOUT = 60.0    # a client's wait for an answer, unless the call sets its own
HANDSHAKE_TIMEOUT = 10.0  # a client's wait for the initialize result: a server that starts slower is broken
CLOSE_GRACE = 2.0         # each step of the client's shutdown: stdin EOF, then SIGTERM, then SIGKILL
EXIT_STATUS_WAIT = 0.5    # after a server's stdout ends, how long to wait for its exit code
DISCOVER_TIMEOUT = 3.0    # the era probe: a handshake-era server may never answer server/discover
# (2026-07-28 transports/stdio: legacy servers answer an unknown request
# before initialize "with implementation-defined errors ... or not at all").
STDERR_GRACE = 0.2        # after a server is reaped, how long its stderr may still be read
# (A helper the server started in a session of its own may hold the pipe
# open for as long as it lives; the host must not wait for that.)


def check_timeout(timeout, name: str = "timeout") -> float:
    """`timeout` if it is a number of seconds > 0 (math.inf: no deadline); else ValueError."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"{name} must be a number of seconds > 0 (math.inf for none), not {timeout!r}")
    return timeout


def configure(obj, options: dict) -> None:
    """Keyword overrides of a class's configuration attributes (socketserver's style); TypeError for others."""
    for key, value in options.items():
        default = getattr(type(obj), key, configure)
        if key.startswith("_") or default is configure or callable(default) or isinstance(default, property):
            raise TypeError(f"{type(obj).__name__}() got an unexpected keyword argument {key!r}")
        setattr(obj, key, value)


def bounded(seconds: float) -> float:
    """A wait no longer than the platform allows: threading.TIMEOUT_MAX.

    Every blocking wait in this module goes through it, so that a huge or
    infinite timeout means "a very long wait", never OverflowError.
    """
    return min(max(seconds, 0.0), threading.TIMEOUT_MAX)


# ==== Errors: MCPError and its children ======================================

class MCPError(Exception):
    """Base class of every error this module raises on purpose."""


class RPCError(MCPError):
    """A JSON-RPC error object: raise it in a handler to answer with it.

    A Client raises it when the server answers a request with an error.
    ``id`` is the request id the error answers, when one could be read.
    """

    def __init__(self, code: int, message: str, data: object = None, *, id=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.id = id

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def to_dict(self) -> dict:
        """The JSON-RPC error object: code, message and, if any, data."""
        error = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class ToolError(MCPError):
    """Raise in a tool to fail the call with a message for the model.

    The client gets a result with isError and the message, and no
    traceback is logged: this is an expected failure, not a bug.
    """


class StateError(MCPError):
    """An illegal lifecycle move: a bug in the caller, never the peer's fault."""

    def __init__(self, state: "State", event: "Event"):
        super().__init__(f"cannot {event.value} a connection that is {state.value}")
        self.state = state
        self.event = event


class ConnectionClosed(MCPError):
    """The peer went away: its stdout ended, it exited, or it stopped answering.

    ``returncode`` and ``stderr_tail`` say why when they are known: a server
    that crashes usually explains itself in the last lines of its stderr.
    """

    def __init__(self, reason: str, returncode: int | None = None, stderr_tail: list[str] = ()):
        self.reason = reason
        self.returncode = returncode
        self.stderr_tail = list(stderr_tail)
        text = reason
        if returncode is not None:
            text += f" (exit code {returncode})"
        if self.stderr_tail:
            text += "; last stderr lines:\n  " + "\n  ".join(self.stderr_tail)
        super().__init__(text)


class RequestTimeout(MCPError, TimeoutError):
    """A request got no answer within its timeout (and was cancelled).

    Also a TimeoutError, so ``except TimeoutError`` catches it like any other.
    """

    def __init__(self, method: str, timeout: float):
        super().__init__(f"{method} got no answer within {timeout:g} s")
        self.method = method
        self.timeout = timeout


class UnsupportedVersion(MCPError):
    """The server chose a protocol version this client does not speak."""

    def __init__(self, version, final: bool = True):
        super().__init__(f"server answered protocol version {version!r}; "
                         f"this client speaks {', '.join(MODERN_VERSIONS + PROTOCOL_VERSIONS)}")
        self.version = version
        self.final = final  # False: a handshake-era fallback may still work


class CrashLoop(MCPError):
    """The server crashed too often within the restart window; no more restarts."""

    def __init__(self, crashes: int, window: float, last: MCPError | None):
        super().__init__(f"server crashed {crashes} times within {window:g} s; giving up"
                         + (f" (last: {last})" if last else ""))
        self.crashes = crashes
        self.window = window
        self.last = last


# ==== The lifecycle state machine: State, Event, TRANSITIONS, transition ====
#
# Theory of operation.  Every connection, on either side, is in exactly one
# State.  The state changes only through transition(), which looks the move
# up in TRANSITIONS; a move that is not in the table raises StateError and
# changes nothing.  Connection.advance() is the only caller that stores the
# result, under a lock, so there is exactly one place where state changes.
#
#   open         the pipes exist: the client spawned the server, or the
#                server began reading its stdin.
#   initialize   the client sent `initialize` / the server received it.
#   initialized  the client received the result and sent
#                `notifications/initialized` / the server received that.
#                lifecycle: "the client MUST send an initialized
#                notification to indicate it is ready to begin normal
#                operations."  Only now is the connection READY.
#   discover     (client, 2026-07-28) server/discover answered: there is
#                no handshake in the modern era, so this is READY at once.
#                A server has no such event: modern requests are served
#                statelessly in whatever state the connection is in.
#   close        a deliberate end: stdin EOF, SIGTERM, SIGINT, close().
#                In CLOSING no new request is accepted; in-flight ones drain.
#   fail         an unrecoverable error: the peer died, broke the protocol,
#                stopped answering pings, or chose a version we lack.
#                FAILED skips the drain: nothing is waited for.
#   finish       streams closed, threads joined, process reaped.

class State(enum.Enum):
    """Where a connection is in its life; TRANSITIONS says how it moves."""
    NEW = "new"
    CONNECTED = "connected"
    INITIALIZING = "initializing"
    READY = "ready"
    CLOSING = "closing"
    FAILED = "failed"
    CLOSED = "closed"


class Event(enum.Enum):
    """What moves a connection from one State to the next."""
    OPEN = "open"
    INITIALIZE = "initialize"
    INITIALIZED = "initialized"
    DISCOVER = "discover"
    CLOSE = "close"
    FAIL = "fail"
    FINISH = "finish"


# What is *not* here matters as much.  Nothing leads back to CONNECTED or
# INITIALIZING: lifecycle says initialization "MUST be the first interaction
# between client and server", so there is no second handshake on one
# connection.  FAILED leads only to CLOSED: a connection we gave up on is
# not closed politely.  CLOSING may still FAIL, since a pipe can break or a
# process die while in-flight requests drain.
TRANSITIONS = {
    (State.NEW, Event.OPEN): State.CONNECTED,
    # A connection that was never opened can still be finished, so cleanup
    # code never has to ask whether open() ran.
    (State.NEW, Event.FINISH): State.CLOSED,
    (State.CONNECTED, Event.INITIALIZE): State.INITIALIZING,
    (State.CONNECTED, Event.DISCOVER): State.READY,
    (State.CONNECTED, Event.CLOSE): State.CLOSING,
    (State.CONNECTED, Event.FAIL): State.FAILED,
    (State.INITIALIZING, Event.INITIALIZED): State.READY,
    (State.INITIALIZING, Event.CLOSE): State.CLOSING,
    (State.INITIALIZING, Event.FAIL): State.FAILED,
    (State.READY, Event.CLOSE): State.CLOSING,
    (State.READY, Event.FAIL): State.FAILED,
    (State.CLOSING, Event.FAIL): State.FAILED,
    (State.CLOSING, Event.FINISH): State.CLOSED,
    (State.FAILED, Event.FINISH): State.CLOSED,
}


# The states in which a connection is alive and may still be closed or fail.
# Ending code passes it as `only_from`: of the racers that try to end a
# connection, only the first one moves it.
LIVE = (State.CONNECTED, State.INITIALIZING, State.READY)


def transition(state: State, event: Event) -> State:
    """The state after `event` in `state`; StateError if the move is illegal."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise StateError(state, event) from None


# ==== JSON-RPC messages: building, classifying, validating ===================
#
#   request       {"jsonrpc": "2.0", "id": 1, "method": "m", "params": {...}}
#   notification  {"jsonrpc": "2.0", "method": "m", "params": {...}}
#   response      {"jsonrpc": "2.0", "id": 1, "result": {...}}
#   error         {"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "..."}}
#
# Messages stay plain dicts: the wire format is the data model.
# basic/index, Notifications: "The receiver MUST NOT send a response."  So
# whether a malformed message gets an error answer depends on its shape
# (is_notification_shaped, is_response_shaped), not on whether it is valid.

REQUEST = "request"
NOTIFICATION = "notification"
RESPONSE = "response"


def make_request(id, method: str, params: dict | None = None) -> dict:
    """A request: it must be answered, exactly once."""
    msg = {"jsonrpc": JSONRPC, "id": id, "method": method}
    # JSON-RPC lets params be omitted; ping is sent without them.
    if params is not None:
        msg["params"] = params
    return msg


def make_notification(method: str, params: dict | None = None) -> dict:
    """A notification: it has no id and is never answered."""
    msg = {"jsonrpc": JSONRPC, "method": method}
    if params is not None:
        msg["params"] = params
    return msg


def make_result(id, result: dict) -> dict:
    """A successful response to request `id`."""
    return {"jsonrpc": JSONRPC, "id": id, "result": result}


def make_error(id, error: RPCError) -> dict:
    """An error response; `id` is None when the request's id could not be read.

    2025-11-25 schema, JSONRPCErrorResponse: the id is optional, so an
    unreadable id is left out rather than sent as null.
    """
    msg = {"jsonrpc": JSONRPC, "error": error.to_dict()}
    if id is not None:
        msg["id"] = id
    return msg


def is_valid_id(value) -> bool:
    """basic/index: "Requests MUST include a string or integer ID" (never null, never bool)."""
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def classify(msg) -> str:
    """REQUEST, NOTIFICATION or RESPONSE; RPCError(INVALID_REQUEST) if none.

    The error carries the request id when it was readable, so the caller
    can answer it.  A message with a "method" and no "id" is a notification
    even when malformed: notifications are never answered.
    """
    if not isinstance(msg, dict):
        raise RPCError(INVALID_REQUEST, "a message must be a JSON object")
    id = msg.get("id")
    # Read the id first, so every error below can still be correlated by a
    # peer that sent a valid id and got something else wrong.
    echo = id if is_valid_id(id) else None
    if msg.get("jsonrpc") != JSONRPC:
        raise RPCError(INVALID_REQUEST, '"jsonrpc" must be "2.0"', id=echo)
    if "method" in msg:
        if not isinstance(msg["method"], str):
            raise RPCError(INVALID_REQUEST, '"method" must be a string', id=echo)
        params = msg.get("params", {})
        # MCP params are always an object; JSON-RPC's by-position arrays
        # have no meaning here.
        if not isinstance(params, dict):
            raise RPCError(INVALID_REQUEST, '"params" must be an object', id=echo)
        if "id" not in msg:
            return NOTIFICATION
        if echo is None:
            raise RPCError(INVALID_REQUEST, '"id" must be a string or an integer')
        return REQUEST
    # basic/index, 2025-06-18: "Either a `result` or an `error` MUST be set.
    # A response MUST NOT set both."
    if ("result" in msg) == ("error" in msg):
        raise RPCError(INVALID_REQUEST, 'a message needs a "method", or exactly one of '
                       '"result" and "error"', id=echo)
    if "error" in msg and not isinstance(msg["error"], dict):
        raise RPCError(INVALID_REQUEST, '"error" must be an object', id=echo)
    if echo is None and id is not None:
        raise RPCError(INVALID_REQUEST, '"id" must be a string or an integer')
    return RESPONSE


def is_notification_shaped(msg) -> bool:
    """Never answered, however malformed: it has a method and no id."""
    return isinstance(msg, dict) and "method" in msg and "id" not in msg


def is_response_shaped(msg) -> bool:
    """Never answered either: answering a response could loop forever."""
    return isinstance(msg, dict) and "method" not in msg and ("result" in msg or "error" in msg)


# ==== Wire format: LineReader, decode_line, encode_message, LineWriter =======
#
# transports/stdio: "Messages are delimited by newlines, and MUST NOT
# contain embedded newlines."  We split on b"\n" only (str.splitlines()
# would also split on \x1c, \u2028 and friends inside a JSON string), strip
# one trailing b"\r" for peers that write CRLF, and skip blank lines.

class LineTooLong(MCPError):
    """A line passed the size limit; the reader skipped to the next newline."""

    def __init__(self, limit: int):
        super().__init__(f"message longer than {limit} bytes was discarded")
        self.limit = limit


class LineReader:
    """Read newline-delimited lines from a buffered binary stream.

    Uses ``stream.read1()``, which returns whatever bytes are available, so
    a line is handed on as soon as its newline arrives.  An over-long line
    is dropped chunk by chunk as it arrives (memory stays bounded by the
    limit) and reported as LineTooLong once its newline is seen.
    """

    def __init__(self, stream, limit: int = MAX_LINE_BYTES):
        self._stream = stream
        self._limit = limit
        self._buffer = bytearray()
        self._scanned = 0        # bytes of _buffer already searched for b"\n"
        self._discarding = False  # inside an over-long line, waiting for its end

    def read_line(self) -> bytes | None:
        """The next non-blank line, without its newline; None at EOF."""
        while True:
            # Search only the bytes not searched before: a long line that
            # arrives in many chunks costs linear time, not quadratic.
            end = self._buffer.find(b"\n", self._scanned)
            if end < 0:
                self._scanned = len(self._buffer)
                # Over the limit with no newline yet: drop what we have and
                # keep reading to the next newline.  Skipping one bad line
                # is cheaper for both sides than closing the connection.
                if self._scanned > self._limit:
                    self._discarding = True
                    self._buffer.clear()
                    self._scanned = 0
                chunk = self._stream.read1(READ_CHUNK)
                if not chunk:
                    # EOF: a final line without a newline still counts, and
                    # so does a final over-long one (reported once; the next
                    # call returns None).
                    line, self._buffer = bytes(self._buffer), bytearray()
                    self._scanned = 0
                    if self._discarding:
                        self._discarding = False
                        raise LineTooLong(self._limit)
                    if not line.strip():
                        return None
                    return line.removesuffix(b"\r")
                self._buffer += chunk
                continue
            line = self._buffer[:end]
            del self._buffer[:end + 1]
            self._scanned = 0
            if self._discarding or end > self._limit:
                # The stream is back in step at the next line; the caller
                # decides whether the lost line deserves an answer.
                self._discarding = False
                raise LineTooLong(self._limit)
            if line.endswith(b"\r"):
                del line[-1:]
            if line.strip():
                return line


def _reject_constant(name: str):
    """json's parse_constant hook: NaN and the Infinities are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def decode_line(line: bytes):
    """Parse one line; RPCError(PARSE_ERROR) for invalid UTF-8 or JSON.

    Strict on purpose: UTF-8 only (json.loads on bytes would also guess
    UTF-16 and 32), and NaN, Infinity and -Infinity are refused (RFC 8259
    has no such literals; Python's json accepts them unless told not to).
    """
    # transports: "JSON-RPC messages MUST be UTF-8 encoded."
    try:
        return _DECODER.decode(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RPCError(PARSE_ERROR, f"Parse error: invalid UTF-8 ({exc.reason})") from None
    except (ValueError, RecursionError) as exc:
        # RecursionError: a few thousand nested brackets overflow the
        # decoder's stack.  It is bad input like any other, not a crash.
        raise RPCError(PARSE_ERROR, f"Parse error: {exc}") from None


# Compact, ASCII-only and strict: ensure_ascii escapes every non-ASCII
# character (so a lone surrogate can never become invalid UTF-8, and
# U+2028 can never look like a line break), and allow_nan=False makes
# NaN and Infinity an error instead of invalid JSON on stdout.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def encode_message(msg) -> bytes:
    """One message as one line of strict JSON, without the newline.

    Raises ValueError (NaN, Infinity), TypeError (not JSON-serialisable)
    or RecursionError (nested too deep); nothing is written in that case.
    """
    return _ENCODER.encode(msg).encode("ascii")


class LineWriter:
    """Write messages one line at a time, straight to a stream's file descriptor.

    No buffer of our own: each line goes out with os.write() at once, and a
    thread stuck in a write holds no lock that the interpreter's exit needs.
    """

    def __init__(self, stream):
        self._stream = stream
        try:
            self._fd = stream.fileno()
        except OSError:  # io.UnsupportedOperation: an in-memory stream, written through its write()
            self._fd = None
        # Only a pipe may be made non-blocking at a deadline: it is ours
        # alone, while a terminal or a file may be shared with the shell,
        # which must not find its stdout non-blocking afterwards.
        self._pollable = POSIX and self._fd is not None and stat.S_ISFIFO(os.fstat(self._fd).st_mode)
        # Held for a whole line, so lines from different threads never
        # interleave: one writer at a time.
        self._lock = threading.Lock()
        self._cut = False  # a line was cut off at a deadline: nothing may follow it

    def write(self, data: bytes, timeout: float | None = None) -> None:
        """Write one encoded line and its newline; OSError if the pipe is gone.

        Blocks while the pipe is full: a peer that stops reading holds up
        every writer on this side, which is stdio's only flow control.
        With a `timeout` (a connection that is ending), neither the wait for
        another writer nor a full pipe may outlast it: TimeoutError.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._lock.acquire(timeout=-1 if timeout is None else bounded(timeout)):
            raise TimeoutError("another write is stuck: the peer stopped reading")
        try:
            if self._cut:
                raise BrokenPipeError("an earlier line was cut off at its deadline")
            line = memoryview(data + b"\n")
            if self._fd is None:
                self._stream.write(line)
                return
            if deadline is not None and self._pollable:
                # From now on a full pipe raises BlockingIOError instead of
                # blocking, so the wait below can end at the deadline.
                # (Windows pipes cannot be polled: there the bound is only
                # on the wait for another writer.)
                os.set_blocking(self._fd, False)
            while line:
                try:
                    line = line[os.write(self._fd, line):]
                except BlockingIOError:
                    if not _wait_writable(self._fd, deadline - time.monotonic()):
                        self._cut = len(line) <= len(data)
                        raise TimeoutError("the peer stopped reading") from None
        finally:
            self._lock.release()

    def close(self, timeout: float = -1) -> bool:
        """Close the stream; False if a writer held the lock past `timeout`.

        Under the lock, so a line being written is finished, not cut off.
        A writer blocked on a peer that stopped reading holds the lock
        indefinitely; a bounded wait lets the caller go on to signals, and
        the killed peer's broken pipe then frees that writer.
        """
        if not self._lock.acquire(timeout=timeout if timeout < 0 else bounded(timeout)):
            return False
        try:
            self._stream.close()
        except OSError:  # BrokenPipeError while flushing: the peer is gone, nothing to lose
            pass
        finally:
            self._lock.release()
        return True


def _wait_writable(fd: int, timeout: float) -> bool:
    """Wait up to `timeout` for room in a pipe (POSIX); False if none came."""
    if timeout <= 0:
        return False
    poller = select.poll()  # not select.select(): that fails on fd numbers above 1023
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(bounded(timeout) * 1000))


# ==== The connection core: Context, WorkerPool, EventLoop, Connection =========
#
# What Server and Client share.  A Connection owns one pair of streams, the
# reader thread, the writer lock, the requests it sent and still waits for
# (by id), the requests it received and has not answered (by id), the worker
# pool, the deadline thread, and the lifecycle state.  What an incoming
# request or notification *means* is its owner's business: the owner (a
# Server or a Client) answers three calls, on the reader thread, in the order
# the messages arrived:
#
#   owner.route_request(msg)       -> a dict: the result, sent at once;
#                                     (work, timeout): work(ctx) runs on a
#                                     worker with that deadline, or with
#                                     timeout None at once on the reader,
#                                     with none; None: no answer at all (a
#                                     request the peer may not send).
#                                     Raise RPCError to answer with it.
#   owner.handle_notification(msg) -> None
#   owner.connection_lost(conn, reason, error)
#                                  -> None; called at least once: at EOF and
#                                     after every failed write, so it must be
#                                     idempotent; `error` is False only for a
#                                     clean EOF
#
# Every request gets exactly one answer, or none if the peer cancelled it:
# Context.claim() decides who sends it, the first to ask wins.  A handler
# that answers later (a subscription) returns DEFERRED and stays in flight
# until someone calls Connection.answer() or the peer cancels it.
#
# The reader never waits for a worker: ping, cancellations, responses and
# progress are handled the moment they arrive, however busy the workers are.
# Requests wait for a worker in a queue bounded by max_in_flight (and their
# total size); one more is refused at once with an error naming its id.

# A handler's return value meaning "no answer yet": the request stays in
# flight (holding its slot and its deadline) until answer() or a cancel.
DEFERRED = object()

# So that code deep inside a handler (a logging.Handler, say) finds its
# request without being passed it.  A context variable, not a thread-local:
# async handlers share one thread, and each asyncio task has its own value.
_current = contextvars.ContextVar("mcp_ref_context", default=None)


def settle(start, finish):
    """finish(outcome), where outcome() returns what start() returned or raises what it raised.

    For an ``async def`` handler start() returns a coroutine; then so does
    settle(): one that awaits it first.  So the code that turns a value
    into an answer is written once, for both kinds of handler, and
    Connection._run hands any coroutine to the event loop.
    """
    try:
        value = start()
    except BaseException as exc:  # noqa: BLE001 - handed to finish, which decides
        return finish(_raising(exc))
    if not isinstance(value, types.CoroutineType):
        return finish(lambda: value)

    async def awaited():
        import asyncio  # loaded already: this runs on the event loop
        try:
            result = await value
        except asyncio.CancelledError:
            raise  # the request was cancelled: no answer to make
        except BaseException as exc:  # noqa: BLE001 - handed to finish, as above
            return finish(_raising(exc))
        return finish(lambda: result)
    return awaited()


def _raising(exc: BaseException):
    """An outcome that raises `exc` again."""
    def outcome():
        raise exc
    return outcome


class Context:
    """A request being handled: what it asked, and what its handler may do.

    Handlers that declare a parameter of type Context get one.  Through it a
    long-running tool watches ``cancelled``, reports progress, logs, and asks
    the peer for things (``list_roots``, ``create_message``, ``elicit``).
    """

    def __init__(self, conn: "Connection", id, method: str, params: dict,
                 deadline: float, sink=None):
        self.conn = conn
        self.id = id
        self.method = method
        self.params = params
        self.started = time.monotonic()
        self.deadline = deadline
        self.sink = conn if sink is None else sink  # where the answer goes: the connection, or a _Batch
        self.size = 0    # the bytes of the line it came on: it counts against the in-flight bound
        self.era = None  # how this request is served (an Era): set by the owner
        self._stop = None  # the Event behind `cancelled`, made only if someone looks
        self._stopped = False
        self._on_cancel = None  # an async handler's task.cancel, set by EventLoop.run
        meta = params.get("_meta")
        self.progress_token = meta.get("progressToken") if isinstance(meta, dict) else None
        self._last_progress = None
        # Guards _answered.  Progress is sent while holding it, so a
        # progress line can never follow the answer (progress: "MUST stop
        # sending progress notifications after the operation completes").
        self._lock = threading.Lock()
        self._answered = False

    @property
    def cancelled(self) -> threading.Event:
        """Set when the peer cancels the request, when its deadline passes, or at shutdown.

        A cooperative handler waits on it or checks it, and stops.  Made on
        first use: most handlers never look, and an Event per request is the
        largest single cost on the request path.
        """
        with self._lock:
            if self._stop is None:
                self._stop = threading.Event()
                if self._stopped:
                    self._stop.set()
            return self._stop

    def cancel(self) -> None:
        """Tell the handler to stop (it learns of it through ``cancelled``)."""
        with self._lock:
            self._stopped = True
            stop, on_cancel = self._stop, self._on_cancel
        if stop is not None:
            stop.set()
        if on_cancel is not None:
            on_cancel()  # an async handler: CancelledError where it awaits

    @staticmethod
    def current() -> "Context | None":
        """The Context of the request whose handler runs on this thread, if any."""
        return _current.get()

    @property
    def answered(self) -> bool:
        """Whether the request was answered, cancelled or abandoned already."""
        return self._answered

    def claim(self) -> bool:
        """Take the one right to answer; False if someone already took it.

        Four parties may race for it: the handler returning, the deadline
        thread, a cancel from the peer, and the shutdown.  Whoever loses
        sends nothing, so a request is never answered twice.
        """
        with self._lock:
            if self._answered:
                return False
            self._answered = True
            return True

    def report_progress(self, progress: float, total: float | None = None,
                        message: str | None = None) -> None:
        """Send notifications/progress, if the request asked for it.

        progress: "The progress value MUST increase with each notification".
        A value that does not is a bug in the tool: ValueError.
        """
        with self._lock:
            if self._last_progress is not None and progress <= self._last_progress:
                raise ValueError(f"progress must increase: {progress} after {self._last_progress}")
            self._last_progress = progress
            # progress: "Progress notifications MUST only reference tokens
            # that" belong to an active request: none without a token, none late.
            if self._answered or self.progress_token is None:
                return
            params = {"progressToken": self.progress_token, "progress": progress}
            if total is not None:
                params["total"] = total
            version = self.era.version if self.era is not None else self.conn.protocol_version
            if message is not None and has(version, "progress message"):
                params["message"] = message
            self.conn.notify("notifications/progress", params)

    def log(self, level: str, data, logger: str | None = None) -> None:
        """Send a log message to the peer, if its chosen level lets it through."""
        self.conn.owner.send_log(level, data, logger, era=self.era)

    def request(self, method: str, params: dict | None = None, timeout: float | None = None,
                capability: str | None = None):
        """Ask the peer something and wait for the answer (a server asking its client).

        `capability` names the client capability the method needs, if any.
        How the question travels is the era's business (see ``Era.ask``):
        a request to the client in the handshake era, an input_required round
        trip in 2026-07-28.  Either way the handler gets the answer.
        """
        def send():
            # Blocks this worker, never the reader: the answer arrives through
            # the reader thread, so a handler that waits for one on the reader
            # would wait forever.  That is one reason handlers run on workers.
            # Never wait past this request's own deadline: by then its answer
            # has gone out anyway.
            remaining = max(1e-3, self.deadline - time.monotonic())
            return self.conn.request(method, params, timeout=min(
                REQUEST_TIMEOUT if timeout is None else timeout, remaining))
        return send() if self.era is None else self.era.ask(method, params, capability, send)

    def list_roots(self, timeout: float | None = None) -> list:
        """The client's roots (roots/list)."""
        return self.request("roots/list", None, timeout, capability="roots").get("roots", [])

    def create_message(self, params: dict, timeout: float | None = None) -> dict:
        """Ask the client's model for a completion (sampling/createMessage)."""
        return self.request("sampling/createMessage", params, timeout, capability="sampling")

    def elicit(self, message: str, requested_schema: dict, timeout: float | None = None) -> dict:
        """Ask the user for structured input (elicitation/create)."""
        return self.request("elicitation/create", {"message": message, "requestedSchema": requested_schema},
                            timeout, capability="elicitation")


class _Batch:
    """A sink for the answers to one JSON-RPC batch: it sends them as one array, once all are in."""

    def __init__(self, conn: "Connection", expected: int):
        self._conn = conn
        self._lock = threading.Lock()  # guards _answers and _expected
        self._answers = []
        self._expected = expected

    def reply(self, answer: dict | None) -> None:
        """Count one member as done (None: it needs no answer); send the array after the last.

        Every member must be counted exactly once, answered or not, or the
        array is never sent.  A batch of nothing but notifications gets no
        array at all: JSON-RPC says the server "MUST NOT return an empty Array".
        """
        with self._lock:
            if answer is not None:
                self._answers.append(answer)
            self._expected -= 1
            done = self._expected == 0 and self._answers
        if done:
            self._conn.send(self._answers)


class WorkerPool:
    """Up to `size` threads, started on demand, running jobs in arrival order.

    A thread that finds no work for ``idle_timeout`` seconds exits, so the
    pool grows under a burst and shrinks back when it has passed.  The
    threads are daemons: Python cannot stop a thread, so a handler that
    never returns is abandoned at shutdown instead of keeping the process
    alive.  (concurrent.futures joins its threads at exit, which would.)
    """

    idle_timeout = WORKER_IDLE

    def __init__(self, size: int, name: str):
        self._size = size
        self._name = name
        self._jobs = queue.SimpleQueue()  # FIFO, so jobs start in arrival order
        self._numbers = itertools.count()  # thread names: a shrinking pool reuses no name
        # Guards _threads, _idle, _waiting and _closed.  The invariant, under
        # the lock: _waiting is the number of submitted jobs no thread has
        # taken yet, and _idle the threads waiting for one.  A new thread is
        # started when more jobs wait than idle threads could take; an idle
        # thread exits only when no job waits, so none is ever stranded.
        self._lock = threading.Lock()
        self._threads = []
        self._idle = 0
        self._waiting = 0
        self._closed = False

    def submit(self, fn, *args) -> None:
        """Queue fn(*args); start a thread if every running one is busy."""
        with self._lock:
            closed = self._closed
            if not closed:
                self._waiting += 1
            if self._waiting > self._idle and len(self._threads) < self._size:
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"{self._name}-worker-{next(self._numbers)}")
                self._threads.append(thread)
                thread.start()
        if closed:  # nobody would ever run it (logged outside the lock: a log may write to a pipe)
            log.warning("%s: dropping work submitted after shutdown", self._name)
            return
        self._jobs.put((fn, args))

    def _work(self) -> None:
        """A worker thread: run jobs until idle too long, or the None that shutdown() sends."""
        while True:
            with self._lock:
                self._idle += 1
            try:
                job = self._jobs.get(timeout=self.idle_timeout)
            except queue.Empty:
                with self._lock:
                    self._idle -= 1
                    if self._waiting == 0 and not self._closed:
                        self._threads.remove(threading.current_thread())
                        return
                continue  # a job is on its way to the queue: take it
            with self._lock:
                self._idle -= 1
                self._waiting -= 1
            if job is None:
                return
            fn, args = job
            fn(*args)  # Connection._run or a Client callback: both catch their own exceptions

    def shutdown(self, timeout: float) -> None:
        """Stop the threads; wait up to `timeout` in all for them.  Blocks.

        A thread still running a handler after that is left behind (it is a
        daemon): nothing it does can reach the peer any more.
        """
        with self._lock:
            self._closed = True
            threads = list(self._threads)
            self._threads.clear()
            self._waiting += len(threads)  # the sentinels below are jobs too
        # One None per thread, queued behind any jobs still waiting: those
        # run first, so nothing submitted before shutdown() is dropped.
        for _ in threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread is threading.current_thread():
                continue  # shutdown() called from a job (a host callback closing its Client)
            thread.join(bounded(deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("%s is still busy (a handler that ignores cancellation, or a write "
                            "the peer does not read); abandoning it", thread.name)


class _Pending:
    """A request we sent, waiting for its answer."""

    def __init__(self, method: str, on_progress, timeout: float, reset_on_progress: bool,
                 max_timeout: float | None):
        check_timeout(timeout)
        if max_timeout is not None:
            check_timeout(max_timeout, "max_timeout")
        now = time.monotonic()
        self.method = method
        self.on_progress = on_progress
        self.deadline = now + timeout  # moved forward by progress when reset_by is set
        self.reset_by = timeout if reset_on_progress else None
        if max_timeout is None:
            max_timeout = 10 * timeout if reset_on_progress else timeout
        self.hard_deadline = now + max(timeout, max_timeout)  # progress never moves it
        self.result = None
        self.error = None
        self.done = False
        # A one-shot Event that costs one lock: held from the start, released
        # once by finish().  Whoever finishes a _Pending has just removed it
        # from the pending table under the connection's lock, so nobody
        # finishes one twice.
        self._latch = threading.Lock()
        self._latch.acquire()

    def finish(self, result=None, error: MCPError | None = None) -> None:
        """The answer (or the error) is in: wake the caller."""
        # Written before the release, read after the acquire: the lock
        # orders the two, so they need no lock of their own.
        self.result, self.error, self.done = result, error, True
        self._latch.release()

    def wait(self) -> None:
        """Wait for finish() until the deadline (never past the hard one, however progress moves it)."""
        # A loop, not one wait: progress may move self.deadline forward
        # while we sleep (the reader writes it without a lock; a stale read
        # only makes us wake early, look again and sleep on).
        while not self.done:
            remaining = min(self.deadline, self.hard_deadline) - time.monotonic()
            if remaining <= 0:
                return
            if self._latch.acquire(timeout=bounded(remaining)):
                self._latch.release()  # any later wait returns at once


class EventLoop:
    """An asyncio event loop on a thread of its own, for ``async def`` handlers.

    A coroutine handler holds no worker while it awaits: a worker starts
    it, hands it here and is free.  Cancellation, the handler's deadline
    and the shutdown reach it as CancelledError, through Context.cancel().
    Made by the first async handler, so a server without one never
    imports asyncio.
    """

    def __init__(self, name: str):
        import asyncio
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=f"{name}-asyncio")
        self._thread.start()

    def run(self, ctx: Context, coroutine) -> None:
        """Run `coroutine` (which answers `ctx` itself) as a task of its own."""
        context = contextvars.copy_context()  # the task's own Context.current()
        context.run(_current.set, ctx)

        def start():  # on the loop's thread
            task = self.loop.create_task(coroutine, context=context)
            with ctx._lock:
                ctx._on_cancel = lambda: self.loop.call_soon_threadsafe(task.cancel)
                stopped = ctx._stopped
            if stopped:
                task.cancel()  # cancelled before it could start
        self.loop.call_soon_threadsafe(start)

    def stop(self, timeout: float) -> None:
        """Stop the loop (its tasks were answered or abandoned already); close it if it stopped."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


class Connection:
    """One JSON-RPC conversation over a pair of buffered binary streams.

    Configured like Server and Client: class attributes, overridden by keyword.
    """

    max_workers = MAX_WORKERS
    max_in_flight = MAX_IN_FLIGHT              # requests read and not yet answered, at most
    max_in_flight_bytes = MAX_IN_FLIGHT_BYTES  # and their total size
    max_line = MAX_LINE_BYTES
    answers_garbage = True  # a server answers a line that is no message; a client skips it
    # trace(kind, detail, at): "send" or "recv" with the decoded message, or
    # "state" with (from, event, to); `at` is time.monotonic().  Called on
    # the thread that sent, received or moved, so it must be thread-safe and
    # quick.  None costs one attribute test per line.
    trace = None

    def __init__(self, instream, outstream, owner, *, name: str = "mcp", **options):
        configure(self, options)
        self.owner = owner
        self.name = name
        self.protocol_version = None   # set by the owner once negotiated (batches depend on it)
        # When the last line arrived.  Written by the reader, read by the
        # keepalive without a lock: a float is replaced whole, never torn.
        self.last_heard = time.monotonic()
        self._instream = instream
        self._writer = LineWriter(outstream)
        self._ids = itertools.count(1)
        self._pool = WorkerPool(self.max_workers, name)
        # Once the connection is ending, the monotonic time by which every
        # write must be done (the owner sets it); past it, output is dropped.
        self.deadline = None
        # One lock for the state, both request tables and the failure.  One,
        # not several, so that a check and the change it guards are atomic
        # (is the connection lost? then register nothing) and two
        # Conditions can share it.  Never held across a read or a write.
        self._lock = threading.Lock()
        self._state = State.NEW
        self._pending = {}     # id -> _Pending: requests we sent
        self._in_flight = {}   # id -> Context: requests we are handling
        self._lost = None      # the ConnectionClosed that ended us, once known
        self._in_flight_bytes = 0  # the total size of the requests in _in_flight
        self._line_size = 0    # the size of the line being dispatched (reader thread only)
        self._loop = None      # the EventLoop for async handlers, once one has run
        # Notified when _in_flight becomes empty (for the drain at shutdown).
        self._idle = threading.Condition(self._lock)
        # The deadline thread sleeps on this until the earliest deadline; it
        # is woken only when a new deadline is earlier than that.
        self._deadline_changed = threading.Condition(self._lock)
        self._wake_at = float("inf")
        self._stopping = False
        self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                        name=f"{name}-reader")
        self._watchdog = threading.Thread(target=self._watch_deadlines, daemon=True,
                                          name=f"{name}-deadlines")

    # ---- state ----------------------------------------------------------

    @property
    def state(self) -> State:
        """The lifecycle state; read without the lock, so it may be stale at once."""
        return self._state

    def advance(self, event: Event, only_from: tuple = ()) -> State:
        """Apply one lifecycle event: the only place the state changes.

        With `only_from`, a connection in any other state is left as it is:
        for events that may race (EOF, a failed ping and close() can all
        try to end a connection at once; the first one wins).
        """
        with self._lock:
            before = self._state
            if not only_from or before in only_from:
                self._state = transition(before, event)
            after = self._state
        if self.trace is not None and after is not before:
            self._traced("state", (before, event, after))
        return after

    def _traced(self, kind: str, detail) -> None:
        """Hand one event to the trace hook; a hook that raises is logged once and dropped."""
        hook = self.trace
        if hook is None:
            return
        try:
            hook(kind, detail, time.monotonic())
        except Exception:  # noqa: BLE001 - a debugging aid must never break the connection
            self.trace = None
            log.exception("%s: the trace hook failed; tracing stops", self.name)

    def open(self) -> None:
        """NEW -> CONNECTED, and start reading."""
        # CONNECTED before the reader starts: the first message it reads
        # must find the connection able to take it.
        self.advance(Event.OPEN)
        self._reader.start()
        self._watchdog.start()

    # ---- the reader thread ------------------------------------------------

    def _read_loop(self) -> None:
        """Read, parse and dispatch lines until EOF; then tell the owner."""
        reader = LineReader(self._instream, self.max_line)
        # Unless a read fails, the end is a clean EOF: for a server, the
        # client's polite request to exit (lifecycle/Shutdown, step 1).
        reason, error = "the peer closed the stream (EOF)", False
        # The finally is the point: however the loop ends, even by a bug,
        # the owner hears of it, so no one waits for a reader that is gone.
        try:
            while True:
                try:
                    line = reader.read_line()
                except LineTooLong as exc:
                    self._garbage(RPCError(INVALID_REQUEST, str(exc)))
                    continue
                except (OSError, ValueError) as exc:
                    reason, error = f"read failed: {exc}", True
                    break
                if line is None:
                    break
                self.last_heard = time.monotonic()
                self._line_size = len(line)
                # Each line is dispatched before the next is read, so the
                # owner sees messages in exactly the order the peer sent them.
                self._receive(line)
        finally:
            try:
                self._instream.close()  # the reader owns its input
            except OSError:
                pass
            self.owner.connection_lost(self, reason, error)

    def _receive(self, line: bytes) -> None:
        """One line from the peer: a message, a batch, or garbage."""
        try:
            msg = decode_line(line)
        except RPCError as exc:
            self._garbage(exc)
            return
        if self.trace is not None:
            self._traced("recv", msg)
        if isinstance(msg, list):
            self._receive_batch(msg)
        else:
            self._dispatch(msg, self)

    def _garbage(self, error: RPCError) -> None:
        """A line that is not a message at all: a server answers it, a client skips it.

        JSON-RPC asks the server to answer a parse error (without an id).
        A client does not: servers that print a banner or a stray line to
        stdout are common, and answering them would only add confusion.
        """
        if self.answers_garbage:
            self.send(make_error(None, error))
        else:
            log.warning("%s: skipping a line that is not a message: %s", self.name, error)

    def _receive_batch(self, batch: list) -> None:
        """A JSON-RPC batch: legal only when 2025-03-26 was negotiated.

        Its members are dispatched one by one, in order, as if they had come
        on lines of their own; only their answers are gathered into one array.
        """
        if self.protocol_version not in BATCH_VERSIONS:
            self._garbage(RPCError(INVALID_REQUEST,
                                   f"batches are not part of protocol version {self.protocol_version}"))
            return
        # JSON-RPC: an empty array is not a batch, and it is answered with
        # "a single Response object", not with an array.
        if not batch:
            self._garbage(RPCError(INVALID_REQUEST, "empty batch"))
            return
        collector = _Batch(self, len(batch))
        for msg in batch:
            if isinstance(msg, dict) and msg.get("method") == "initialize":
                # 2025-03-26 lifecycle: initialize "MUST NOT be part of a JSON-RPC batch"
                collector.reply(make_error(msg.get("id") if is_valid_id(msg.get("id")) else None,
                                           RPCError(INVALID_REQUEST, "initialize cannot be batched")))
                continue
            self._dispatch(msg, collector)

    def _dispatch(self, msg, sink) -> None:
        """Route one message.  The one error boundary for everything the peer sends."""
        try:
            kind = classify(msg)
        except RPCError as exc:
            if is_notification_shaped(msg) or is_response_shaped(msg):
                log.warning("%s: dropping a malformed message: %s", self.name, exc)
                sink.reply(None)
            else:
                sink.reply(make_error(exc.id, exc))
            return
        # Responses and notifications get no answer: their batch slot is
        # counted as done at once, so the array does not wait for them.
        if kind == RESPONSE:
            self._resolve(msg)
            sink.reply(None)
        elif kind == NOTIFICATION:
            sink.reply(None)
            self._notification(msg)
        else:
            self._request(msg, sink)

    def _resolve(self, msg: dict) -> None:
        """A response: hand it to the request waiting for it."""
        with self._lock:
            pending = self._pending.pop(msg.get("id"), None)
        if pending is None:
            # A late answer to a request we gave up on, or a confused peer.
            log.info("%s: ignoring a response with unknown id %r", self.name, msg.get("id"))
            return
        if "error" in msg:
            err = msg["error"]
            pending.finish(error=RPCError(err.get("code", INTERNAL_ERROR), str(err.get("message", "")),
                                          err.get("data"), id=msg.get("id")))
        else:
            pending.finish(msg["result"])

    def _notification(self, msg: dict) -> None:
        """A notification: cancellation and progress are the core's, the rest the owner's.

        The core owns those two because they name request ids and progress
        tokens, and the request tables that give them meaning live here.
        """
        method = msg["method"]
        params = msg.get("params", {})
        try:
            if method == "notifications/cancelled" and is_valid_id(params.get("requestId")):
                self.cancel(params.get("requestId"), params.get("reason"))
            elif method == "notifications/progress" and is_valid_id(params.get("progressToken")):
                self._progress(params)
            elif method in ("notifications/cancelled", "notifications/progress"):
                pass  # naming no request we could have: nothing to do
            else:
                self.owner.handle_notification(msg)
        except Exception:  # noqa: BLE001 - a bad notification must not kill the reader
            # cancellation: "Invalid cancellation notifications SHOULD be
            # ignored"; we log every bad notification and read on.
            log.exception("%s: error handling %s", self.name, method)

    def _progress(self, params: dict) -> None:
        """Progress on a request we sent: to its callback, and maybe restart its clock."""
        with self._lock:
            pending = self._pending.get(params.get("progressToken"))
        if pending is None or pending.on_progress is None:
            return
        # lifecycle, Timeouts: implementations "MAY choose to reset the timeout
        # clock when receiving a progress notification"; the hard deadline
        # in request() still holds.
        if pending.reset_by is not None:
            pending.deadline = time.monotonic() + pending.reset_by
        # On the reader thread: a slow callback delays every later message.
        pending.on_progress(params.get("progress"), params.get("total"), params.get("message"))

    def _request(self, msg: dict, sink) -> None:
        """A request: the owner routes it; answer it at once, or run it, or queue it for a worker."""
        id = msg["id"]
        # An unlocked read: only this thread adds to _in_flight, so an id
        # seen absent here stays absent until _admit() adds it.  basic/index:
        # "The request ID MUST NOT have been previously used by the requestor
        # within the same session"; we can only catch reuse while in flight.
        if id in self._in_flight:
            sink.reply(make_error(id, RPCError(INVALID_REQUEST, f"request id {id!r} is already in use")))
            return
        # Routing runs here, on the reader, in arrival order, because some
        # requests change what later ones mean (initialize, logging/setLevel,
        # resources/subscribe): routing them on workers could reorder them.
        try:
            route = self.owner.route_request(msg)
        except RPCError as exc:
            sink.reply(make_error(id, exc))
            return
        except Exception as exc:  # noqa: BLE001 - the owner's bug must not kill the reader
            log.exception("%s: error routing %s", self.name, msg["method"])
            sink.reply(make_error(id, RPCError(INTERNAL_ERROR, f"internal error: {exc}")))
            return
        if route is None:
            return  # the peer was not allowed to ask: no answer at all
        if isinstance(route, dict):
            # Answered at once, on this thread (ping: "The receiver MUST
            # respond promptly"): it never waits for a worker.
            sink.reply(make_result(id, route))
            return
        work, timeout = route
        ctx = self._admit(msg, timeout, sink)
        if ctx is None:
            return  # refused, and answered so
        if timeout is None:
            self._run(ctx, work)  # short and answered later (a subscription): no worker needed
        else:
            self._pool.submit(self._run, ctx, work)

    def _admit(self, msg: dict, timeout: float | None, sink) -> Context | None:
        """Put a request in flight, with its deadline (None: none); or refuse it, answered, and None."""
        with self._lock:
            # Checked under the lock that the shutdown's state change takes:
            # a request registered before it is drained or abandoned, one
            # after it is refused, and none runs after the cleanup hooks.
            if self._state not in LIVE:
                refusal = "the connection is closing"
            elif (len(self._in_flight) >= self.max_in_flight
                  or self._in_flight_bytes + self._line_size > self.max_in_flight_bytes):
                # Policy: refuse, rather than stop reading.  A reader that
                # stops reads no ping and no cancel either, and a busy
                # server would look dead to any host with a keepalive.
                refusal = (f"server busy: {len(self._in_flight)} requests are in flight; "
                           f"retry when some are answered")
            else:
                deadline = math.inf if timeout is None else time.monotonic() + timeout
                ctx = Context(self, msg["id"], msg["method"], msg.get("params", {}), deadline, sink)
                ctx.size = self._line_size
                self._in_flight[ctx.id] = ctx
                self._in_flight_bytes += ctx.size
                # Wake the deadline thread only if this deadline comes first;
                # otherwise its current sleep already ends early enough.
                if deadline < self._wake_at:
                    self._wake_at = deadline
                    self._deadline_changed.notify()
                return ctx
        # Answered outside the lock: a failed write re-enters the connection.
        sink.reply(make_error(msg["id"], RPCError(INTERNAL_ERROR, refusal)))
        return None

    def _run(self, ctx: Context, work) -> None:
        """Run one handler, and answer with what comes of it (_conclude).

        An ``async def`` handler's coroutine goes to the event loop, which
        answers when it is done: no worker waits for it.
        """
        if ctx.answered:
            return  # cancelled or abandoned while it waited for a worker: never start it
        token = _current.set(ctx)
        try:
            running = settle(lambda: work(ctx), lambda outcome: self._conclude(ctx, outcome))
            if isinstance(running, types.CoroutineType):
                self.event_loop().run(ctx, running)
        finally:
            _current.reset(token)

    def _conclude(self, ctx: Context, outcome) -> None:
        """A handler's outcome as its answer: the one place a handler's exception becomes a wire error.

        Catches everything (even SystemExit from a handler): an exception
        that escaped would end the worker thread, and the request would stay
        in flight until its deadline.
        """
        try:
            result = outcome()
        except RPCError as exc:
            self.answer(ctx, error=exc)
        except BaseException as exc:  # noqa: BLE001 - the boundary: a bug in a handler is an error answer
            log.exception("%s: %s failed", self.name, ctx.method)
            self.answer(ctx, error=RPCError(INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}"))
        else:
            if result is not DEFERRED:
                self.answer(ctx, result=result)

    def event_loop(self) -> "EventLoop":
        """The loop that runs this connection's async handlers, started by the first one."""
        with self._lock:
            if self._loop is None:
                self._loop = EventLoop(self.name)
            return self._loop

    # ---- answering --------------------------------------------------------

    def answer(self, ctx: Context, result=None, error: RPCError | None = None) -> bool:
        """Send the one answer to `ctx`, unless it was already answered or cancelled."""
        if not ctx.claim():
            return False
        self._deliver(ctx, result, error)
        return True

    def _deliver(self, ctx: Context, result=None, error: RPCError | None = None) -> None:
        """Send the answer to a request whose right to answer we hold (see claim())."""
        # Free the slot before writing: the write may block on a full pipe,
        # and the drain at shutdown need not wait for it too.
        self._release(ctx)
        reply = make_result(ctx.id, result) if error is None else make_error(ctx.id, error)
        try:
            data = encode_message(reply)  # for a batch member only the check: the array is sent whole
        except (ValueError, TypeError, RecursionError) as exc:
            # One boundary for results that are not strict JSON (NaN, sets,
            # cycles): the peer gets an error, and stdout stays clean.
            reply = make_error(ctx.id, RPCError(INTERNAL_ERROR, f"result is not valid JSON: {exc}"))
            data = encode_message(reply)
        if ctx.sink is self:
            self._write(data)  # encoded already: the common case pays for one encode
        else:
            ctx.sink.reply(reply)

    def reply(self, answer: dict | None) -> None:
        """Send an answer (None: the message needs none).

        The connection is the sink of a message that came alone; a _Batch,
        with the same method, is the sink of a batch's members.
        """
        if answer is not None:
            self.send(answer)

    def _release(self, ctx: Context) -> None:
        """A request is answered or cancelled: forget it, and wake serve() if it waits for the drain."""
        with self._lock:
            del self._in_flight[ctx.id]
            self._in_flight_bytes -= ctx.size
            if not self._in_flight:
                self._idle.notify_all()

    def cancel(self, id, reason: str | None = None) -> None:
        """The peer cancelled request `id`: stop it and send no answer.

        cancellation: unknown or already-answered ids are ignored, since a
        cancel can cross the answer on the wire.
        """
        with self._lock:
            ctx = self._in_flight.get(id)
        # cancellation: receivers "SHOULD ... Not send a response for the
        # cancelled request".  Claiming the answer is how we keep quiet: a
        # handler that finishes now finds it taken and sends nothing.
        if ctx is not None and ctx.claim():
            ctx.cancel()
            self._release(ctx)
            ctx.sink.reply(None)  # a batch still counts this member
            log.debug("%s: request %r cancelled by the peer: %s", self.name, id, reason)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if `timeout` passed first."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._in_flight, bounded(timeout))

    def abandon_in_flight(self, reason: str) -> None:
        """Answer every request still running with an error, and cancel its handler.

        The handler threads keep running (Python cannot stop a thread); a
        cooperative one sees ``cancelled`` and returns, and its late answer
        is dropped by claim().
        """
        with self._lock:
            contexts = list(self._in_flight.values())
        # Claim them all before answering any: a worker freed by the first
        # cancel must find the next request taken, not start it.
        for ctx in [c for c in contexts if c.claim()]:
            ctx.cancel()
            self._deliver(ctx, error=RPCError(INTERNAL_ERROR, f"request abandoned: {reason}"))

    # ---- the deadline thread -------------------------------------------------

    def _watch_deadlines(self) -> None:
        """Answer requests whose handler ran past its deadline with an error.

        A thread of its own because a handler cannot be interrupted: the
        answer to a request whose handler is stuck must come from elsewhere.
        Policy: the peer gets INTERNAL_ERROR at the deadline, and the handler
        is told through ``cancelled`` and left to finish.  The thread
        survives anything: without it no deadline would hold any more.
        """
        while not self._stopping:
            try:
                expired = self._next_expired()
                for ctx in expired:
                    ctx.cancel()
                    limit = ctx.deadline - ctx.started
                    self.answer(ctx, error=RPCError(
                        INTERNAL_ERROR, f"{ctx.method} timed out after {limit:g} s"))
            except Exception:  # noqa: BLE001 - log, and keep every later deadline
                log.exception("%s: error in the deadline thread", self.name)
                continue

    def _next_expired(self) -> list:
        """Sleep until a deadline passes (or stop() is called); the requests past theirs."""
        with self._lock:
            while not self._stopping:
                now = time.monotonic()
                expired = [c for c in self._in_flight.values() if c.deadline <= now]
                if expired:
                    return expired  # answered with the lock released: the write may block
                self._wake_at = min((c.deadline for c in self._in_flight.values()), default=math.inf)
                # Sleep until the earliest deadline.  _request() wakes us only
                # for an earlier one; stop() wakes us to leave.  A spurious or
                # early wake-up costs one scan of the table, nothing more.
                self._deadline_changed.wait(None if self._wake_at == math.inf else bounded(self._wake_at - now))
        return []

    # ---- sending ----------------------------------------------------------

    def send(self, msg: dict) -> bool:
        """Write one message; False if it could not be encoded or the pipe is gone."""
        try:
            data = encode_message(msg)
        except (ValueError, TypeError, RecursionError) as exc:
            log.error("%s: not sending a message that is not strict JSON: %s", self.name, exc)
            return False
        return self._write(data)

    def _write(self, data: bytes) -> bool:
        """Write an encoded line; a broken pipe tells the owner the connection is lost."""
        # A broken pipe is often noticed here, by a writer, before the reader
        # sees EOF; so the owner may hear of one loss twice, once from each.
        # Once the connection is ending, no write may outlast its deadline:
        # the shutdown would otherwise hang on a peer that stopped reading.
        timeout = None
        if self._state not in LIVE:
            timeout = CLOSE_GRACE if self.deadline is None else self.deadline - time.monotonic()
        if self.trace is not None:
            self._traced("send", json.loads(data))  # only when tracing: a decode per line
        try:
            self._writer.write(data, timeout)
            return True
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed under us; TimeoutError is an OSError
            if isinstance(exc, TimeoutError):
                log.warning("%s: dropping %d bytes the peer did not read in time", self.name, len(data))
            self.owner.connection_lost(self, f"write failed: {exc}", True)
            return False

    def notify(self, method: str, params: dict | None = None) -> bool:
        """Send a notification; False if it could not be written."""
        return self.send(make_notification(method, params))

    def request(self, method: str, params: dict | None = None, *, timeout: float,
                on_progress=None, reset_on_progress: bool = False,
                max_timeout: float | None = None, cancel_on_timeout: bool = True):
        """Send a request and wait for its result.  Blocks.

        Raises RPCError if the peer answers with an error, RequestTimeout
        (after sending notifications/cancelled) if no answer comes in time,
        ConnectionClosed if the peer goes away.  With `reset_on_progress`,
        each progress notification restarts the clock, but never past
        `max_timeout` (default: ten times `timeout`); lifecycle, Timeouts:
        "implementations SHOULD always enforce a maximum timeout".
        """
        pending = _Pending(method, on_progress, timeout, reset_on_progress, max_timeout)  # ValueError: a bad timeout
        id = next(self._ids)
        params = dict(params or {})
        if on_progress is not None:
            # progress: the token must be unique among active requests; the id is.
            params["_meta"] = {**params.get("_meta", {}), "progressToken": id}
        # Register before sending: the reader may resolve the answer before
        # send() even returns.  The _lost check sits under the same lock as
        # fail_pending(), so a request is either failed by it or refused
        # here; none can slip in between and wait for an answer that cannot come.
        data = encode_message(make_request(id, method, params or None))  # TypeError/ValueError: not JSON
        with self._lock:
            if self._lost is not None:
                raise self._lost
            self._pending[id] = pending
        try:
            if not self._write(data):
                raise self._lost or ConnectionClosed(f"cannot send {method}: the pipe is closed")
            pending.wait()
        finally:
            # Unregister, whatever happened, then look at done once more: an
            # answer that won the race with the timeout is used; one that
            # comes later finds no entry and is dropped (cancellation: the
            # sender "SHOULD ignore any response to the request that arrives
            # afterward").
            with self._lock:
                self._pending.pop(id, None)
        if not pending.done:
            # lifecycle, Timeouts: the sender "SHOULD issue a cancellation
            # notification for that request and stop waiting for a response".
            # cancellation: "the initialize request MUST NOT be cancelled by clients"
            if method != "initialize" and cancel_on_timeout:
                self.notify("notifications/cancelled", {"requestId": id, "reason": f"timed out after {timeout:g} s"})
            raise RequestTimeout(method, timeout)
        if pending.error is not None:
            raise pending.error
        return pending.result

    def fail_pending(self, error: MCPError) -> None:
        """Fail every request we are waiting on with `error`, and all later ones.

        Remembering the error makes later calls fail at once, instead of
        each waiting out its timeout on a peer that is gone.
        """
        with self._lock:
            # The first reason is the real one; later ones are its echoes.
            if self._lost is None:
                self._lost = error
            pending = list(self._pending.values())
            self._pending.clear()
        for p in pending:
            p.finish(error=error)

    # ---- closing -------------------------------------------------------------

    def stop(self, timeout: float = CLOSE_GRACE) -> None:
        """Stop the pool and the deadline thread, close our output, all within `timeout`.  Blocks.

        The reader thread is not joined here: a thread blocked in read()
        cannot be interrupted portably, so it is a daemon that ends at the
        peer's EOF or with the process, whichever comes first.  (A client
        joins it once the server has exited and its stdout has ended.)
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            self._stopping = True
            self._deadline_changed.notify()
        # Workers first: a handler that finishes now can still write its
        # answer.  The writer closes last, after the final line is written.
        self._pool.shutdown(timeout)
        if self._loop is not None:
            self._loop.stop(bounded(deadline - time.monotonic()))
        self._watchdog.join(bounded(deadline - time.monotonic()))
        if not self._writer.close(bounded(deadline - time.monotonic())):
            log.warning("%s: the peer stopped reading; leaving the output open", self.name)

    def close_output(self, timeout: float = -1) -> bool:
        """Close our output stream: for a client, the server's stdin (EOF).

        False if a write blocked past `timeout` (the peer stopped reading).
        """
        # Only the output: the reader keeps reading, so answers and the
        # server's last words still arrive while it shuts down.
        return self._writer.close(timeout)

    def run_later(self, fn, *args) -> None:
        """Run fn(*args) on a worker; fn must catch its own exceptions."""
        self._pool.submit(fn, *args)

    def threads(self) -> list:
        """The threads the connection started (the pool's excepted)."""
        return [self._reader, self._watchdog]


# ==== A clean stdout: protected_stdio =======================================

class protected_stdio:
    """Move the protocol onto private copies of fds 0 and 1 while serving.

    transports/stdio: "The server MUST NOT write anything to its stdout
    that is not a valid MCP message."  A stray print() in a tool, a C
    library writing to fd 1, or a subprocess a tool starts would corrupt
    the stream; so fd 1 and sys.stdout point at stderr, and fd 0 at
    /dev/null (so nothing else can steal the client's bytes).  Entering
    returns (input, output) streams for the protocol; leaving restores all.
    """

    def __enter__(self):
        # Flush first: anything printed before serving belongs on the
        # original stdout, before the protocol starts, not inside it.
        sys.stdout.flush()
        self._saved_out = os.dup(1)
        self._saved_stdout = sys.stdout
        protocol_in = os.dup(0)   # dup() makes non-inheritable fds: children cannot reach them
        protocol_out = os.dup(1)
        self._saved_in = os.dup(0)
        # Only now repoint fds 0 and 1: the copies above keep the pipes
        # open, so the client notices nothing.
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        if not POSIX:
            # Windows: never a \r\n translation on the protocol's fds, and
            # the standard handles a child process inherits follow fds 0 and 1.
            import msvcrt  # Windows only
            for fd in (protocol_in, protocol_out):
                msvcrt.setmode(fd, os.O_BINARY)
            self._saved_handles = _set_std_handles(msvcrt.get_osfhandle(0), msvcrt.get_osfhandle(1))
        return open(protocol_in, "rb"), open(protocol_out, "wb")

    def __exit__(self, *exc_info):
        # The protocol streams are not closed here: the reader owns the
        # input, Connection.stop() the output.
        sys.stdout = self._saved_stdout
        os.dup2(self._saved_out, 1)
        os.dup2(self._saved_in, 0)
        if not POSIX:
            _set_std_handles(*self._saved_handles)
        os.close(self._saved_out)
        os.close(self._saved_in)


def _set_std_handles(stdin_handle: int, stdout_handle: int) -> tuple:
    """Windows: set the process's standard input and output handles; return the old ones.

    subprocess hands a child these handles (GetStdHandle), not fds 0 and 1,
    so repointing the fds alone would leave a tool's child writing into the
    protocol pipe.
    """
    import ctypes  # Windows only: the stdlib has no other way to call SetStdHandle
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.GetStdHandle.restype = ctypes.c_void_p
    kernel32.SetStdHandle.argtypes = (ctypes.c_uint32, ctypes.c_void_p)
    std_input, std_output = -10 & 0xFFFFFFFF, -11 & 0xFFFFFFFF  # STD_INPUT_HANDLE, STD_OUTPUT_HANDLE
    saved = (kernel32.GetStdHandle(std_input), kernel32.GetStdHandle(std_output))
    kernel32.SetStdHandle(std_input, stdin_handle)
    kernel32.SetStdHandle(std_output, stdout_handle)
    return saved


# ==== The two eras: Era ======================================================
#
# One server process speaks both eras (2026-07-28 transports/stdio: "A
# dual-era server MAY serve both eras concurrently on the same endpoint or
# process").  Which era a request belongs to is decided in one place,
# Server.route_request: a request whose params._meta names a protocol
# version, or a method that exists only in the modern era, is modern;
# everything else belongs to the handshake.  Whatever differs between the
# eras for one request lives in an Era, so that no handler has to ask
# which era it is in:
#
#                      the handshake era            2026-07-28
#   made by            initialize, once: the        each request, from its
#                      session (Server.session)     params._meta
#   version            negotiated by initialize     params._meta, per request
#   client caps        from initialize              params._meta, per request
#   log level          logging/setLevel             params._meta logLevel
#   resource missing   -32002                       -32602
#   asking the client  requests to the client       input_required round trips
#   every result       as the handler made it       + resultType, serverInfo,
#                                                   caching hints

class Era:
    """How requests are served in one era: the handshake's session, or one 2026-07-28 request.

    ``Era(server)`` is the handshake era's: one per connection, filled in
    by initialize and shared by every request after it.
    ``Era.of_request()`` is a modern request's own, read from its envelope.
    """

    def __init__(self, server: "Server", modern: bool = False):
        self.server = server
        self.modern = modern
        self.name = "modern" if modern else "handshake"  # as METHODS' eras column spells it
        self.version = None           # negotiated by initialize, or named by the request
        self.client_info = {}
        self.client_capabilities = {}
        self.declared = {}            # the handshake's: the capabilities initialize answered with
        self.log_threshold = None     # no logs are forwarded until the client asks for a level
        # 2026-07-28 resources: "MUST return ... -32602"; before, -32002.
        self.not_found = INVALID_PARAMS if modern else RESOURCE_NOT_FOUND
        self.method, self.params = None, {}  # a modern era's request
        self.answers = {}  # its round trip: the answers to earlier rounds' questions, by key
        self._asks = itertools.count(1)

    @classmethod
    def of_request(cls, server: "Server", method: str, params: dict) -> "Era":
        """A 2026-07-28 request's era, from its envelope (basic/index, "Per-request protocol fields")."""
        # The order matters to a client probing us: a malformed envelope is
        # -32602, an unknown version -32022 (which it can act on), and only
        # then is the method judged.
        meta = params.get("_meta")
        if not isinstance(meta, dict):
            raise RPCError(INVALID_PARAMS, f"{method}: params._meta must carry {META_VERSION} "
                                           f"and {META_CAPABILITIES}")
        missing = [key for key in (META_VERSION, META_CAPABILITIES) if key not in meta]
        if missing:
            # "A request missing any required field is malformed; the server
            # MUST reject it with JSON-RPC error code -32602"
            raise RPCError(INVALID_PARAMS, f"params._meta lacks {', '.join(missing)}")
        era = cls(server, modern=True)
        era.version, era.client_capabilities = meta[META_VERSION], meta[META_CAPABILITIES]
        era.client_info = meta.get(META_CLIENT_INFO) or {}  # optional, and not checked
        if not isinstance(era.version, str):
            raise RPCError(INVALID_PARAMS, f"{META_VERSION} must be a string")
        if era.version not in MODERN_VERSIONS:
            # versioning: "MUST respond with an UnsupportedProtocolVersionError
            # listing the versions it does support": those a modern client can
            # pick here, the same list as server/discover's supportedVersions
            # (a handshake version is no answer to a modern request).
            raise RPCError(UNSUPPORTED_VERSION, "Unsupported protocol version",
                           {"supported": list(MODERN_VERSIONS), "requested": era.version})
        if not isinstance(era.client_capabilities, dict):
            raise RPCError(INVALID_PARAMS, f"{META_CAPABILITIES} must be an object")
        level = meta.get(META_LOG_LEVEL)
        if level is not None and (not isinstance(level, str) or level not in LOG_LEVELS):
            raise RPCError(INVALID_PARAMS, f"unknown log level {level!r}")
        # logging: "MUST NOT emit notifications/message for a request that
        # does not include" a log level.
        era.log_threshold = LOG_LEVELS.get(level)
        era.method, era.params = method, params
        spec = METHODS.get(method)
        if spec is not None and spec.round_trip and "requestState" in params:
            era.answers = server.round_trips.answers(method, params)
        if level is not None:
            server._log_level_chosen()
        return era

    @property
    def capabilities(self) -> dict:
        """What the server serves in this era.

        The handshake's is a snapshot taken at initialize: a tool registered
        later is served only if tools were declared then, since no capability
        can be added after negotiation.  A modern one is computed per
        request, nothing negotiated (basic/index, Statelessness: "Servers
        MUST NOT rely on prior requests over the same connection to
        establish context").
        """
        return self.server._capabilities() if self.modern else self.declared

    def ask(self, method: str, params: dict | None, capability: str | None, send):
        """The answer to a handler's question for the client (roots, sampling, elicitation).

        The handshake era asks with a request of its own: send() does it.
        2026-07-28 (mrtr) has the server "MUST NOT" send requests: the n-th
        question of a run is answered by key n of the retry's
        inputResponses, or raises InputRequired to go and get it.
        """
        if not self.modern:
            # lifecycle: "Both parties MUST only use capabilities that were successfully negotiated."
            if capability is not None and capability not in self.client_capabilities:
                raise MCPError(f"the client did not declare the {capability!r} capability, "
                               f"so {method} cannot be sent")
            return send()
        if not METHODS[self.method].round_trip or method not in ASKABLE:
            raise MCPError(f"{method} cannot be asked during {self.method} in {self.version}")
        # mrtr: "Servers MUST NOT send an inputRequests that the client has
        # not declared support for in its capabilities"; 2026-07-28 names the error.
        if capability is not None and capability not in self.client_capabilities:
            raise RPCError(MISSING_CAPABILITY, f"this request needs the client's {capability} capability",
                           {"requiredCapabilities": {capability: {}}})
        key = str(next(self._asks))
        if key in self.answers:
            return self.answers[key]
        raise InputRequired(key, {"method": method, "params": params} if params is not None else {"method": method})

    def run(self, method: str, handler) -> dict:
        """The handler's result in this era: as it made it, or (modern) complete or input_required."""
        if not self.modern:
            return handler()
        return settle(handler, lambda outcome: self._complete(method, outcome))

    def _complete(self, method: str, outcome) -> dict:
        """One modern round's outcome as a result."""
        try:
            return self.finish(method, outcome())
        except InputRequired as need:
            # No caching hints: mrtr results are not to be cached.
            return {"resultType": "input_required", "inputRequests": {need.key: need.request},
                    "requestState": self.server.round_trips.seal(self.method, self.params, self.answers, need.key),
                    "_meta": {META_SERVER_INFO: self.server._server_info(self.version)}}

    def finish(self, method: str, result: dict) -> dict:
        """A modern result: basic/index, "The result MUST include a resultType field"; caching hints."""
        result = dict(result, resultType="complete")
        result["_meta"] = {**result.get("_meta", {}),
                           META_SERVER_INFO: self.server._server_info(self.version)}
        if METHODS[method].cacheable:
            # caching: "Servers MUST include caching hints" on these results.
            result["ttlMs"] = self.server.cache_ttl_ms
            result["cacheScope"] = self.server.cache_scope
        return result


# ==== Server =================================================================

# The kinds of things a server registers, and the notification that says
# their list changed.
KINDS = {"tools": "notifications/tools/list_changed",
         "resources": "notifications/resources/list_changed",
         "prompts": "notifications/prompts/list_changed"}


class _Entry:
    """A registered tool, resource, resource template or prompt: its function and its wire definition."""

    def __init__(self, fn, definition: dict, context_param: str | None, *, timeout: float | None = None,
                 replaced_by: str | None = None, pattern: "re.Pattern | None" = None):
        self.fn = fn
        self.definition = definition
        self.context_param = context_param  # the parameter that is handed the request's Context
        self.timeout = timeout              # a tool's own deadline, if it has one
        self.replaced_by = replaced_by      # a deprecated tool: the tool to use instead
        self.pattern = pattern              # a resource template: matches the URIs it serves


class Server:
    """An MCP server: register tools, resources and prompts, then ``run()``.

    One Server serves one client at a time, over stdio (``run``) or over any
    pair of binary streams (``serve``).  Registering after the handshake
    sends the matching list_changed notification.  The class attributes
    below are its configuration; each may be overridden by keyword:
    ``Server("demo", tool_timeout=10)``.
    """

    tool_timeout = TOOL_TIMEOUT     # a handler's deadline, unless the tool sets its own
    drain_timeout = DRAIN_TIMEOUT   # the deadline of the whole shutdown
    page_size = PAGE_SIZE
    max_workers = MAX_WORKERS
    max_in_flight = MAX_IN_FLIGHT
    max_line = MAX_LINE_BYTES
    # 2026-07-28 caching hints.  Policy: 0 ms ("immediately stale") and
    # private by default, since tools can change at any time and may depend
    # on who asks; a server that knows better says so.
    cache_ttl_ms = 0
    cache_scope = "private"
    trace = None  # trace(kind, detail, at) for every message and state change (Connection.trace)

    def __init__(self, name: str, version: str = "0.0.0", *, title: str | None = None,
                 description: str | None = None, website_url: str | None = None,
                 icons: list | None = None, instructions: str | None = None, **options):
        # serverInfo; the fields are sent only to versions that define them.
        self.info = {"name": name, "version": version, "title": title, "description": description,
                     "websiteUrl": website_url, "icons": icons}
        self.instructions = instructions
        configure(self, options)
        check_timeout(self.tool_timeout, "tool_timeout")
        check_timeout(self.drain_timeout, "drain_timeout")
        if not (isinstance(self.cache_ttl_ms, int) and self.cache_ttl_ms >= 0) \
                or self.cache_scope not in ("public", "private"):
            # caching: "Servers MUST provide a ttlMs value that is >= 0"; two scopes exist.
            raise ValueError("cache_ttl_ms must be an int >= 0 and cache_scope 'public' or 'private'")
        # Guards the registries and the session: tools may be registered
        # from any thread while requests read them.  Held while a few
        # notifications are sent, for their order on the wire: a
        # subscription's ack before anything on it, and held notifications
        # before any later one.
        self._lock = threading.RLock()
        self._registry = {kind: {} for kind in KINDS}  # kind -> name or URI -> _Entry
        self._completers = {}   # (prompt name or template URI, argument name) -> function
        self._cleanups = []     # run at shutdown, last registered first
        self._log_handler = None  # made by the log_handler property, on first use
        self._round_trips = None  # made by the round_trips property, on first use
        # run() forwards the root logger's records: log_handler is attached
        # to it once a client chooses a level, and taken off when run() ends.
        self._forward_root = False
        self._root_attached = False
        self.conn = None
        self._why = None             # why serving ended (the first reason given)
        self._failed = False         # whether it ended in an error
        # A gate, held whenever no shutdown is pending: shutdown() releases
        # it, and that wakes serve().  A Lock, not an Event: a signal handler
        # may release it while the main thread is blocked acquiring it, and
        # no other lock is involved, so the handler cannot deadlock the main
        # thread.  Held from the start, so a signal that arrives before
        # serve() is not lost: serve() then stops at once.
        self._gate = threading.Lock()
        self._gate.acquire()
        # Taken (without blocking) by the first shutdown() of each serve(),
        # so the gate is released once, whoever else calls later: EOF and a
        # failed write often both report one loss.
        self._once = threading.Lock()
        self._reset_session()

    def _reset_session(self) -> None:
        """Forget everything negotiated with the previous client."""
        self.session = Era(self)     # the handshake era's, filled in by initialize
        self._subscriptions = set()  # resource URIs the client subscribed to
        self._held = []              # notifications raised before the handshake completed
        self._listeners = {}         # 2026-07-28 subscriptions/listen: request id -> (Context, filter)

    # ---- the Connection's owner protocol ------------------------------------

    def route_request(self, msg: dict):
        """Decide, in arrival order on the reader thread, how to answer a request.

        The one place where the eras part (see "The two eras" above); then
        METHODS says the rest: whether the method exists in this era, the
        capability it needs, and where its handler runs.
        """
        method = msg["method"]
        params = msg.get("params", {})
        spec = METHODS.get(method)
        meta = params.get("_meta")
        # The version key alone decides: a half-built envelope still routes
        # modern, and is refused there with -32602 rather than misread as legacy.
        if (spec is not None and spec.eras == MODERN) or (isinstance(meta, dict) and META_VERSION in meta):
            era = Era.of_request(self, method, params)  # raises RPCError for a bad envelope
        else:
            era = self.session
            self._check_handshake(method)
        if spec is not None and era.name not in spec.eras:
            raise RPCError(METHOD_NOT_FOUND, f"{method} does not exist in {era.version}")
        # A method behind a capability we did not declare does not exist for
        # this client: the same answer as a method nobody has heard of.
        if spec is None or (spec.capability is not None and spec.capability not in era.capabilities):
            raise RPCError(METHOD_NOT_FOUND, f"method not found: {method}")
        handler = getattr(self, spec.handler)
        if spec.inline:
            return handler(era, params)

        # The era travels with the work, decided here in arrival order; the
        # handler learns it from ctx.era and never asks the connection.
        def work(ctx: Context):
            ctx.era = era
            return era.run(method, lambda: handler(ctx, params))
        return work, self._timeout(method, params)

    def _check_handshake(self, method: str) -> None:
        """The handshake era's order: ping at any time, initialize first, the rest after it."""
        state = self.conn.state
        if method == "ping":
            return  # ping: answered at any time, even before initialize
        if state not in LIVE:
            raise RPCError(INTERNAL_ERROR, "the server is shutting down")
        # Policy: until the handshake is complete, refuse everything else
        # with an error that echoes the id.
        if method != "initialize" and state in (State.CONNECTED, State.INITIALIZING):
            raise RPCError(INVALID_PARAMS, f"{method} received before initialization was complete")

    def _timeout(self, method: str, params: dict) -> float:
        """A request's deadline: the tool's own, or the server's tool_timeout."""
        name = params.get("name")
        tool = self._registry["tools"].get(name) if method == "tools/call" and isinstance(name, str) else None
        return tool.timeout if tool is not None and tool.timeout is not None else self.tool_timeout

    def handle_notification(self, msg: dict) -> None:
        """Notifications from the client, in arrival order: initialized completes the handshake."""
        method = msg["method"]
        if method == "notifications/initialized":
            with self._lock:
                if self.conn.state is not State.INITIALIZING:
                    log.warning("ignoring %s in state %s", method, self.conn.state.value)
                    return
                # lifecycle: the client sends initialized "to indicate it is
                # ready to begin normal operations"; from here we may too.
                self.conn.advance(Event.INITIALIZED)
                held, self._held = self._held, []
                for method, params in held:
                    self.conn.notify(method, params)
        elif self.conn.state is State.CONNECTED:
            log.debug("ignoring %s before initialize", method)
        else:
            log.debug("ignoring notification %s", method)

    def connection_lost(self, conn: Connection, reason: str, error: bool) -> None:
        """The client went away (EOF) or our stdout broke: shut down."""
        # Called on the reader or a writing thread: shutdown() only wakes
        # serve(), which runs the sequence on its own thread.
        if conn is not self.conn:
            return  # an earlier serve()'s reader, reaching its EOF late
        # Requests we sent the client (roots/list, say) can never be answered now.
        conn.fail_pending(ConnectionClosed(reason))
        self._stop_serving(reason, error, conn)

    # ---- the handshake --------------------------------------------------------

    def _ping(self, era: Era, params: dict) -> dict:
        """ping: "The receiver MUST respond promptly with an empty response"."""
        return {}

    def _initialize(self, era: Era, params: dict) -> dict:
        """lifecycle, Initialization: negotiate the version, declare capabilities."""
        # Runs inline on the reader: the state check and the move to
        # INITIALIZING cannot be split by a second initialize.
        conn = self.conn
        if conn.state is not State.CONNECTED:
            raise RPCError(INVALID_REQUEST, "initialize was already received on this connection")
        requested = params.get("protocolVersion")
        capabilities = params.get("capabilities", {})
        client_info = params.get("clientInfo", {})
        if not isinstance(requested, str):
            raise RPCError(INVALID_PARAMS, "initialize: protocolVersion must be a string")
        if not isinstance(capabilities, dict) or not isinstance(client_info, dict):
            raise RPCError(INVALID_PARAMS, "initialize: capabilities and clientInfo must be objects")
        # lifecycle: "If the server supports the requested protocol version,
        # it MUST respond with the same version.  Otherwise, the server MUST
        # respond with another protocol version it supports."
        # The offer "SHOULD be the latest version supported by the server";
        # whether the client can live with it is the client's decision.
        version = requested
        if requested not in PROTOCOL_VERSIONS:
            log.warning("client asked for protocol version %r; offering %s",
                        requested, LATEST_PROTOCOL_VERSION)
            version = LATEST_PROTOCOL_VERSION
        # Under the lock, so the declaration and the registries agree: a
        # registration after this point is served, and announced with
        # list_changed, only if its kind was declared here.
        with self._lock:
            era.version = conn.protocol_version = version
            era.client_capabilities = capabilities
            era.client_info = client_info
            era.declared = self._capabilities()
            conn.advance(Event.INITIALIZE)
        result = {"protocolVersion": version, "capabilities": era.declared,
                  "serverInfo": self._server_info(version)}
        if self.instructions:
            result["instructions"] = self.instructions
        return result

    def _capabilities(self) -> dict:
        """Policy: declare only what is registered (and logging, which is always served)."""
        declared = {"logging": {}}
        for kind, registry in self._registry.items():
            if registry:
                declared[kind] = {"listChanged": True}
        if "resources" in declared:
            declared["resources"]["subscribe"] = True
        if self._completers:
            declared["completions"] = {}
        return declared

    def _server_info(self, version: str) -> dict:
        """serverInfo with only the fields `version` defines."""
        return {k: v for k, v in self.info.items() if v is not None and has(version, "serverInfo." + k)}

    def _definition(self, definition: dict, version: str) -> dict:
        """A tool, resource or prompt definition with only the fields `version` defines."""
        return {k: v for k, v in definition.items() if v is not None and has(version, k)}

    # ---- serving and shutting down -------------------------------------------

    def serve(self, instream, outstream) -> str:
        """Serve one client over two binary streams until the end; return why it ended.

        Blocks.  It ends at the input's EOF, a broken output, or shutdown().
        """
        self._reset_session()
        self.conn = Connection(instream, outstream, self, name=self.info["name"], trace=self.trace,
                               max_workers=self.max_workers, max_in_flight=self.max_in_flight,
                               max_line=self.max_line)
        self.conn.open()
        self._gate.acquire()  # released by shutdown(); held again once we pass
        self._finish()
        why, self._why = self._why, None
        self._once.release()  # ready for the next serve()
        return why

    def shutdown(self, reason: str = "shutdown() was called", *, error: bool = False) -> None:
        """Make serve() stop; safe from any thread and from a signal handler.

        Does not block: serve() runs the shutdown sequence and returns.
        """
        self._stop_serving(reason, error, None)

    def _stop_serving(self, reason: str, error: bool, conn: Connection | None) -> None:
        """shutdown(), or the loss of `conn`, unless that connection has ended already."""
        # The first caller wins; later ones (EOF and a failed write often
        # come together) change nothing.  A non-blocking acquire is safe in
        # a signal handler: it can never wait.
        if not self._once.acquire(blocking=False):
            return
        # serve() releases _once only after its connection is CLOSED: a loss
        # reported that late belongs to a finished serve(), not the next one.
        if conn is not None and (conn is not self.conn or conn.state is State.CLOSED):
            self._once.release()
            return
        self._why = reason
        self._failed = error
        self._gate.release()

    def _finish(self) -> None:
        """The one shutdown sequence, whatever started it, within one deadline.

        lifecycle/Shutdown asks for an exit "within a reasonable time";
        drain_timeout bounds all of it, whatever the tools and the client
        do: a handler that ignores cancellation is abandoned, never joined,
        and output the client does not read by then is dropped.
        """
        conn = self.conn
        deadline = conn.deadline = time.monotonic() + self.drain_timeout
        # 1. Stop taking requests: in CLOSING (or FAILED) new ones get an error.
        conn.advance(Event.FAIL if self._failed else Event.CLOSE, only_from=LIVE)
        #    Open subscriptions never finish by themselves: end them now.
        self._end_subscriptions()
        # 2. Let in-flight requests finish, up to the deadline.  A failed
        #    connection cannot deliver answers: skip the wait.
        if conn.state is State.CLOSING and not conn.wait_idle(deadline - time.monotonic()):
            log.warning("requests still running after %g s; abandoning them", self.drain_timeout)
        # 3. Answer whatever is left with an error, and cancel its handler.
        conn.abandon_in_flight(self._why)
        # 4. Run the cleanup hooks, last registered first.
        for hook in reversed(self._cleanups):
            try:
                hook()
            except Exception:  # noqa: BLE001 - one failing hook must not skip the others
                log.exception("cleanup hook %r failed", hook)
        # 5. Stop the workers and the deadline thread, then close our output,
        #    in what is left of the deadline: an abandoned handler's thread is
        #    left to the process's exit.
        conn.stop(max(0.0, deadline - time.monotonic()))
        conn.advance(Event.FINISH)
        log.info("server stopped: %s", self._why)

    def run(self) -> int:
        """Serve over this process's stdin and stdout; return the exit code.

        The entry point for a server program: ``raise SystemExit(server.run())``.
        It protects stdout (see protected_stdio), forwards logging to the
        client, and, on the main thread, turns SIGTERM and SIGINT into the
        same shutdown as stdin EOF.  0 for a deliberate end (EOF, SIGTERM,
        SIGINT), 1 for an error (the client closed our stdout, say).

        Forwarded logs are the root logger's records: a client that asks
        for debug gets them only if the root logger's level lets them
        through (give your stderr handler its own level, as main() does).
        """
        handlers = {}
        with protected_stdio() as (protocol_in, protocol_out):
            # signal.signal() works only on the main thread; elsewhere the
            # server still ends at stdin EOF, which is the portable signal.
            if threading.current_thread() is threading.main_thread():
                # Windows adds SIGBREAK: Ctrl+Break, or CTRL_BREAK_EVENT from a host.
                for signum in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGBREAK", None)):
                    if signum is not None:
                        handlers[signum] = signal.signal(signum, self._on_signal)
            self._forward_root = True  # attached by _log_level_chosen(), once a client asks
            # Everything built so far lives as long as the process: frozen,
            # the garbage collector never walks it again, and the final
            # collection at exit takes a third of the time.
            gc.freeze()
            try:
                self.serve(protocol_in, protocol_out)
            finally:
                with self._lock:
                    if self._root_attached:
                        log.logger().root.removeHandler(self.log_handler)
                    self._forward_root = self._root_attached = False
                for signum, previous in handlers.items():
                    signal.signal(signum, previous)
        return 1 if self._failed else 0

    def _on_signal(self, signum: int, frame) -> None:
        # Only sets the flag EOF sets: one shutdown path (no work in a handler).
        self.shutdown(signal.Signals(signum).name)


    # ---- talking to the client ----------------------------------------------

    @property
    def log_handler(self):
        """A logging.Handler that forwards records to the client; attach it to any logger.

        ``run()`` attaches it to the root logger as soon as the client
        chooses a level.  Made (and logging imported) on first use.
        """
        if self._log_handler is None:
            import logging
            handler = logging.Handler()
            handler.emit = lambda record: forward_record(self, record)  # a plain Handler that forwards
            self._log_handler = handler
        return self._log_handler

    @property
    def round_trips(self) -> "RoundTrips":
        """What seals 2026-07-28 requestState; made (with its key) on first use."""
        with self._lock:
            if self._round_trips is None:
                self._round_trips = RoundTrips()
            return self._round_trips

    def _log_level_chosen(self) -> None:
        """A client asked for log messages: from now on run() forwards the root logger's records."""
        with self._lock:
            if self._forward_root and not self._root_attached:
                self._root_attached = True
                log.logger().root.addHandler(self.log_handler)

    def notify(self, method: str, params: dict | None = None) -> None:
        """Send a notification, or hold it until the handshake completes.

        lifecycle: before the client's initialized notification, the server
        "SHOULD NOT send requests other than pings and logging".  Policy:
        the same holds for notifications, which wait until then.
        """
        # Under the lock that handle_notification() holds while it moves to
        # READY and flushes _held: a notification is either held and flushed
        # in order, or sent after the flush, never before it.
        with self._lock:
            conn = self.conn
            if conn is None or conn.state in (State.CLOSED, State.FAILED):
                return
            if conn.state is not State.READY:
                # Policy: hold a bounded number.  A client that never sends
                # initialize (a 2026-07-28 one, say) never releases them.
                if conn.state is not State.CLOSING and len(self._held) < MAX_HELD:
                    self._held.append((method, params))
                return
            conn.notify(method, params)

    def notify_resource_updated(self, uri: str) -> None:
        """Tell the client a subscribed resource changed (resources/subscribe, or a listen filter)."""
        if uri in self._subscriptions:
            self.notify("notifications/resources/updated", {"uri": uri})
        self._publish("notifications/resources/updated", {"uri": uri},
                      lambda wanted: uri in wanted.get("resourceSubscriptions", ()))

    def send_log(self, level: str, data, logger: str | None = None, era=None) -> None:
        """Send notifications/message if the client asked for `level` or lower.

        In the modern era the level travels with each request, so a record
        is forwarded only from inside a handler whose request asked for logs.
        """
        # Outside a handler (a background thread, say) there is no request
        # to tie the record to, so the handshake era's level decides.
        ctx = Context.current()
        if ctx is not None and ctx.answered:
            # cancellation: after a cancel (or the answer) "MUST NOT send
            # any further messages for it"; a handler still running is late.
            return
        if era is None:
            era = ctx.era if ctx is not None and ctx.era is not None else self.session
        threshold = era.log_threshold
        conn = self.conn
        if threshold is None or conn is None or LOG_LEVELS.get(level, 0) < threshold:
            return
        params = {"level": level, "data": data}
        if logger:
            params["logger"] = logger
        conn.notify("notifications/message", params)

    # ---- registration ---------------------------------------------------------
    #
    # The Server's lifecycle ends above.  From here on: what it serves, and
    # the handler of each method in METHODS.

    def tool(self, fn=None, *, name: str | None = None, title: str | None = None,
             description: str | None = None, timeout: float | None = None,
             annotations: dict | None = None, input_schema: dict | None = None,
             output_schema: dict | None = None, deprecated: str | None = None):
        """Register a function as a tool; works as ``@server.tool()`` or ``server.tool(fn)``.

        The inputSchema comes from the type hints and defaults, the
        outputSchema from a structured return annotation (a TypedDict, a
        dataclass, dict[str, T]), the description from the docstring;
        ``input_schema`` and ``output_schema`` give either one whole, as
        JSON Schema, passed through untouched.  ``timeout`` overrides the
        server's tool_timeout.  ``deprecated="new_tool"`` keeps the tool
        callable and says in its description what replaces it.
        """
        if timeout is not None:
            check_timeout(timeout)
        for schema in (input_schema, output_schema):
            if schema is not None and not (isinstance(schema, dict) and schema.get("type") == "object"):
                # tools: inputSchema and outputSchema are JSON Schema objects of type "object".
                raise ValueError(f"a tool's schemas must be objects with \"type\": \"object\", not {schema!r}")

        def register(fn):
            schema, context_param = signature_schema(fn)
            returns = type_hints(fn).get("return")
            text = description if description is not None else _description(fn)
            if deprecated:
                text = f"DEPRECATED: use {deprecated} instead. {text}".strip()
            definition = {"name": name or fn.__name__, "title": title, "description": text,
                          "inputSchema": input_schema or schema,
                          "outputSchema": output_schema or (schema_for(returns) if is_structured(returns) else None),
                          "annotations": annotations}
            entry = _Entry(fn, definition, context_param, timeout=timeout, replaced_by=deprecated)
            self._register("tools", definition["name"], entry)
            return fn
        return register(fn) if fn is not None else register

    def resource(self, uri: str, *, name: str | None = None, title: str | None = None,
                 description: str | None = None, mime_type: str | None = "text/plain"):
        """Register a function as a resource: ``@server.resource("notes://today")``.

        A URI with ``{name}`` parts is a template; its function gets the parts
        as keyword arguments.  Return a str (text), bytes (a blob), or a list
        of ResourceContents dicts.
        """
        def register(fn):
            templated = "{" in uri
            definition = {"uriTemplate" if templated else "uri": uri, "name": name or fn.__name__,
                          "title": title, "description": description or _description(fn) or None,
                          "mimeType": mime_type}
            pattern = _template_pattern(uri) if templated else None
            self._register("resources", uri, _Entry(fn, definition, context_parameter(fn), pattern=pattern))
            return fn
        return register

    def prompt(self, fn=None, *, name: str | None = None, title: str | None = None,
               description: str | None = None):
        """Register a function as a prompt; its parameters are the prompt's arguments.

        Return a str (one user message) or a list of PromptMessage dicts.
        Arguments are strings in the protocol: a parameter annotated with
        anything but str (or Annotated[str, "its description"]) is refused
        here, with ValueError, rather than handed a string it did not expect.
        """
        def register(fn):
            arguments = [prompt_argument(fn, param, default) for param, default in parameters(fn)
                         if param != context_parameter(fn)]
            definition = {"name": name or fn.__name__, "title": title,
                          "description": description or _description(fn) or None,
                          "arguments": arguments}
            self._register("prompts", definition["name"], _Entry(fn, definition, context_parameter(fn)))
            return fn
        return register(fn) if fn is not None else register

    def completion(self, ref: str, argument: str):
        """Register a completer for one argument: ``@server.completion("review", "focus")``.

        `ref` is a prompt's name or a resource template's URI.  The function
        gets the partial value and the other arguments already filled in
        (2025-06-18 and later send them; a dict, empty otherwise) and
        returns the matching values; at most 100 are sent.
        """
        def register(fn):
            with self._lock:
                self._completers[ref, argument] = fn
            return fn
        return register

    def remove(self, kind: str, key: str) -> None:
        """Unregister a tool, resource or prompt (kind is "tools", "resources" or "prompts")."""
        with self._lock:
            del self._registry[kind][key]
        self._list_changed(kind)

    def _register(self, kind: str, key: str, entry: _Entry) -> None:
        """Add or replace one entry, then announce that the list changed."""
        with self._lock:
            self._registry[kind][key] = entry
        self._list_changed(kind)

    def _list_changed(self, kind: str) -> None:
        """Tell the client, in whichever era it speaks, that a list changed."""
        method = KINDS[kind]
        # tools: "Servers that declared the listChanged capability SHOULD send a notification"
        if self.session.declared.get(kind, {}).get("listChanged"):
            self.notify(method)
        self._publish(method, {}, lambda wanted: wanted.get(f"{kind}ListChanged"))

    def on_shutdown(self, fn):
        """Register a cleanup hook, run once when serving ends (usable as a decorator)."""
        self._cleanups.append(fn)
        return fn

    # ---- tools, resources, prompts, logging ----------------------------------

    def _listing(self, ctx: Context, kind: str, key: str, params: dict,
                 accept=lambda entry: True) -> dict:
        """One page of a registry's definitions, as this request's version sees them."""
        # Registration order: deterministic, as 2026-07-28 tools asks.
        with self._lock:
            entries = [self._definition(e.definition, ctx.era.version)
                       for e in self._registry[kind].values() if accept(e)]
        items, following = page(entries, params.get("cursor"), self.page_size)
        result = {key: items}
        if following is not None:
            result["nextCursor"] = following
        return result

    def _list_tools(self, ctx, params: dict) -> dict:
        """tools/list."""
        return self._listing(ctx, "tools", "tools", params)

    def _call_tool(self, ctx: Context, params: dict) -> dict:
        """tools/call: check the arguments, run the tool, turn what it returns into a result."""
        name = params.get("name")
        arguments = params.get("arguments", {})
        tool = self._registry["tools"].get(name) if isinstance(name, str) else None
        if tool is None:
            # tools: unknown tools are a protocol error, -32602
            raise RPCError(INVALID_PARAMS, f"unknown tool: {name!r}")
        if not isinstance(arguments, dict):
            raise RPCError(INVALID_PARAMS, "tools/call: arguments must be an object")
        problem = validate(tool.definition["inputSchema"], arguments, "arguments")
        if problem is not None:
            # 2025-11-25 tools: input validation errors are tool execution
            # errors (isError), so the model can correct itself; earlier
            # revisions list "invalid arguments" as a protocol error.
            if has(ctx.era.version, "argument errors as results"):
                return error_result(f"invalid arguments for {name}: {problem}")
            raise RPCError(INVALID_PARAMS, f"invalid arguments for {name}: {problem}")
        if tool.replaced_by:
            log.warning("deprecated tool %s called; use %s", name, tool.replaced_by)
        # The Context goes in by keyword, after validation: it is not an
        # argument the client can see in the schema or supply itself.
        if tool.context_param:
            arguments = {**arguments, tool.context_param: ctx}
        return settle(lambda: tool.fn(**arguments), lambda outcome: self._tool_outcome(ctx, tool, outcome))

    def _tool_outcome(self, ctx: Context, tool: _Entry, outcome) -> dict:
        """What a tool returned, or raised, as a CallToolResult."""
        name = tool.definition["name"]
        try:
            value = outcome()
        except ToolError as exc:
            return error_result(str(exc))
        except (RPCError, InputRequired):
            raise  # a protocol error on purpose (say -32021), or a question for the client
        except BaseException as exc:  # noqa: BLE001 - even sys.exit() in a tool must not take a worker down
            # tools: errors the model should see are results with isError
            log.error("tool %s failed", name, exc_info=exc)
            return error_result(f"{type(exc).__name__}: {exc}")
        try:
            result = tool_result(value, ctx.era.version)
        except (ValueError, TypeError, RecursionError) as exc:
            # NaN, inf (say from an argument like 1e400 inside a list), a set:
            # the model is told, and stdout stays strict JSON.
            return error_result(f"{name} returned a value that is not valid JSON: {exc}")
        output_schema = tool.definition.get("outputSchema")
        if output_schema is not None:
            # tools, Output Schema: "Servers MUST provide structured results
            # that conform to this schema."  A result that does not is the
            # tool's failure, told to the model; never sent as structuredContent.
            structured = result.get("structuredContent", _structured(value))
            problem = validate(output_schema, structured, "structuredContent") if isinstance(structured, dict) \
                else f"structuredContent: expected an object, the tool returned {type(value).__name__}"
            if problem:
                log.warning("tool %s broke its outputSchema: %s", name, problem)
                return error_result(f"{name} returned a result that does not match its outputSchema: {problem}")
        return result

    def _list_resources(self, ctx, params: dict) -> dict:
        """resources/list: the fixed URIs; templates are listed separately."""
        return self._listing(ctx, "resources", "resources", params, lambda r: r.pattern is None)

    def _list_templates(self, ctx, params: dict) -> dict:
        """resources/templates/list."""
        return self._listing(ctx, "resources", "resourceTemplates", params,
                             lambda r: r.pattern is not None)

    def _find_resource(self, uri, not_found: int = RESOURCE_NOT_FOUND) -> tuple[_Entry, dict]:
        """The resource serving `uri`, and the template variables it matched."""
        if not isinstance(uri, str):
            raise RPCError(INVALID_PARAMS, "uri must be a string")
        with self._lock:
            resources = list(self._registry["resources"].values())
        # Exact URIs before templates, whatever the registration order: a
        # template such as notes://{name} must not shadow notes://today.
        for resource in resources:
            if resource.pattern is None and resource.definition["uri"] == uri:
                return resource, {}
        for resource in resources:
            match = resource.pattern and resource.pattern.match(uri)
            if match:
                return resource, match.groupdict()
        # resources: "Resource not found: -32002" (-32602 since 2026-07-28)
        raise RPCError(not_found, "Resource not found", {"uri": uri})

    def _read_resource(self, ctx, params: dict) -> dict:
        """resources/read: text as text, bytes as a base64 blob."""
        uri = params.get("uri")
        resource, variables = self._find_resource(uri, ctx.era.not_found)
        if resource.context_param:
            variables = {**variables, resource.context_param: ctx}
        return settle(lambda: resource.fn(**variables),
                      lambda outcome: self._resource_contents(resource, uri, outcome()))

    @staticmethod
    def _resource_contents(resource: _Entry, uri: str, value) -> dict:
        """What a resource function returned, as a ReadResourceResult."""
        mime = resource.definition.get("mimeType")
        if isinstance(value, str):
            contents = [{"uri": uri, "text": value}]
        elif isinstance(value, bytes):
            import base64
            contents = [{"uri": uri, "blob": base64.b64encode(value).decode("ascii")}]
        elif isinstance(value, dict):
            contents = [dict(value)]
        else:
            contents = [dict(item) for item in value]  # copies: the function's own data stays as it was
        for item in contents:
            item.setdefault("uri", uri)
            if mime:
                item.setdefault("mimeType", mime)
        return {"contents": contents}

    def _subscribe(self, era: Era, params: dict) -> dict:
        """resources/subscribe: later notify_resource_updated(uri) calls reach the client.

        Inline on the reader, like unsubscribe: a subscribe and an
        unsubscribe sent back to back take effect in that order.
        """
        uri = params.get("uri")
        self._find_resource(uri)
        with self._lock:
            self._subscriptions.add(uri)
        return {}

    def _unsubscribe(self, era: Era, params: dict) -> dict:
        """resources/unsubscribe; an unknown URI is not an error, just nothing to do."""
        with self._lock:
            self._subscriptions.discard(params.get("uri"))
        return {}

    def _list_prompts(self, ctx, params: dict) -> dict:
        """prompts/list."""
        return self._listing(ctx, "prompts", "prompts", params)

    def _get_prompt(self, ctx, params: dict) -> dict:
        """prompts/get: required arguments checked, a str becomes one user message."""
        name = params.get("name")
        arguments = params.get("arguments", {})
        prompt = self._registry["prompts"].get(name) if isinstance(name, str) else None
        if prompt is None:
            raise RPCError(INVALID_PARAMS, f"unknown prompt: {name!r}")
        if not isinstance(arguments, dict):
            raise RPCError(INVALID_PARAMS, "prompts/get: arguments must be an object")
        for arg in prompt.definition["arguments"]:
            if arg["required"] and arg["name"] not in arguments:
                raise RPCError(INVALID_PARAMS, f"prompt {name} needs argument {arg['name']!r}")
        known = {a["name"] for a in prompt.definition["arguments"]}
        arguments = {k: v for k, v in arguments.items() if k in known}
        if prompt.context_param:
            arguments[prompt.context_param] = ctx
        return settle(lambda: prompt.fn(**arguments),
                      lambda outcome: self._prompt_messages(prompt, outcome()))

    @staticmethod
    def _prompt_messages(prompt: _Entry, value) -> dict:
        """What a prompt function returned, as a GetPromptResult."""
        if isinstance(value, str):
            value = [value]
        messages = [{"role": "user", "content": {"type": "text", "text": m}} if isinstance(m, str) else m
                    for m in value]
        result = {"messages": messages}
        if prompt.definition.get("description"):
            result["description"] = prompt.definition["description"]
        return result

    def _complete(self, ctx, params: dict):
        """completion/complete: the values for one argument of a prompt or a resource template."""
        ref, argument = params.get("ref"), params.get("argument")
        if not isinstance(ref, dict) or not isinstance(argument, dict) \
                or not isinstance(argument.get("name"), str) or not isinstance(argument.get("value"), str):
            raise RPCError(INVALID_PARAMS, f"completion/complete: ref must be an object, argument {{name, value}} strings")
        kind = ref.get("type")
        key = ref.get("name") if kind == "ref/prompt" else ref.get("uri") if kind == "ref/resource" else None
        with self._lock:
            known = key in self._registry["prompts"] if kind == "ref/prompt" else (
                key in self._registry["resources"] and self._registry["resources"][key].pattern is not None)
            complete = self._completers.get((key, argument["name"]))
        if not known:
            # completion, Error Handling: "Invalid prompt name: -32602"
            raise RPCError(INVALID_PARAMS, f"completion/complete: unknown reference {kind} {key!r}")
        if complete is None:
            return self._completion([])
        context = params.get("context")
        filled = context.get("arguments") if isinstance(context, dict) else None
        filled = filled if isinstance(filled, dict) else {}
        return settle(lambda: complete(argument["value"], filled), lambda outcome: self._completion(outcome()))

    @staticmethod
    def _completion(values) -> dict:
        """A completer's values as a CompleteResult: completion: "Maximum 100 items per response"."""
        values = [str(value) for value in values]
        return {"completion": {"values": values[:100], "total": len(values), "hasMore": len(values) > 100}}

    def _set_level(self, era: Era, params: dict) -> dict:
        """logging/setLevel: records at this level and above are forwarded from now on."""
        level = params.get("level")
        # logging, Error Handling: "Invalid log level: -32602 (Invalid params)".
        if not isinstance(level, str) or level not in LOG_LEVELS:
            raise RPCError(INVALID_PARAMS, f"unknown log level {level!r}; one of {', '.join(LOG_LEVELS)}")
        era.log_threshold = LOG_LEVELS[level]
        self._log_level_chosen()
        return {}

    # ---- the modern era: discover and subscriptions ---------------------------

    def _discover(self, era: Era, params: dict) -> dict:
        """server/discover: what a 2026-07-28 client needs instead of a handshake."""
        # Policy: only modern versions are listed.  A legacy client never
        # asks, and a modern one would only pick a modern version anyway.
        result = {"supportedVersions": list(MODERN_VERSIONS), "capabilities": self._capabilities()}
        if self.instructions:
            result["instructions"] = self.instructions
        return era.finish("server/discover", result)

    def _listen(self, era: Era, params: dict):
        """subscriptions/listen: the work that opens a subscription, inline and without a deadline.

        subscriptions: the server "MUST send notifications/subscriptions/
        acknowledged as the first message carrying the subscription's ID",
        and then only what the filter asked for.  The request stays in
        flight, unanswered, until the client cancels it or we shut down.
        """
        wanted = params.get("notifications")
        if not isinstance(wanted, dict):
            raise RPCError(INVALID_PARAMS, f"subscriptions/listen: notifications must be an object")
        # subscriptions: the ack "reflects the subset the server agreed to
        # honor", so what we cannot serve is left out rather than refused.
        capabilities = self._capabilities()
        honoured = {f"{kind}ListChanged": True for kind in ("tools", "prompts", "resources")
                    if wanted.get(f"{kind}ListChanged") and kind in capabilities}
        uris = wanted.get("resourceSubscriptions")
        if "resources" in capabilities and isinstance(uris, list) and uris:
            honoured["resourceSubscriptions"] = [u for u in uris if isinstance(u, str)]

        def work(ctx: Context):
            ctx.era = era
            with self._lock:  # no notification for it can be published before the ack
                self._listeners = {id: entry for id, entry in self._listeners.items()
                                   if not entry[0].answered}
                if len(self._listeners) >= MAX_SUBSCRIPTIONS:
                    # Policy: each open stream holds an in-flight slot; a
                    # bound keeps room for ordinary requests.
                    raise RPCError(INTERNAL_ERROR, f"too many open subscriptions ({MAX_SUBSCRIPTIONS})")
                self.conn.notify("notifications/subscriptions/acknowledged", {"_meta": {META_SUBSCRIPTION: ctx.id},
                                                       "notifications": honoured})
                self._listeners[ctx.id] = (ctx, honoured)
            return DEFERRED
        return work, None

    def _publish(self, method: str, params: dict, matches) -> None:
        """Send a notification on every open subscription whose filter asked for it."""
        # Each notification carries the listen request's id, so the client
        # can tell subscriptions apart on the one shared stdout.
        with self._lock:
            for id, (ctx, wanted) in list(self._listeners.items()):
                if ctx.answered:  # the client cancelled it
                    del self._listeners[id]
                elif matches(wanted):
                    self.conn.notify(method, {**params, "_meta": {META_SUBSCRIPTION: id}})

    def _end_subscriptions(self) -> None:
        """Tear down every open subscription: its completion result, then notifications/cancelled.

        subscriptions: the server "SHOULD respond to the original
        subscriptions/listen request with a completion result"; cancellation:
        it "MUST send notifications/cancelled referencing a
        subscriptions/listen request ID when it tears down that subscription
        stream".  Both, in that order: a client that reads the cancel first
        would drop the result as late, which is harmless either way.
        """
        # Swapped out under the lock, answered outside it: answering writes,
        # and no new notification can go to a subscription being ended.
        with self._lock:
            listeners, self._listeners = self._listeners, {}
        for id, (ctx, _) in listeners.items():
            if self.conn.answer(ctx, result=ctx.era.finish("subscriptions/listen", {"_meta": {META_SUBSCRIPTION: id}})):
                self.conn.notify("notifications/cancelled", {"requestId": id, "reason": "the server is shutting down"})


# ############################################################################
# The lifecycle core ends here.  What follows is what a server serves, not how
# a connection lives: functions described as schemas and values checked
# against them, results, pages, log forwarding, and the 2026-07-28 round
# trips.  Each section stands alone and may be skipped; Client comes after.
# ############################################################################

# ==== Describing functions: schema_for, signature_schema, validate, prompt_argument ==
#
# A schema comes from the type hints, or is given whole (input_schema=,
# output_schema=: JSON Schema 2020-12, the dialect basic/index names, passed
# through untouched).  From hints: str, int, float, bool, list[T], set[T],
# tuple[...], dict[str, T], Optional, unions, Literal, TypedDict and
# dataclasses (nested as deep as they go), and Annotated[T, "a description"].
#
# validate() checks a value against the subset of JSON Schema that tool
# schemas use, and names the path of the first problem
# ("arguments.city: expected string").  The same function checks tool
# arguments, a tool's own results against its outputSchema, and, in the
# Client, the shape of what a server answers.  Keywords it does not know are
# ignored, as JSON Schema says unknown keywords are.
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean",
               list: "array", dict: "object", type(None): "null"}


def schema_for(hint, _seen: tuple = ()) -> dict:
    """The JSON Schema for one type hint (str, list[int], a TypedDict, Annotated[...], ...)."""
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    # What typing.get_origin() and get_args() read.  A hint built with typing
    # (Literal, Optional, TypedDict) means typing is loaded already: no import here.
    typing = sys.modules.get("typing")
    origin = getattr(hint, "__origin__", None)
    args = getattr(hint, "__args__", ())
    if hasattr(hint, "__metadata__"):  # Annotated[T, "description", ...]
        schema = schema_for(origin, _seen)
        described = [m for m in hint.__metadata__ if isinstance(m, str)]
        return {**schema, "description": described[0]} if described else schema
    if typing is not None and origin is typing.Literal:
        types = sorted({_JSON_TYPES.get(type(a), "string") for a in args})
        return {"type": types[0] if len(types) == 1 else types, "enum": list(args)}
    if origin is tuple and args and args[-1] is not Ellipsis:
        items = [schema_for(a, _seen) for a in args]
        return {"type": "array", "prefixItems": items, "minItems": len(items), "maxItems": len(items)}
    if origin in (list, tuple, set, frozenset) or hint in (tuple, set, frozenset):
        return {"type": "array", "items": schema_for(args[0], _seen)} if args else {"type": "array"}
    if origin is dict:
        return {"type": "object", "additionalProperties": schema_for(args[1], _seen)} if args else {"type": "object"}
    if (typing is not None and origin is typing.Union) or type(hint).__name__ == "UnionType":
        choices = [a for a in args if a is not type(None)]
        schema = schema_for(choices[0], _seen) if len(choices) == 1 else {
            "anyOf": [schema_for(a, _seen) for a in choices]}
        if len(choices) < len(args) and "type" in schema:
            kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            schema = {**schema, "type": kinds + ["null"]}
        return schema
    if hint in _seen:
        return {}  # a type that contains itself: its inner levels accept anything
    if typing is not None and typing.is_typeddict(hint):
        fields = typing.get_type_hints(hint, include_extras=True)
        return _object_schema({name: schema_for(h, _seen + (hint,)) for name, h in fields.items()},
                              [name for name in fields if name in hint.__required_keys__])
    if hasattr(hint, "__dataclass_fields__"):
        import dataclasses
        import typing  # a dataclass's annotations may be strings: get_type_hints reads them
        fields = typing.get_type_hints(hint, include_extras=True)
        return _object_schema({f.name: schema_for(fields[f.name], _seen + (hint,)) for f in dataclasses.fields(hint)},
                              [f.name for f in dataclasses.fields(hint)
                               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING])
    return {}  # Any, or a type JSON Schema cannot name: accept anything


def _object_schema(properties: dict, required: list) -> dict:
    """{"type": "object", ...} with these properties and, if any, these required."""
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def is_structured(hint) -> bool:
    """Whether a return annotation makes an outputSchema: a TypedDict, a dataclass, dict[str, T]."""
    typing = sys.modules.get("typing")
    return (hasattr(hint, "__dataclass_fields__") or getattr(hint, "__origin__", None) is dict
            or (typing is not None and typing.is_typeddict(hint)))


REQUIRED = object()  # the "default" of a parameter that has none


def parameters(fn) -> list[tuple[str, object]]:
    """(name, default or REQUIRED) for each named parameter of a function.

    Read from the code object: inspect.signature() would do, but importing
    inspect costs more than all of this module's other imports together.
    *args and **kwargs are left out; so is `self` of a bound method.
    """
    function = getattr(fn, "__func__", fn)
    code = function.__code__
    positional = code.co_varnames[:code.co_argcount]
    keyword_only = code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]
    defaults = dict(zip(reversed(positional), reversed(function.__defaults__ or ())))
    defaults.update(function.__kwdefaults__ or {})
    names = positional[1:] if fn is not function else positional
    return [(name, defaults.get(name, REQUIRED)) for name in names + keyword_only]


def type_hints(fn) -> dict:
    """fn's annotations, evaluated if they are strings (from __future__ import annotations)."""
    hints = getattr(fn, "__annotations__", {})
    if any(isinstance(hint, str) for hint in hints.values()):
        import typing
        hints = typing.get_type_hints(fn, include_extras=True)
    return hints


def signature_schema(fn) -> tuple[dict, str | None]:
    """A function's inputSchema, and the name of its Context parameter if any."""
    hints = type_hints(fn)
    properties, required, context_param = {}, [], None
    for name, default in parameters(fn):
        hint = hints.get(name)
        if hint is Context:
            context_param = name
            continue
        schema = schema_for(hint) if name in hints else {}
        if default is REQUIRED:
            required.append(name)
        # Only JSON scalars are advertised as defaults: any other default
        # (a tuple, a set, an object) is not JSON, or not the same value in it.
        elif default is None or isinstance(default, (str, int, float, bool)):
            schema["default"] = default
        properties[name] = schema
    # Policy: unknown arguments are refused, not ignored (a misspelt optional
    # argument would otherwise be silently dropped), and the schema says so.
    schema = _object_schema(properties, required)
    schema["additionalProperties"] = False
    return schema, context_param


def _is_type(value, kind: str) -> bool:
    """Whether a JSON value has the JSON Schema type `kind` (a bool is no number; 3.0 is an integer)."""
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    python = _PYTHON_TYPES.get(kind)
    return python is None or isinstance(value, python)  # an unknown type name checks nothing


_PYTHON_TYPES = {"string": str, "boolean": bool, "array": list, "object": dict, "null": type(None)}


def _same(a, b) -> bool:
    """JSON equality, for enum and const: true is not 1, and 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def validate(schema, value, path: str = "value", root=None) -> str | None:
    """The first way `value` breaks `schema`, as "path: problem"; None if it conforms.

    The subset: type, enum, const, minimum, maximum, exclusiveMinimum,
    exclusiveMaximum, minLength, maxLength, pattern, items, prefixItems,
    minItems, maxItems, properties, required, additionalProperties, allOf,
    anyOf, oneOf, and $ref into the same schema's $defs (or definitions).
    """
    if schema is False:
        return f"{path}: not allowed"
    if schema is True or not schema:
        return None
    if not isinstance(schema, dict):
        return None  # not a schema we can read: it constrains nothing here
    root = schema if root is None else root
    if "$ref" in schema:
        target = _resolve(root, schema["$ref"])
        if target is None:
            return f"{path}: cannot resolve $ref {schema['$ref']!r}"
        problem = validate(target, value, path, root)
        if problem:
            return problem
    kinds = schema.get("type")
    if kinds is not None and not (_is_type(value, kinds) if isinstance(kinds, str)
                                  else any(_is_type(value, kind) for kind in kinds)):
        return f"{path}: expected {kinds if isinstance(kinds, str) else ' or '.join(map(str, kinds))}"
    if "enum" in schema and not any(_same(value, choice) for choice in schema["enum"]):
        return f"{path}: must be one of {_ENCODER.encode(schema['enum'])}"
    if "const" in schema and not _same(value, schema["const"]):
        return f"{path}: must be {_ENCODER.encode(schema['const'])}"
    # Each group of keywords is looked at only if the schema has one of
    # them: this runs for every argument of every call.
    problem = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return f"{path}: not a finite number"  # 1e400 parses to inf: no double holds it
        if not _NUMBER_KEYWORDS.isdisjoint(schema):
            problem = _check_number(schema, value, path)
    elif isinstance(value, str):
        if not _STRING_KEYWORDS.isdisjoint(schema):
            problem = _check_string(schema, value, path)
    elif isinstance(value, list):
        problem = _check_array(schema, value, path, root)
    elif isinstance(value, dict):
        problem = _check_object(schema, value, path, root)
    if problem is None and not _COMBINING_KEYWORDS.isdisjoint(schema):
        problem = _check_combined(schema, value, path, root)
    return problem


_NUMBER_KEYWORDS = frozenset(("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"))
_STRING_KEYWORDS = frozenset(("minLength", "maxLength", "pattern"))
_COMBINING_KEYWORDS = frozenset(("allOf", "anyOf", "oneOf"))


def _resolve(root: dict, ref) -> dict | None:
    """The schema a local $ref ("#/$defs/Name", "#/definitions/Name", "#") points at."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None  # only references into the same schema
    target = root
    for part in filter(None, ref[1:].split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(target, dict) or part not in target:
            return None
        target = target[part]
    return target


def _check_number(schema: dict, value, path: str) -> str | None:
    for keyword, ok in (("minimum", lambda limit: value >= limit), ("maximum", lambda limit: value <= limit),
                        ("exclusiveMinimum", lambda limit: value > limit),
                        ("exclusiveMaximum", lambda limit: value < limit)):
        limit = schema.get(keyword)
        if isinstance(limit, (int, float)) and not isinstance(limit, bool) and not ok(limit):
            return f"{path}: {value} breaks {keyword} {limit}"
    return None


def _check_string(schema: dict, value: str, path: str) -> str | None:
    if len(value) < schema.get("minLength", 0):
        return f"{path}: shorter than {schema['minLength']} characters"
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        return f"{path}: longer than {schema['maxLength']} characters"
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        try:
            if not re.search(pattern, value):
                return f"{path}: does not match {pattern!r}"
        except re.error:
            pass  # a pattern Python cannot read constrains nothing here
    return None


def _check_array(schema: dict, value: list, path: str, root) -> str | None:
    if len(value) < schema.get("minItems", 0):
        return f"{path}: fewer than {schema['minItems']} items"
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        return f"{path}: more than {schema['maxItems']} items"
    prefix = schema.get("prefixItems", [])
    for i, item in enumerate(value):
        problem = validate(prefix[i] if i < len(prefix) else schema.get("items", True), item, f"{path}[{i}]", root)
        if problem:
            return problem
    return None


def _check_object(schema: dict, value: dict, path: str, root) -> str | None:
    for name in schema.get("required", ()):
        if name not in value:
            return f"{path}.{name}: required"
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            problem = validate(properties[name], item, f"{path}.{name}", root)
        elif extra is False:
            problem = f"{path}.{name}: not expected here"
        else:
            problem = validate(extra, item, f"{path}.{name}", root)
        if problem:
            return problem
    return None


def _check_combined(schema: dict, value, path: str, root) -> str | None:
    for sub in schema.get("allOf", ()):
        problem = validate(sub, value, path, root)
        if problem:
            return problem
    if "anyOf" in schema:
        problems = [validate(sub, value, path, root) for sub in schema["anyOf"]]
        if all(problems):
            return f"{path}: matches none of anyOf (the first: {problems[0].split(': ', 1)[-1]})"
    if "oneOf" in schema:
        matching = sum(validate(sub, value, path, root) is None for sub in schema["oneOf"])
        if matching != 1:
            return f"{path}: matches {matching} of oneOf, not exactly one"
    return None


def _description(fn) -> str:
    """The docstring, its indentation removed (what inspect.cleandoc does)."""
    first, *rest = (fn.__doc__ or "").expandtabs().split("\n")
    margin = min((len(line) - len(line.lstrip()) for line in rest if line.strip()), default=0)
    return "\n".join([first.strip()] + [line[margin:].rstrip() for line in rest]).strip()


def prompt_argument(fn, param: str, default) -> dict:
    """A prompt's PromptArgument for one parameter: name, required, description."""
    hint = type_hints(fn).get(param, str)
    described = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, str)]
    base = hint.__origin__ if hasattr(hint, "__metadata__") else hint  # Annotated[str, ...] is a str
    if base is not str:
        raise ValueError(f"prompt argument {param!r} is annotated {hint!r}: prompt arguments are strings")
    argument = {"name": param, "required": default is REQUIRED}
    if described:
        argument["description"] = described[0]
    return argument


def context_parameter(fn) -> str | None:
    """The name of fn's parameter annotated Context, if any: it is given the request's Context."""
    hints = getattr(fn, "__annotations__", {})
    return next((name for name, hint in hints.items() if hint is Context or hint == "Context"), None)


# ==== Results: tool_result, error_result =====================================

CONTENT_TYPES = ("text", "image", "audio", "resource", "resource_link")


def _is_content_block(value) -> bool:
    """A dict that is already a content block (text, image, audio, resource...)."""
    return isinstance(value, dict) and value.get("type") in CONTENT_TYPES


def _as_text(value) -> str:
    """A value as text: itself if a str, else its compact JSON."""
    return value if isinstance(value, str) else _ENCODER.encode(value)


def tool_result(value, version: str) -> dict:
    """A tool's return value as a CallToolResult.

    A str becomes one text block; a content block, or a list of them,
    passes through; a dict becomes structuredContent (2025-06-18 onward)
    plus the same JSON as text, for clients that read only text; None is
    no content; anything else is its JSON as text.
    """
    value = _structured(value)
    if value is None:
        return {"content": [], "isError": False}
    if _is_content_block(value):
        return {"content": [value], "isError": False}
    if isinstance(value, list) and value and all(_is_content_block(v) for v in value):
        return {"content": value, "isError": False}
    result = {"content": [{"type": "text", "text": _as_text(value)}], "isError": False}
    # tools, 2025-06-18: "For backwards compatibility, a tool that returns
    # structured content SHOULD also return the serialized JSON in a
    # TextContent block."  Hence the text block above, always.
    if isinstance(value, dict) and has(version, "structuredContent"):
        result["structuredContent"] = value
    return result


def _structured(value):
    """A dataclass instance as the dict it stands for; anything else as it is."""
    if hasattr(type(value), "__dataclass_fields__"):
        import dataclasses  # loaded already: the value's class is a dataclass
        return dataclasses.asdict(value)
    return value


def error_result(message: str) -> dict:
    """tools: errors the model should see are results with isError, not JSON-RPC errors."""
    return {"content": [{"type": "text", "text": message}], "isError": True}


# ==== Pagination and URI templates: page, _template_pattern =================

def page(items: list, cursor, size: int) -> tuple[list, str | None]:
    """One page of `items` starting at `cursor`, and the cursor of the next.

    pagination: "Clients MUST treat cursors as opaque tokens".  Ours is the
    offset, base64-encoded so that nobody is tempted to do arithmetic on it.
    """
    # The page size is ours to choose: pagination says "clients MUST NOT
    # assume a fixed page size".  Offsets are stable only while the
    # registry is; a list that changes between pages may skip or repeat.
    import base64
    start = 0
    if cursor is not None:
        try:
            start = int(base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii"))
        except (AttributeError, ValueError, UnicodeError):
            start = -1
        if not 0 <= start <= len(items):
            # pagination: "Invalid cursors SHOULD result in an error with code -32602"
            raise RPCError(INVALID_PARAMS, f"invalid cursor {cursor!r}")
    end = start + size
    following = base64.urlsafe_b64encode(str(end).encode("ascii")).decode("ascii") if end < len(items) else None
    return items[start:end], following


def _template_pattern(template: str) -> "re.Pattern":
    """A regex for an RFC 6570 URI template: {name} matches one path segment, {+name} any text."""
    # Only the two simplest forms: RFC 6570's other operators
    # ({?q}, {#f}, ...) are not recognised and match as literal text.
    parts = re.split(r"(\{\+?\w+\})", template)
    regex = "".join(
        (f"(?P<{p[2:-1]}>.+)" if p.startswith("{+") else f"(?P<{p[1:-1]}>[^/]+)")
        if p.startswith("{") else re.escape(p)
        for p in parts)
    return re.compile(regex + r"\Z")


# ==== Forwarding logs to the client: mcp_level, forward_record ===============

def mcp_level(levelno: int) -> str:
    """The MCP (RFC 5424) name for a Python logging level."""
    # LOG_LEVELS is in ascending order: the last threshold reached wins.
    name = "debug"
    for candidate, threshold in LOG_LEVELS.items():
        if levelno >= threshold:
            name = candidate
    return name


def forward_record(server: "Server", record) -> None:
    """A log record to the client as notifications/message (Server.log_handler's emit).

    Records below the level the client chose, or all of them before it
    chose one, stay local.  Sending can itself log (a write that fails, a
    message that is not JSON); a per-thread guard keeps that record from
    being sent through the same failing path, again and again.
    """
    if getattr(_forwarding, "active", False):
        return
    _forwarding.active = True
    try:
        # logging, Security: messages "MUST NOT contain ... internal
        # system details", so a traceback (file paths, code) stays on
        # stderr; the client gets the exception's one-line summary.
        data = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            data += f" ({type(error).__name__}: {error})"
        server.send_log(mcp_level(record.levelno), data, record.name)
    finally:
        _forwarding.active = False


_forwarding = threading.local()  # .active: this thread is forwarding a record now


# ==== 2026-07-28 round trips: InputRequired, RoundTrips ========================
#
# mrtr: a 2026-07-28 server asks the client nothing with a request of its own.
# It answers tools/call, prompts/get or resources/read with an
# InputRequiredResult {inputRequests, requestState}; the client fulfils the
# requests and sends the original request again, with a new id, the answers
# in inputResponses and the same requestState.  A handler here asks the same
# way in both eras (ctx.elicit, ctx.create_message, ctx.list_roots); in this
# one Era.ask looks the n-th question of a run up under key "n", and a
# question without an answer raises InputRequired, which ends the round.
#
# The contract that follows: the handler runs again from the top in every
# round, so whatever it does before its last question happens once per
# round.  Ask first, act after; or make what comes before idempotent.

ASKABLE = ("roots/list", "sampling/createMessage", "elicitation/create")  # mrtr: "MUST be one of" these three requests
REQUEST_STATE_TTL = 600.0  # seconds a requestState is honoured: long enough for a person to answer
MAX_INPUT_ROUNDS = 16      # rounds a Client fulfils for one request before it gives up on the server


class InputRequired(BaseException):
    """A question the client has not answered yet: it ends this round of the request.

    A BaseException, like GeneratorExit, so that a tool's own ``except
    Exception`` cannot swallow it.
    """

    def __init__(self, key: str, request: dict):
        super().__init__(key)
        self.key = key
        self.request = request


class RoundTrips:
    """Seals and opens requestState: the answers so far and the question asked, for one request.

    The server keeps nothing between rounds (mrtr: "the server encodes any
    needed context into the requestState field"), so the state carries the
    answers of earlier rounds; the client sends only the newest.

    mrtr: servers "MUST treat requestState as an attacker-controlled
    input", "MUST reject state that fails verification", and SHOULD bind it
    to an expiry and to "the method name and a digest of its salient
    parameters".  The seal is an HMAC-SHA256 with a key made when the first
    state is sealed.  A state sealed by another process (a restarted
    server; its key id says so) is set aside and the questions are asked
    again, as mrtr allows; a forged, expired or borrowed one is -32602.
    """

    def __init__(self):
        import hashlib
        import secrets
        self._key = secrets.token_bytes(32)
        self.key_id = hashlib.sha256(self._key).hexdigest()[:16]

    def _mac(self, payload: bytes) -> str:
        import hashlib
        import hmac
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()

    @staticmethod
    def _binding(method: str, params: dict) -> str:
        """A digest of the request, less what changes from round to round."""
        import hashlib
        salient = {k: v for k, v in params.items() if k not in ("_meta", "inputResponses", "requestState")}
        return hashlib.sha256(json.dumps([method, salient], sort_keys=True).encode()).hexdigest()

    def seal(self, method: str, params: dict, answers: dict, asking: str) -> str:
        """The requestState for a round that has `answers` and asks question `asking`."""
        import base64
        payload = _ENCODER.encode({"key": self.key_id, "request": self._binding(method, params),
                                   "expires": time.time() + REQUEST_STATE_TTL,
                                   "answers": answers, "asking": asking}).encode()
        return base64.urlsafe_b64encode(payload).decode("ascii") + "." + self._mac(payload)

    def answers(self, method: str, params: dict) -> dict:
        """Every answer so far, by key: the sealed ones and the retry's newest; RPCError if the state is bad."""
        state = params.get("requestState")
        responses = params.get("inputResponses", {})
        if not isinstance(state, str) or not isinstance(responses, dict):
            raise RPCError(INVALID_PARAMS, "requestState must be a string and inputResponses an object")
        import base64
        import hmac
        encoded, _, mac = state.rpartition(".")
        try:
            payload = base64.urlsafe_b64decode(encoded.encode("ascii"))
            sealed = json.loads(payload)
            from_us = sealed["key"] == self.key_id
        except (ValueError, TypeError, KeyError, UnicodeError):
            raise RPCError(INVALID_PARAMS, "requestState is not one this server issued") from None
        if not from_us:
            return {}  # sealed by another process, a restarted server say: ask again
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise RPCError(INVALID_PARAMS, "requestState failed verification")
        if sealed["expires"] < time.time():
            raise RPCError(INVALID_PARAMS, "requestState has expired; send the request without it")
        if sealed["request"] != self._binding(method, params):
            raise RPCError(INVALID_PARAMS, "requestState belongs to a different request")
        answers, key = sealed["answers"], sealed["asking"]
        if key in responses:
            if not isinstance(responses[key], dict):
                raise RPCError(INVALID_PARAMS, f"inputResponses[{key!r}] must be an object")
            answers[key] = responses[key]
        # mrtr: anything else in inputResponses it "SHOULD ignore"; a missing
        # answer is simply asked for again.
        return answers


# ==== Client =================================================================

# What a Client checks in each result it interprets (with validate(): the
# schema's required fields and their types; extra fields are always welcome).
RESULT_SHAPES = {
    "tools/list": {"type": "object", "required": ["tools"], "properties": {
        "tools": {"type": "array", "items": {"type": "object", "required": ["name", "inputSchema"], "properties": {
            "name": {"type": "string"}, "inputSchema": {"type": "object"}, "outputSchema": {"type": "object"}}}},
        "nextCursor": {"type": "string"}}},
    "resources/list": {"type": "object", "required": ["resources"], "properties": {
        "resources": {"type": "array", "items": {"type": "object", "required": ["uri", "name"]}},
        "nextCursor": {"type": "string"}}},
    "resources/templates/list": {"type": "object", "required": ["resourceTemplates"], "properties": {
        "resourceTemplates": {"type": "array", "items": {"type": "object", "required": ["uriTemplate", "name"]}},
        "nextCursor": {"type": "string"}}},
    "prompts/list": {"type": "object", "required": ["prompts"], "properties": {
        "prompts": {"type": "array", "items": {"type": "object", "required": ["name"]}},
        "nextCursor": {"type": "string"}}},
    "tools/call": {"type": "object", "required": ["content"], "properties": {
        "content": {"type": "array", "items": {"type": "object", "required": ["type"]}},
        "isError": {"type": "boolean"}, "structuredContent": {"type": "object"}}},
    "prompts/get": {"type": "object", "required": ["messages"], "properties": {
        "messages": {"type": "array", "items": {"type": "object", "required": ["role", "content"]}}}},
    "resources/read": {"type": "object", "required": ["contents"], "properties": {
        "contents": {"type": "array", "items": {"type": "object", "required": ["uri"]}}}},
    "completion/complete": {"type": "object", "required": ["completion"], "properties": {"completion": {
        "type": "object", "required": ["values"], "properties": {
            "values": {"type": "array", "items": {"type": "string"}, "maxItems": 100},
            "total": {"type": "integer"}, "hasMore": {"type": "boolean"}}}}},
}

# Variables a server gets from the host's environment by default: enough to
# find programs and run, none of the host's secrets (API keys, tokens).
ENV_ALLOWLIST = (
    "HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "LC_ALL", "LC_CTYPE",
    "TMPDIR", "TZ",
    # Windows
    "APPDATA", "HOMEDRIVE", "HOMEPATH", "LOCALAPPDATA", "PATHEXT", "PROGRAMFILES",
    "SYSTEMDRIVE", "SYSTEMROOT", "TEMP", "USERNAME", "USERPROFILE",
)


def server_environment(extra: dict | None = None) -> dict:
    """The allowlisted part of this process's environment, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k in ENV_ALLOWLIST}
    env.update(extra or {})
    return env


class RestartPolicy:
    """When a Client restarts a server that crashed (exit code != 0).

    Delays grow exponentially from `initial_delay` to `max_delay`, each
    scaled by a random factor within +-`jitter` so that many hosts do not
    restart in lockstep.  `max_crashes` within `window` seconds is a crash
    loop: the client gives up with CrashLoop.
    """

    def __init__(self, max_crashes: int = 5, window: float = 60.0, initial_delay: float = 0.5,
                 max_delay: float = 30.0, jitter: float = 0.2):
        self.max_crashes = max_crashes
        self.window = window
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.jitter = jitter

    def delay(self, attempt: int) -> float:
        """Seconds to wait before restart number `attempt` (0 for the first).

        A server that crashes at start-up would otherwise be respawned as
        fast as it can die, burning CPU and flooding the host's logs.
        """
        import random
        base = min(self.max_delay, self.initial_delay * 2 ** attempt)
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


class ServerProcess:
    """One server process and the two threads that watch it: its stderr, and its exit.

    A Client owns one at a time; a restart makes a new one.  The exit
    watcher is the one thread that reaps the process: nobody else calls
    poll() or wait() on the Popen, so ``returncode`` is read only once
    ``exited`` is set, and a reaped pid is never signalled.
    """

    def __init__(self, command: list, *, cwd, env: dict, name: str, on_stderr, on_exit):
        import subprocess
        # transports/stdio: "The client launches the MCP server as a subprocess."
        # A new session makes the server the leader of its own process group,
        # so close() can signal everything it started, grandchildren included.
        # On Windows a new process group keeps a Ctrl+C in the host's console
        # from killing every server at once: the host decides when they end.
        self.popen = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=cwd, env=env, start_new_session=POSIX,
            creationflags=0 if POSIX else subprocess.CREATE_NEW_PROCESS_GROUP)
        self.name = name
        self.exited = threading.Event()       # reaped: returncode is known
        self.stderr_done = threading.Event()  # stderr read to its end, or given up on
        self.stderr_tail = collections.deque(maxlen=STDERR_TAIL)  # its last lines, to explain a crash
        self._on_stderr = on_stderr  # on_stderr(line), on the stderr thread
        self._on_exit = on_exit      # on_exit(self), on the exit watcher, once reaped
        # stderr must be drained from the start: a server that logs more
        # than a pipe holds (64 KiB on Linux) would block in its next write.
        # The exit watcher closes `reaped` once the process is gone: on POSIX
        # that ends the stderr drain soon after, even if a helper the server
        # started still holds the pipe open.
        reaped_r, reaped_w = os.pipe() if POSIX else (None, None)
        self.threads = [threading.Thread(target=target, args=(fd,), daemon=True, name=f"{name}-{role}")
                        for target, role, fd in ((self._drain_stderr, "stderr", reaped_r),
                                                 (self._watch_exit, "exit", reaped_w))]
        for thread in self.threads:
            thread.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit code, once the process has been reaped; None before."""
        return self.popen.returncode if self.exited.is_set() else None

    def closed_error(self, reason: str) -> ConnectionClosed:
        """A ConnectionClosed with the exit code (if known) and the last lines of stderr."""
        if self.exited.is_set():
            # Its last words may still be in the pipe: they are why it died.
            self.stderr_done.wait(STDERR_GRACE)
        return ConnectionClosed(reason, self.returncode, list(self.stderr_tail))

    def _drain_stderr(self, reaped: int | None) -> None:
        """Read the server's stderr, so that it can never block on it, until EOF
        or, once the server was reaped (`reaped` readable), STDERR_GRACE later.

        transports/stdio: the client "SHOULD NOT assume stderr output
        indicates error conditions", so lines are logged at INFO by default
        and kept, the last few, only to explain a crash.  (Windows pipes
        cannot be polled: there the thread ends at EOF only.)
        """
        stream = self.popen.stderr
        fd = stream.fileno()
        poller = None
        if reaped is not None:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.register(reaped, select.POLLIN)
        stop_at = math.inf
        partial = b""
        try:
            while time.monotonic() < stop_at:
                if poller is not None:
                    wait = None if stop_at == math.inf else bounded(stop_at - time.monotonic()) * 1000
                    ready = {ready_fd for ready_fd, _ in poller.poll(wait)}
                    if reaped in ready:
                        poller.unregister(reaped)
                        stop_at = time.monotonic() + STDERR_GRACE
                    if fd not in ready:
                        continue
                chunk = os.read(fd, READ_CHUNK)
                if not chunk:
                    break
                *lines, partial = (partial + chunk).split(b"\n")
                if len(partial) > READ_CHUNK:  # a line too long to keep whole is passed on in pieces
                    lines.append(partial)
                    partial = b""
                for line in lines:
                    self._stderr_line(line)
        except (OSError, ValueError):
            pass
        finally:
            if partial:
                self._stderr_line(partial)
            stream.close()
            if reaped is not None:
                os.close(reaped)
            self.stderr_done.set()

    def _stderr_line(self, raw: bytes) -> None:
        """One line of the server's stderr: kept in the tail, handed to on_stderr."""
        line = raw.rstrip(b"\r").decode("utf-8", "replace")
        self.stderr_tail.append(line)
        try:
            self._on_stderr(line)
        except Exception:  # noqa: BLE001 - a bad callback must not stop the draining
            log.exception("%s: stderr callback failed", self.name)

    def _watch_exit(self, reaped: int | None) -> None:
        """Wait for the server to exit, clear out its process group, reap it."""
        if POSIX and hasattr(os, "waitid"):
            try:
                # Wait without reaping: while the leader is a zombie its
                # process-group id cannot be reused, so killing the group
                # cannot hit a stranger.
                os.waitid(os.P_PID, self.popen.pid, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                pass
            # Policy: the group dies with its leader, even after a clean
            # exit; a server's helpers are not the host's to keep.
            self.signal(force=True)  # leftovers: grandchildren that outlived it
        # The one place the process is reaped; everyone else waits on
        # `exited`, which is set only once returncode is known.
        self.popen.wait()
        if POSIX and not hasattr(os, "waitid"):
            # macOS before Python 3.13 has no os.waitid: clear the group right
            # after reaping instead.  Its id stays taken while any member
            # lives, so only a group already empty could be a stranger's.
            self.signal(force=True)
        self.exited.set()
        if reaped is not None:
            os.close(reaped)  # tells the stderr drain to finish up
        self._on_exit(self)

    def signal(self, force: bool) -> None:
        """Ask the server's process group to stop (SIGTERM), or make it (SIGKILL, `force`).

        Windows has neither signals for this nor process groups we could
        signal: terminate() and kill() both end the server process alone
        (TerminateProcess), and a process the server started lives on.
        """
        try:
            if POSIX:
                os.killpg(self.popen.pid, signal.SIGKILL if force else signal.SIGTERM)
            elif force:
                self.popen.kill()
            else:
                self.popen.terminate()
        except (ProcessLookupError, PermissionError):
            pass  # already gone

    def terminate(self, grace: float) -> None:
        """SIGTERM, wait, SIGKILL, wait (Windows: terminate(), kill()): the tail of a shutdown.  Blocks."""
        # Waits on the exit watcher's Event, never on the Popen itself, so
        # that one thread alone reaps the process.
        for force, step in enumerate(("SIGTERM", "SIGKILL") if POSIX else ("terminate()", "kill()")):
            if self.exited.is_set():  # poll before signalling: never signal a reaped pid
                return
            log.info("%s: sending %s", self.name, step)
            self.signal(bool(force))
            self.exited.wait(grace)
        if not self.exited.wait(10 * grace):
            log.error("%s: pid %d survived being killed", self.name, self.popen.pid)


class Client:
    """An MCP host's side of one stdio server: spawn, handshake, call, close.

    ``with Client(["python3", "server.py"]) as client:`` spawns the server in
    a new session (process group), completes the handshake, and on leaving
    runs the shutdown sequence: close stdin, wait, SIGTERM the group, wait,
    SIGKILL the group, reap, join every thread.

    Handlers the host provides are offered as capabilities, and only those:
    ``roots`` (a callable returning [{"uri", "name"}]), ``sampling`` and
    ``elicitation`` (callables taking the request params, returning the
    result).  ``era`` is "auto" (probe server/discover, fall back to
    initialize), "legacy" or "modern".  The class attributes below are the
    rest of its configuration; each may be overridden by keyword:
    ``Client(command, timeout=10, keepalive=30)``.
    """

    timeout = REQUEST_TIMEOUT       # a request's wait for its answer, unless the call sets its own
    handshake_timeout = HANDSHAKE_TIMEOUT
    reset_timeout_on_progress = False  # progress restarts a request's clock, never past max_timeout
    max_timeout = None              # that bound: ten times the timeout, unless set
    keepalive = None                # seconds between pings (handshake era); None: no pings
    keepalive_timeout = 5.0         # a ping's wait for its answer
    keepalive_misses = 3            # pings unanswered in a row that declare the server dead
    close_grace = CLOSE_GRACE       # each step of close(): stdin EOF, then SIGTERM, then SIGKILL
    restart = None                  # a RestartPolicy: restart a server that crashed
    cwd = None                      # the server's working directory
    name = None                     # for threads, logs and errors; default: the command's name
    client_info = {"name": "mcp_ref", "version": __version__}
    on_stderr = None                # on_stderr(line); default: log it at INFO
    on_list_changed = None          # on_list_changed(kind, fresh listing)
    on_notification = None          # on_notification(method, params), for the rest
    trace = None                    # trace(kind, detail, at) for every message and state change

    def __init__(self, command: list, *, env: dict | None = None, roots=None, sampling=None,
                 elicitation=None, era: str = "auto", **options):
        if era not in ("auto", "legacy", "modern"):
            raise ValueError(f"era must be 'auto', 'legacy' or 'modern', not {era!r}")
        self.command = list(command)
        self.env = server_environment(env)
        configure(self, options)
        check_timeout(self.timeout)
        check_timeout(self.handshake_timeout, "handshake_timeout")
        self.name = self.name or os.path.basename(self.command[0])  # several servers run at once
        self._handlers = {"roots/list": roots, "sampling/createMessage": sampling, "elicitation/create": elicitation}
        # Only the capabilities the host really provides: a declared
        # capability is a promise (lifecycle: "Both parties MUST only use
        # capabilities that were successfully negotiated").
        self.capabilities = {name: declared for name, handler, declared in (
            ("roots", roots, {"listChanged": True}), ("sampling", sampling, {}), ("elicitation", elicitation, {}))
            if handler}
        self.era_mode = era
        self.log_level = None  # 2026-07-28: sent with every request once set_logging_level() chose one
        self._server_log = _LazyLog(f"mcp_ref.server.{self.name}")
        self.on_stderr = self.on_stderr or self._server_log.info
        # What the handshake (or server/discover) learnt.
        self.era = None          # "legacy" or "modern", kept for the life of the process
        self.negotiation = None  # how the era was chosen, in words
        self.protocol_version = None
        self.server_info = {}
        self.server_capabilities = {}
        self.instructions = None
        self.error = None  # the CrashLoop that ended restarting, if it came to that
        # Guards starting, restarting and closing: one at a time.  Reentrant
        # because open() retries _start() under it.
        self._lock = threading.RLock()
        self._closing = threading.Event()  # set once by close(); wakes every wait
        self._starting = False             # a handshake is under way: deaths are its business
        self._crashes = collections.deque()  # times of recent crashes
        self._threads = []                   # every thread we started and have not joined
        self._proc = None  # the ServerProcess
        self._conn = None
        self._stop_keepalive = threading.Event()
        self._ready = threading.Event()  # set while a negotiated connection is up (see _start)
        # What listen() asked to hear, kept so a restarted server is asked again.
        self._listening = None
        self._output_schemas = {}  # tool name -> the outputSchema list_tools() saw
        self._acknowledged = queue.SimpleQueue()  # the 2026-07-28 ack (a filter) or the error that came instead

    # ---- properties ---------------------------------------------------------

    @property
    def state(self) -> State:
        """The lifecycle state of the current connection (NEW before open())."""
        return self._conn.state if self._conn is not None else State.NEW

    @property
    def pid(self) -> int | None:
        """The current server process's id; it changes when the server is restarted."""
        return self._proc.pid if self._proc is not None else None

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the connection is READY (after a restart, say); False on timeout."""
        return self._ready.wait(timeout)

    def __enter__(self) -> "Client":
        return self.open()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.name} {self.state.value} pid={self.pid}>"

    # ---- starting -----------------------------------------------------------

    def open(self) -> "Client":
        """Spawn the server and complete the handshake.  Blocks.

        With a restart policy a server that fails to start is retried, and
        CrashLoop is raised when it gives up; without one the first failure
        is raised (ConnectionClosed, RequestTimeout, UnsupportedVersion, or
        OSError if the command cannot be run).
        """
        with self._lock:
            if self._conn is not None:
                raise MCPError("this Client was already opened")
            try:
                self._launch()
            except BaseException:
                self.close()
                raise
        return self

    def _launch(self, crashed: MCPError | None = None) -> None:
        """The one start path, for open() and restarts: start, and with a restart policy retry.

        `crashed` is why the last server ended (a restart), None at open().
        Each failure counts as a crash and waits its backoff delay; raises
        CrashLoop at the policy's limit, or the failure itself without a
        policy.  Retrying cannot help a command that does not exist
        (OSError) or a server that speaks another version: raised at once.
        """
        error = crashed
        while True:
            if error is not None:
                delay = self._count_crash(error)  # raises CrashLoop at the limit
                log.warning("%s: %s; starting it again in %.2f s", self.name, error, delay)
                if self._closing.wait(delay):
                    raise ConnectionClosed("the client is closing")
            # Look at _closing again under the lock: close() sets it before
            # taking the lock, so a restart cannot start behind its back.
            with self._lock:
                if self._closing.is_set():
                    raise ConnectionClosed("the client is closing")
                self._stop_process(graceful=False)  # what is left of the last one, if any
                try:
                    self._start()
                    return
                except (MCPError, OSError) as exc:
                    if self.restart is None or isinstance(exc, (UnsupportedVersion, OSError)):
                        raise
                    error = exc

    def _start(self) -> None:
        """Spawn one server process and do the handshake; on failure nothing is left running."""
        # While _starting is set, the exit watcher and connection_lost()
        # leave a dying server to us: the handshake's own error says more.
        self._starting = True
        try:
            self._spawn()
            try:
                if self._closing.is_set():
                    # close() came while a restart was on its way here: it set
                    # _closing before looking for a handshake to wake.
                    raise ConnectionClosed("the client is closing")
                self._handshake()
                if self._proc.exited.is_set():
                    # It died in the window where its death was ours to
                    # report, right after answering: not a usable server.
                    raise self._proc.closed_error("the server exited during the handshake")
            except BaseException:
                # lifecycle: a failed handshake ends the connection, through
                # the polite shutdown sequence: the server may be healthy.
                self._conn.advance(Event.FAIL, only_from=LIVE)
                self._stop_process(graceful=True)
                raise
        finally:
            self._starting = False
        # 2026-07-28 has no ping: there, keepalive is the exit watcher's job.
        if self.keepalive and self.era == "legacy":
            self._stop_keepalive = threading.Event()
            self._thread(self._keepalive_loop, "keepalive", self._conn, self._stop_keepalive)
        if self._listening is not None:
            try:
                self._subscribe(*self._listening)  # a restarted server is asked again
            except MCPError as exc:
                log.warning("%s: could not listen again after the restart: %s", self.name, exc)
        self._ready.set()  # ready: negotiated, and listening to what the host asked to hear

    def _spawn(self) -> None:
        """Start the server process, the threads that watch it, and the connection to it."""
        self._reap_threads()
        self._proc = proc = ServerProcess(self.command, cwd=self.cwd, env=self.env, name=self.name,
                                          on_stderr=self.on_stderr, on_exit=self._server_exited)
        self._threads += proc.threads
        self._conn = Connection(proc.popen.stdout, proc.popen.stdin, self, name=self.name, max_workers=4,
                                answers_garbage=False, trace=self.trace)
        self._conn.open()

    def _handshake(self) -> None:
        """Choose the era: probe server/discover, or initialize, or both.

        transports/stdio (2026-07-28), backward compatibility: a client
        "SHOULD probe with server/discover"; a discover result or a
        recognised modern error means modern; "any other error, or does not
        respond within a reasonable timeout" means fall back to initialize,
        on the same process.
        """
        # The era is decided once per process and kept: versioning
        # (2026-07-28), clients "SHOULD cache the result for the lifetime of
        # the server process".  Policy: a restarted process is probed afresh.
        self.era = self.negotiation = None
        if self.era_mode != "legacy":
            try:
                self._adopt(self._probe())
                return
            except (RPCError, RequestTimeout, UnsupportedVersion) as exc:
                if self.era_mode == "modern" or (isinstance(exc, UnsupportedVersion) and exc.final):
                    raise
                self.negotiation = f"initialize, after server/discover failed: {exc}"
        self._initialize()

    def _envelope(self, version: str) -> dict:
        """The 2026-07-28 request _meta: who we are and what we can do."""
        meta = {META_VERSION: version, META_CAPABILITIES: self.capabilities,
                META_CLIENT_INFO: self.client_info}
        if self.log_level is not None:
            meta[META_LOG_LEVEL] = self.log_level
        return meta

    def _probe(self) -> dict:
        """server/discover with our modern version; once more if the server names another."""
        # "The fallback MUST NOT be keyed to one specific error code": only
        # -32022 is read here; any other error means legacy, in _handshake().
        # No notifications/cancelled for an unanswered probe: a handshake-era
        # server has not been initialised and should see nothing but initialize.
        def discover(version: str) -> dict:
            return self._conn.request("server/discover", {"_meta": self._envelope(version)}, cancel_on_timeout=False,
                                      timeout=min(DISCOVER_TIMEOUT, self.handshake_timeout))
        try:
            return discover(LATEST_MODERN_VERSION)
        except RPCError as exc:
            if exc.code != UNSUPPORTED_VERSION or not isinstance(exc.data, dict):
                raise
            supported = exc.data.get("supported") or []
            shared = [v for v in MODERN_VERSIONS if v in supported]
            if shared:
                return discover(shared[-1])
            # A recognised modern error: transports/stdio (2026-07-28), the
            # client picks from `supported` and does not fall back to initialize.
            raise UnsupportedVersion(supported) from None

    def _adopt(self, result: dict) -> None:
        """The modern era: no handshake, the discover result says it all."""
        conn = self._conn
        if not isinstance(result, dict) or not isinstance(result.get("capabilities"), dict):
            raise RPCError(INVALID_REQUEST, f"malformed server/discover result: {result!r}")
        supported = result.get("supportedVersions") or []
        shared = [v for v in MODERN_VERSIONS if v in supported]
        if not shared:
            raise UnsupportedVersion(supported, final=False)  # no modern version in common
        self.era, self.negotiation = "modern", self.negotiation or "server/discover"
        self.protocol_version = conn.protocol_version = shared[-1]
        self.server_capabilities = result["capabilities"]
        self.server_info = (result.get("_meta") or {}).get(META_SERVER_INFO, {})
        self.instructions = result.get("instructions")
        conn.advance(Event.DISCOVER)

    def _initialize(self) -> None:
        """lifecycle: initialize, check the version, then notifications/initialized."""
        conn = self._conn
        conn.advance(Event.INITIALIZE)
        # Our latest version: lifecycle, the client's offer "SHOULD be the
        # latest version supported by the client".
        result = conn.request("initialize", {"protocolVersion": LATEST_PROTOCOL_VERSION,
                                           "capabilities": self.capabilities,
                                           "clientInfo": self.client_info},
                              timeout=self.handshake_timeout)
        if not isinstance(result, dict) or not isinstance(result.get("capabilities", {}), dict):
            raise MCPError(f"malformed initialize result: {result!r}")
        version = result.get("protocolVersion")
        # lifecycle: "If the client does not support the version in the
        # server's response, it SHOULD disconnect."
        if version not in PROTOCOL_VERSIONS:
            raise UnsupportedVersion(version)
        self.protocol_version = conn.protocol_version = version
        self.server_capabilities = result.get("capabilities", {})
        self.server_info = result.get("serverInfo", {})
        self.instructions = result.get("instructions")
        self.era, self.negotiation = "legacy", self.negotiation or "initialize"
        # The notification goes out before we call ourselves READY, so no
        # request of ours can overtake it on the wire.
        if not conn.notify("notifications/initialized"):
            raise self._proc.closed_error("the server went away during the handshake")
        conn.advance(Event.INITIALIZED)

    def _thread(self, target, role: str, *args) -> None:
        """Start a daemon thread we own (close() joins it)."""
        thread = threading.Thread(target=target, args=args, daemon=True, name=f"{self.name}-{role}")
        self._threads.append(thread)
        thread.start()

    def _reap_threads(self) -> None:
        """Join the threads of earlier processes (they have ended or are ending)."""
        # A restart runs on the old process's exit watcher, which cannot
        # join itself; it is reaped at the next restart or close().
        me = threading.current_thread()
        for thread in [t for t in self._threads if t is not me]:
            thread.join(self.close_grace)
        self._threads = [t for t in self._threads if t.is_alive()]

    # ---- requests -------------------------------------------------------------

    def request(self, method: str, params: dict | None = None, timeout: float | None = None,
                on_progress=None):
        """Send any request and return its result.  Blocks.

        Raises RPCError (the server's error), RequestTimeout, or
        ConnectionClosed.  `on_progress(progress, total, message)` receives
        progress notifications for this request.
        """
        if self.error is not None:
            raise self.error
        # lifecycle: the client "SHOULD NOT send requests other than pings
        # before the server has responded to the initialize request".
        conn = self._conn
        if conn is None or conn.state is not State.READY:
            raise ConnectionClosed(f"the connection is {self.state.value}, not ready")
        needed = METHODS[method].capability if method in METHODS else None
        if needed is not None and needed not in self.server_capabilities:
            raise MCPError(f"the server did not declare the {needed!r} capability, "
                           f"so {method} cannot be sent")
        timeout = self.timeout if timeout is None else check_timeout(timeout)
        options = {"on_progress": on_progress, "reset_on_progress": self.reset_timeout_on_progress,
                   "max_timeout": self.max_timeout}
        if self.era != "modern":
            return self._checked(method, conn.request(method, params, timeout=timeout, **options))
        # 2026-07-28: the request may take several rounds (mrtr), all within `timeout`.
        deadline = time.monotonic() + timeout
        params = dict(params or {})
        for _ in range(MAX_INPUT_ROUNDS):
            # basic/index: every modern request carries the envelope.
            params["_meta"] = {**params.get("_meta", {}), **self._envelope(self.protocol_version)}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RequestTimeout(method, timeout)
            result = conn.request(method, params, timeout=remaining, **options)
            if not isinstance(result, dict):
                raise MCPError(f"{method}: the server answered with a result that is not an object")
            # basic/index: clients "MUST treat an absent resultType as complete".
            kind = result.get("resultType", "complete")
            if kind == "complete":
                return self._checked(method, result)
            if kind != "input_required" or not METHODS[method].round_trip:
                raise MCPError(f"{method}: unsupported resultType {kind!r}")
            params = self._next_round(method, params, result)
        raise MCPError(f"{method}: the server still wanted input after {MAX_INPUT_ROUNDS} rounds")

    def _checked(self, method: str, result):
        """`result`, if it has the shape of `method`'s result; MCPError naming the server and field if not."""
        problem = validate(RESULT_SHAPES.get(method, {"type": "object"}), result, "result")
        if problem:
            raise MCPError(f"{self.name} answered {method} with a malformed result: {problem}")
        return result

    def _next_round(self, method: str, params: dict, result: dict) -> dict:
        """The retry of `method` that answers an InputRequiredResult (mrtr, Client Requirements)."""
        requests = result.get("inputRequests", {})
        state = result.get("requestState")
        if not isinstance(requests, dict) or not (state is None or isinstance(state, str)) \
                or not (requests or state is not None):
            raise MCPError(f"{method}: malformed InputRequiredResult from {self.name}: {result!r}")
        # "the client MUST construct the requested inputs before retrying";
        # with requestState alone it "MAY retry the original request immediately".
        responses = {key: self._fulfil(request) for key, request in requests.items()}
        retry = {k: v for k, v in params.items() if k not in ("inputResponses", "requestState")}
        if responses:
            retry["inputResponses"] = responses
        # "MUST echo back the exact value", and send none if none came.
        if state is not None:
            retry["requestState"] = state
        return retry

    def _fulfil(self, request) -> dict:
        """Answer one question from the server (roots, sampling, elicitation) with the host's handler.

        In the handshake era the question comes as a request of its own; in
        2026-07-28 inside an InputRequiredResult.  Either way it lands here.
        """
        method = request.get("method") if isinstance(request, dict) else None
        handler = self._handlers.get(method)
        if handler is None:
            # We declared only what we can serve, so the server broke the rules.
            raise MCPError(f"{self.name} asked for {method!r}, which this client has no handler for")
        if method == "roots/list":
            return {"roots": list(handler())}
        return handler(request.get("params", {}))

    def notify(self, method: str, params: dict | None = None) -> None:
        """Send a notification to the server."""
        if self._conn is not None:
            self._conn.notify(method, params)

    def ping(self, timeout: float | None = None) -> dict:
        """ping (the handshake era; 2026-07-28 removed it: MCPError there)."""
        if self.era == "modern":
            raise MCPError("ping does not exist in 2026-07-28; the server process's liveness is the signal")
        return self.request("ping", timeout=timeout)

    def _list_all(self, method: str, key: str) -> list:
        """Every page of a */list method, following nextCursor to the end."""
        items, cursor, seen = [], None, set()
        while True:
            result = self.request(method, {"cursor": cursor} if cursor is not None else None)
            items.extend(result.get(key, []))
            cursor = result.get("nextCursor")
            if cursor is None or cursor in seen:  # a server repeating a cursor would loop forever
                return items
            seen.add(cursor)

    def list_tools(self) -> list:
        """Every tool the server offers, all pages (their outputSchemas are kept, to check results)."""
        tools = self._list_all("tools/list", "tools")
        self._output_schemas = {t["name"]: t["outputSchema"] for t in tools if "outputSchema" in t}
        return tools

    def call_tool(self, name: str, arguments: dict | None = None, timeout: float | None = None,
                  on_progress=None) -> dict:
        """Call a tool; the CallToolResult (check its "isError").

        If list_tools() saw an outputSchema for it, structuredContent is
        checked against it: tools, Output Schema, clients "SHOULD validate
        structured results against this schema".
        """
        result = self.request("tools/call", {"name": name, "arguments": arguments or {}},
                              timeout=timeout, on_progress=on_progress)
        schema = self._output_schemas.get(name)
        if schema is not None and not result.get("isError"):
            problem = validate(schema, result.get("structuredContent"), "structuredContent")
            if problem:
                raise MCPError(f"{self.name}: tool {name} broke its outputSchema: {problem}")
        return result

    def complete(self, ref: dict, argument: dict, context: dict | None = None) -> dict:
        """completion/complete: {"values", "total", "hasMore"} for one argument.

        ``ref`` is {"type": "ref/prompt", "name": ...} or {"type":
        "ref/resource", "uri": ...}; ``argument`` is {"name", "value"};
        ``context`` the arguments already filled in.
        """
        params = {"ref": ref, "argument": argument}
        if context is not None:
            params["context"] = {"arguments": context}
        return self.request("completion/complete", params)["completion"]

    def list_resources(self) -> list:
        """Every fixed resource, all pages (templates: list_resource_templates)."""
        return self._list_all("resources/list", "resources")

    def list_resource_templates(self) -> list:
        """Every resource template, all pages."""
        return self._list_all("resources/templates/list", "resourceTemplates")

    def read_resource(self, uri: str) -> dict:
        """The ReadResourceResult for `uri`: its "contents" list."""
        return self.request("resources/read", {"uri": uri})

    def list_prompts(self) -> list:
        """Every prompt, all pages."""
        return self._list_all("prompts/list", "prompts")

    def get_prompt(self, name: str, arguments: dict | None = None) -> dict:
        """The GetPromptResult: the prompt's messages with `arguments` filled in."""
        return self.request("prompts/get", {"name": name, "arguments": arguments or {}})

    def set_logging_level(self, level: str) -> None:
        """Ask for the server's log messages at `level` and above, in either era.

        The handshake era has logging/setLevel; 2026-07-28 removed it, and
        the level travels with every request instead (_meta logLevel).
        """
        if self.era == "modern":
            if level not in LOG_LEVELS:
                raise ValueError(f"unknown log level {level!r}")
            self.log_level = level
        else:
            self.request("logging/setLevel", {"level": level})

    def listen(self, *, tools: bool = True, prompts: bool = True, resources: bool = True,
               uris: tuple = (), timeout: float | None = None) -> dict:
        """Hear what changes on the server, in either era; return what the server agreed to send.

        Changed lists reach ``on_list_changed(kind, fresh_listing)``, and
        notifications/resources/updated for `uris` reach ``on_notification``.
        2026-07-28 opens a subscriptions/listen stream (one per Client) and
        returns the filter the server acknowledged; the handshake era gets
        list changes anyway, wherever the server declared listChanged, and
        sends resources/subscribe for each of `uris`.  Asked again after a
        restart; ended by close().
        """
        wanted = {f"{kind}ListChanged": True for kind, on in
                  (("tools", tools), ("prompts", prompts), ("resources", resources)) if on}
        if uris:
            wanted["resourceSubscriptions"] = list(uris)
        with self._lock:
            if self._listening is not None:
                raise MCPError("this Client listens already; one stream carries everything it asked for")
            self._listening = (wanted, self.timeout if timeout is None else check_timeout(timeout))
        try:
            return self._subscribe(*self._listening)
        except BaseException:
            self._listening = None  # not listening after all: the host may try again
            raise

    def _subscribe(self, wanted: dict, timeout: float) -> dict:
        """Open the listen stream (2026-07-28) or subscribe to each resource (the handshake era)."""
        if self.era == "legacy":
            for uri in wanted.get("resourceSubscriptions", ()):
                self.request("resources/subscribe", {"uri": uri}, timeout=timeout)
            honoured = {k: True for k in wanted if k.endswith("ListChanged")
                        and self.server_capabilities.get(k[:-len("ListChanged")], {}).get("listChanged")}
            return honoured | ({"resourceSubscriptions": wanted["resourceSubscriptions"]}
                               if "resourceSubscriptions" in wanted else {})
        # subscriptions: the request stays unanswered while the stream is
        # open, so it waits on a thread of its own; the ack is what we wait for.
        # A queue of its own: an old stream's last words cannot answer this one.
        acknowledged = self._acknowledged = queue.SimpleQueue()
        self._thread(self._listen_stream, "listen", self._conn, wanted, acknowledged)
        try:
            outcome = acknowledged.get(timeout=bounded(timeout))
        except queue.Empty:
            raise RequestTimeout("subscriptions/listen", timeout) from None
        if isinstance(outcome, MCPError):
            raise outcome
        return outcome

    def _listen_stream(self, conn: Connection, wanted: dict, acknowledged: queue.SimpleQueue) -> None:
        """The subscriptions/listen request, on its own thread until the stream ends."""
        try:
            conn.request("subscriptions/listen", {"notifications": wanted, "_meta": self._envelope(self.protocol_version)},
                         timeout=math.inf)
            log.info("%s: the server ended the subscription", self.name)
        except MCPError as exc:  # refused (the ack never came), or the connection ended
            acknowledged.put(exc)

    def roots_changed(self) -> None:
        """Tell the server the roots changed (we declared roots.listChanged)."""
        # 2026-07-28 removed this notification: roots travel with requests there.
        if self._handlers["roots/list"] and self.era == "legacy":
            self.notify("notifications/roots/list_changed")

    # ---- the Connection's owner protocol: what the server sends us -----------

    def route_request(self, msg: dict):
        """Requests from the server: ping, and roots/sampling/elicitation if we have handlers.

        The host's handlers run on workers, not here: sampling and
        elicitation may wait minutes for a model or a person, and the
        reader must keep reading meanwhile.
        """
        if self.era == "modern":
            # 2026-07-28 transports/stdio: the server "MUST NOT write JSON-RPC
            # requests", and the client "MUST NOT write JSON-RPC responses".
            log.warning("%s: ignoring a %s request from a 2026-07-28 server", self.name, msg["method"])
            return None
        if msg["method"] == "ping":
            return {}  # ping: "The receiver MUST respond promptly with an empty response"
        # roots, Error Handling: a client without the capability answers
        # -32601, as for any method it does not have.
        if self._handlers.get(msg["method"]) is None:
            raise RPCError(METHOD_NOT_FOUND, f"method not found: {msg['method']}")
        return (lambda ctx: self._fulfil(msg)), self.timeout

    def handle_notification(self, msg: dict) -> None:
        """Notifications from the server: logs, list changes, the rest to on_notification."""
        method = msg["method"]
        params = msg.get("params", {})
        if method == "notifications/message":
            level = LOG_LEVELS.get(params.get("level"), 20)  # logging.INFO
            self._server_log.log(level, "%s", params.get("data"))
        elif method == "notifications/subscriptions/acknowledged":
            # subscriptions: "the subset the server agreed to honor".
            self._acknowledged.put(params.get("notifications", {}))
        elif method in ("notifications/tools/list_changed", "notifications/resources/list_changed", "notifications/prompts/list_changed"):
            # On a worker: listing is a request, and its answer can only be
            # read by this very thread, the reader.
            if self.on_list_changed is not None:
                self._conn.run_later(self._refresh, method.split("/")[1])
        elif self.on_notification is not None:
            self.on_notification(method, params)

    def _refresh(self, kind: str) -> None:
        """After a list_changed: hand the callback a fresh listing (on a worker)."""
        lists = {"tools": self.list_tools, "resources": self.list_resources,
                 "prompts": self.list_prompts}
        try:
            self.on_list_changed(kind, lists[kind]())
        except Exception:  # noqa: BLE001 - the host's callback must not kill a worker
            log.exception("%s: refreshing %s after list_changed failed", self.name, kind)

    def connection_lost(self, conn: Connection, reason: str, error: bool) -> None:
        """The server's stdout ended (or its stdin broke): fail every waiting call now."""
        # An old connection (replaced by a restart) or a deliberate close:
        # fail what waits, and leave the process to whoever is ending it.
        if conn is not self._conn or self._closing.is_set():
            conn.fail_pending(ConnectionClosed("the client is closing"))
            return
        # Bounded: a crashed server's exit follows its stdout EOF within
        # milliseconds, but one that only closed stdout may live on, and
        # this thread must not wait for it.
        exited = self._proc.exited.wait(EXIT_STATUS_WAIT)  # for the exit code in the error
        # Alive but deaf if it has not exited: it can never answer again.
        # End it; the exit watcher then decides about a restart.
        self._lose(conn, self._proc.closed_error("the server exited" if exited else "the server closed its stdout"),
                   stop=not exited and not self._starting)

    def _lose(self, conn: Connection, error: MCPError, stop: bool = False) -> None:
        """The one loss path: the connection is dead; with `stop`, end the process that still runs.

        In this order: a caller woken by fail_pending() finds the state
        FAILED, nothing pings a dead server, and no caller waits through
        the termination.
        """
        self._ready.clear()
        self._stop_keepalive.set()
        conn.advance(Event.FAIL, only_from=LIVE + (State.CLOSING,))
        conn.fail_pending(error)
        if stop:
            log.error("%s: %s; stopping the server", self.name, error)
            self._proc.terminate(self.close_grace)

    # ---- the server process: exit, restarts, keepalive ------------------------

    def _server_exited(self, proc: ServerProcess) -> None:
        """The exit watcher's news: a server that exited while in use fails the connection, and may restart."""
        if proc is not self._proc or self._closing.is_set() or self._starting:
            return  # an old process, one being closed, or a handshake's own business
        error = proc.closed_error("the server exited")
        self._lose(self._conn, error)
        # 2026-07-28 transports/stdio: "If the server process exits
        # unexpectedly, the client SHOULD restart it."  Policy: only with a
        # RestartPolicy, and never after exit code 0, which lifecycle allows
        # as the server's own shutdown ("closing its output stream ... and exiting").
        if proc.returncode == 0:
            log.info("%s exited with code 0: a deliberate shutdown, not restarting", self.name)
        elif self.restart is not None:
            try:
                self._launch(error)
                log.info("%s restarted", self.name)
            except (MCPError, OSError) as exc:
                if not self._closing.is_set():
                    log.error("%s: not restarted: %s", self.name, exc)

    def _count_crash(self, error) -> float:
        """Record a crash; the delay before the next try, or CrashLoop."""
        # A sliding window: crashes older than restart.window are forgiven,
        # so a server that crashes once a day restarts forever.
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and self._crashes[0] < now - self.restart.window:
            self._crashes.popleft()
        if len(self._crashes) >= self.restart.max_crashes:
            self.error = CrashLoop(len(self._crashes), self.restart.window, error)
            raise self.error
        return self.restart.delay(len(self._crashes) - 1)

    def _keepalive_loop(self, conn: Connection, stop: threading.Event) -> None:
        """ping: "implementations SHOULD periodically issue pings"; misses mark it dead."""
        # ping: "Multiple failed pings MAY trigger connection reset"; one
        # miss may be a hiccup, keepalive_misses in a row is a verdict.
        misses = 0
        while not stop.wait(self.keepalive):
            sent = time.monotonic()
            try:
                conn.request("ping", timeout=self.keepalive_timeout)
                misses = 0
                continue
            except RequestTimeout:
                pass
            except RPCError:
                misses = 0  # an error is an answer too: it is alive
                continue
            except MCPError:
                return  # closed or failed: someone else is dealing with it
            if conn.last_heard >= sent:
                # It is talking, just not answering pings quickly: busy, not dead.
                log.warning("%s: ping unanswered within %g s, but the server is busy",
                            self.name, self.keepalive_timeout)
                continue
            misses += 1
            log.warning("%s: ping %d of %d unanswered", self.name, misses, self.keepalive_misses)
            if misses >= self.keepalive_misses:
                self._lose(conn, self._proc.closed_error(f"no answer to {misses} pings"), stop=True)
                return

    # ---- closing --------------------------------------------------------------

    def _stop_process(self, graceful: bool) -> None:
        """End the current process and its threads.  Blocks.

        lifecycle/Shutdown, stdio: "the client SHOULD initiate shutdown by:
        1. First, closing the input stream to the child process (the
        server)  2. Waiting for the server to exit, or sending SIGTERM if
        the server does not exit within a reasonable time  3. Sending
        SIGKILL if the server does not exit within a reasonable time after
        SIGTERM".  A FAILED connection skips the wait of step 2: there is
        no point in politely waiting for a server we already gave up on.
        """
        conn, proc = self._conn, self._proc
        if conn is None:
            return
        self._stop_keepalive.set()
        # 1. Close the server's stdin: its EOF is the polite request to exit.
        #    (Bounded: a server that stopped reading may hold our writer.)
        conn.close_output(self.close_grace)
        # 2. Wait for it to exit, while the reader and stderr threads drain.
        if graceful:
            proc.exited.wait(self.close_grace)
        # 3-4. SIGTERM the group, wait; SIGKILL the group, wait.  Reaping is
        #      the exit watcher's job, and it always does it.
        proc.terminate(self.close_grace)
        # 5. Nothing can answer now: fail what waits, stop the workers.
        conn.fail_pending(ConnectionClosed("the client closed the connection",
                                           proc.returncode, list(proc.stderr_tail)))
        conn.stop(self.close_grace)
        for thread in conn.threads():
            if thread is not threading.current_thread():
                thread.join(self.close_grace)  # the reader ends at the stdout EOF
        conn.advance(Event.FINISH, only_from=(State.CLOSING, State.FAILED))

    def close(self) -> None:
        """Shut the server down and release everything.  Blocks; idempotent; thread-safe.

        A server that exits on stdin EOF is closed in milliseconds; one that
        ignores EOF and SIGTERM takes up to three grace periods.
        """
        # Outside the lock, in this order: _closing stops restarts, and
        # failing the pending calls wakes a handshake that holds the lock
        # in open() or a restart, so the `with` below does not wait it out.
        self._closing.set()
        self._ready.clear()
        conn = self._conn
        if conn is not None:
            conn.fail_pending(ConnectionClosed("the client is closing"))  # wakes a handshake in progress
        with self._lock:
            conn = self._conn
            if conn is None or conn.state is State.CLOSED:
                return
            # A FAILED connection stays FAILED and skips the polite wait.
            conn.advance(Event.CLOSE, only_from=LIVE)
            self._stop_process(graceful=conn.state is State.CLOSING)
            self._reap_threads()
            for thread in self._threads:
                if thread is not threading.current_thread():  # close() from a callback runs on one of ours
                    log.warning("%s: thread %s did not end", self.name, thread.name)


# ==== The command line: demo_server, run_client, trace_to_stderr, main ========

def demo_server() -> Server:
    """The server behind ``python3 mcp_ref.py serve``: one of each feature."""
    server = Server("mcp_ref-demo", version=__version__, title="mcp_ref demo server",
                    instructions="A demonstration server: echo, add, slow (progress and "
                                 "cancellation), nap and anap (a blocking and an async tool), "
                                 "fail, and the weather -> weather_v2 migration.")

    _demo_tools(server)
    _demo_weather(server)

    @server.resource("demo://readme", description="What this server is.")
    def readme() -> str:
        return server.instructions

    @server.resource("demo://greeting/{name}", description="A greeting for anyone.")
    def greeting(name: str) -> str:
        return f"Hello, {name}!"

    @server.prompt()
    def review(code: str, focus: str = "correctness") -> str:
        """Ask for a review of a piece of code."""
        return f"Please review this code for {focus}:\n\n{code}"

    return server


def _demo_tools(server: Server) -> None:
    """The demo's tools: echo, add, slow (progress, cancellation), nap and anap (load), fail."""
    @server.tool(annotations={"readOnlyHint": True})
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool(annotations={"readOnlyHint": True})
    def add(a: float, b: float) -> float:
        """Return a + b."""
        return a + b

    @server.tool(timeout=120.0)
    def slow(seconds: float = 3.0, steps: int = 10, ctx: Context = None) -> str:
        """Wait `seconds`, reporting progress `steps` times; stops early when cancelled."""
        for step in range(1, steps + 1):
            if ctx.cancelled.wait(seconds / steps):
                return "cancelled"
            ctx.report_progress(step, steps, f"step {step} of {steps}")
        return f"waited {seconds:g} s"

    @server.tool(annotations={"readOnlyHint": True})
    def nap(seconds: float = 0.1) -> str:
        """Block this worker for `seconds`, as a tool waiting on the network does."""
        time.sleep(seconds)
        return "ok"

    @server.tool(annotations={"readOnlyHint": True})
    async def anap(seconds: float = 0.1) -> str:
        """Await `seconds` without holding a thread: an async tool."""
        import asyncio
        await asyncio.sleep(seconds)
        return "ok"

    @server.tool()
    def fail(message: str = "this tool always fails") -> str:
        """Raise an exception: the client sees a result with isError, the server lives on."""
        raise RuntimeError(message)


def _demo_weather(server: Server) -> None:
    """The demo's migration: weather (text, deprecated) and weather_v2 (schemas given whole)."""
    @server.tool(deprecated="weather_v2")
    def weather(city: str) -> str:
        """The weather in a city, as text."""
        return f"{city}: 21 C, clear"

    # Schemas given whole (JSON Schema): an enum, and the shape of the result.
    @server.tool(input_schema={"type": "object", "properties": {
        "city": {"type": "string", "description": "a city's name"},
        "units": {"type": "string", "enum": ["metric", "imperial"], "default": "metric"}},
        "required": ["city"], "additionalProperties": False},
        output_schema={"type": "object", "properties": {
            "city": {"type": "string"}, "temperature": {"type": "number"},
            "units": {"type": "string"}, "sky": {"type": "string"}}})
    def weather_v2(city: str, units: str = "metric") -> dict:
        """The weather in a city, as structured data."""
        return {"city": city, "temperature": 21.0 if units == "metric" else 69.8,
                "units": units, "sky": "clear"}


def run_client(opts) -> int:
    """``mcp_ref.py client``: connect, list, maybe call and ping, close; print JSON."""
    timings = {}
    summary = {}
    started = time.perf_counter()

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round((now - since) * 1000, 2)
        return now

    try:
        arguments = json.loads(opts.args) if opts.args else {}
        # Policy: the server gets only the allowlisted environment unless
        # asked; a debugging session should not leak the host's secrets.
        env = dict(os.environ) if opts.inherit_env else None
        client = Client(opts.command, env=env, timeout=opts.timeout, handshake_timeout=opts.timeout,
                        era=opts.era, trace=trace_to_stderr("client") if opts.trace else None)
        with client:
            now = lap("spawn_to_ready", started)
            summary["era"] = client.era
            summary["negotiation"] = client.negotiation
            summary["protocolVersion"] = client.protocol_version
            summary["serverInfo"] = client.server_info
            summary["capabilities"] = client.server_capabilities
            tools = client.list_tools() if "tools" in client.server_capabilities else []
            summary["tools"] = [t.get("name") for t in tools]
            now = lap("tools_list", now)
            if opts.call:
                summary["result"] = client.call_tool(opts.call, arguments)
                now = lap("call", now)
            if opts.ping and client.era == "legacy":  # 2026-07-28 has no ping
                client.ping()
                now = lap("ping", now)
        lap("close", now)
    except (MCPError, OSError, ValueError) as exc:
        print(f"mcp_ref client: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    timings["total"] = round((time.perf_counter() - started) * 1000, 2)
    summary["timings_ms"] = timings
    print(json.dumps(summary, indent=2))
    if summary.get("result", {}).get("isError"):
        print(f"mcp_ref client: tool {opts.call} returned isError", file=sys.stderr)
        return 1
    return 0


SERVE_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _serve_options(argv: list) -> tuple | None:
    """(log level, trace?) of a plain ``serve [--log-level LEVEL] [--trace]``; None for anything else."""
    if argv[:1] != ["serve"]:
        return None
    options = [part for option in argv[1:] for part in option.split("=", 1)]
    trace = "--trace" in options
    options = [option for option in options if option != "--trace"]
    if not options:
        return "warning", trace
    if len(options) == 2 and options[0] == "--log-level" and options[1] in SERVE_LOG_LEVELS:
        return options[1], trace
    return None


def trace_to_stderr(side: str):
    """A trace hook that prints one line per event to stderr: ``trace {"side": ..., "kind": ...}``.

    The line is JSON after the word trace, so a person can read it and a
    program (examples/tour.py) can parse it.  `at` is time.monotonic(),
    the same clock in every process of the machine.
    """
    lock = threading.Lock()  # one whole line at a time, from any thread

    def hook(kind: str, detail, at: float) -> None:
        event = {"side": side, "kind": kind, "at": round(at, 6)}
        if kind == "state":
            event.update({"from": detail[0].value, "event": detail[1].value, "to": detail[2].value})
        else:
            event["message"] = detail
        with lock:
            sys.stderr.write("trace " + _ENCODER.encode(event) + "\n")
            sys.stderr.flush()
    return hook


def _log_to_stderr(level: str) -> None:
    """Logging goes to stderr in both roles: for `serve` stdout is the protocol, for `client` the summary.

    The stderr handler keeps the chosen level; the root logger lets every
    record through, so a client's logging/setLevel debug can receive
    records that stderr does not show.
    """
    import logging
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(level.upper())
    stderr.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    logging.getLogger().addHandler(stderr)
    logging.getLogger().setLevel(logging.DEBUG)


def _serve(level: str, trace: bool) -> int:
    """``mcp_ref.py serve``: the demo server on stdin/stdout, logging to stderr at `level`."""
    # Set up when logging is first needed: a quiet server never imports it.
    log.setup = lambda: _log_to_stderr(level)
    if level in ("debug", "info"):
        log.logger()  # those records are wanted from the start
    server = demo_server()
    server.trace = trace_to_stderr("server") if trace else None
    return server.run()


def main(argv: list | None = None) -> int:
    """The command line; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # `serve` is read by hand: importing argparse costs more than importing
    # this whole module, and a server pays for it at every start.
    options = _serve_options(argv)
    if options is not None:
        return _serve(*options)
    import argparse  # the rest of the command line: help, errors, `client`

    parser = argparse.ArgumentParser(
        prog="mcp_ref.py", description="The MCP stdio lifecycle, in one file.")
    parser.add_argument("--version", action="version", version=f"mcp_ref {__version__}")
    commands = parser.add_subparsers(dest="command_name", required=True)
    serve = commands.add_parser("serve", help="run the demo server on stdin/stdout")
    serve.add_argument("--log-level", default="warning", choices=SERVE_LOG_LEVELS,
                       help="what the server logs to stderr (default: warning)")
    serve.add_argument("--trace", action="store_true", help="print every message and state change to stderr")
    client = commands.add_parser(
        "client", help="connect to any stdio server and print a JSON summary",
        usage="mcp_ref.py client [options] -- SERVER_CMD [ARGS...]")
    client.add_argument("--call", metavar="TOOL", help="call this tool")
    client.add_argument("--args", metavar="JSON", help="the tool's arguments, a JSON object")
    client.add_argument("--ping", action="store_true", help="send a ping (handshake era only)")
    client.add_argument("--era", choices=["auto", "legacy", "modern"], default="auto",
                        help="auto: probe server/discover, fall back to initialize (default)")
    client.add_argument("--timeout", metavar="S", type=float, default=30.0,
                        help="timeout of the handshake and of each request (default: 30)")
    client.add_argument("--inherit-env", action="store_true",
                        help="pass this whole environment to the server, not just the allowlist")
    client.add_argument("--log-level", default="warning", choices=SERVE_LOG_LEVELS)
    client.add_argument("--trace", action="store_true",
                        help="print every message and state change to stderr, one line each")
    client.add_argument("command", nargs=argparse.REMAINDER, help="the server command, after --")
    opts = parser.parse_args(argv)
    if opts.command_name == "serve":
        return _serve(opts.log_level, opts.trace)
    _log_to_stderr(opts.log_level)
    opts.command = opts.command[1:] if opts.command[:1] == ["--"] else opts.command
    if not opts.command:
        client.error("the server command is missing (put it after --)")
    return run_client(opts)


if __name__ == "__main__":
    sys.exit(main())
