#!/usr/bin/env python3
"""bench.py: measure stdio MCP servers against a floor, with a dumb client.

What this is
------------
A stdlib-only benchmark (Python 3.11+) for MCP servers that speak the stdio
transport.  One deliberately dumb client drives every server the same way:
pre-formatted request bytes, a plain ``readline()`` on the child's stdout pipe
and one ``json.loads`` per reply.  The client costs the same for every server,
so differences between columns are the servers' own cost.

Quick start, from the project root::

    python3 examples/bench.py --quick
    python3 examples/bench.py --rounds 5 --interpreter both
    python3 examples/bench.py --rounds 5 \\
        --with "ours=python3 -m mcp_ref serve" \\
        --with "sdk=/path/to/sdk-venv/bin/python /path/to/sdk_echo_server.py" \\
        --json out.json
    python3 examples/bench.py --load --baseline "sdk=..." --with "ours=python3 mcp_ref.py serve"

Every server under test must offer a tool ``echo`` with a string argument
``text``.  The default baseline is ``examples/floor_server.py`` (stdlib, no
validation: the "floor", i.e. interpreter + pipes + json), and the default
``--with`` is our server in both start forms.

Two interpreters.  ``--interpreter clean`` builds a virtual environment
(``python3 -m venv --without-pip``, about a second, no network) and runs
everything on its interpreter: no site-packages start-up hooks, which on some
machines import half of what a server needs and flatter every start-up
ratio.  ``both`` runs the default interpreter and then the clean one.

Why interleaved rounds and ratios
---------------------------------
The machines this runs on are shared and noisy: a neighbour's build can make
everything 30% slower for ten seconds.  Absolute milliseconds measured at
different moments are not comparable; two servers measured back to back are.
So each round measures every command once, one after the other (the order
rotates each round, so no command is always first), and every figure is
reported as a ratio to the baseline *in the same round*.  The table shows the
median over rounds of each figure and of each per-round ratio.  Quote the
ratios, not the times.

What one round measures, per command
------------------------------------
Session A (one server process):

 1. ``init_ms``        spawn -> ``initialize`` result received (the client
                       writes ``initialize`` right after spawning).
 2. ``first_call_ms``  the first ``tools/call`` echo after the handshake.
 3. ``calls_s``        N sequential ``tools/call`` echo round trips (total), and
                       their per-call p50/p99 latency.
 4. ``pings_s``        M pipelined ``ping`` requests: a writer thread writes
                       them all while the main thread reads every reply (one
                       thread alone could deadlock on two full pipes).
 6. ``peak_rss_mb``    VmHWM from /proc/PID/status of the server (and any
                       descendants), read just before closing its stdin.
 7. ``exit_ms``        stdin EOF -> process exit, with the server idle.

Session B (a fresh process, so a size limit cannot spoil session A):

 5. ``big_echo_ms``    one ``tools/call`` echo with an 8 MB ``text``: round trip.
                       ``big_rss_mb`` is the peak RSS that echo leaves behind.

Host-side figures (once per round, against the baseline server by default,
so only the client differs):

 8. ``python -c "import mcp_ref"`` vs ``python -c "import json"`` (run from the
    project root, best of ``--reps`` each, interleaved).
 9. ``with mcp_ref.Client(argv) as c: pass`` vs the dumb client doing spawn +
    initialize + initialized + close stdin + wait; and ``c.call_tool("echo",
    {"text": "x"})`` vs the dumb client's echo round trip.
10. One process opening ``--scale`` (50) servers at once through
    ``mcp_ref.Client`` (threads), calling echo on each and closing all, versus
    one open-call-close; then the children of this process still present
    afterwards (should be zero).

Load figures (``--load``, a run of their own; every server needs a blocking
tool ``nap(seconds)``, as ``mcp_ref.py serve`` and the official SDK's
``py_server_echo.py`` have):

11. ``ping_busy_ms``   a ``ping``'s round trip while ``--busy`` (200) calls of
                       ``nap(2)`` are in flight: median and worst of 5.
12. ``burst_s``        ``--busy`` concurrent ``nap(0.1)`` calls, all written
                       at once: until the last answer.
13. ``threads``        the server's threads (/proc/PID/status) before the
                       burst, at its peak, and ``idle_after_s``: seconds from
                       the last answer until the count is back where it was.

``mcp_ref`` is imported lazily, only for 9 and 10.  The API assumed is
``mcp_ref.Client(argv, timeout=seconds)`` as a context manager with
``.call_tool(name, arguments)``; if the import fails or the API differs, those
figures are skipped with a note.

Robustness
----------
Every wait is bounded: each step runs under a deadline that kills the server,
which turns a blocked ``readline()`` into EOF.  Every process is killed and
reaped in ``finally``.  Client figures run in a helper thread with a time
limit; past it, the servers are killed so the thread's reads end.  An error in
one figure for one command is recorded and printed with the table; the rest of
the run goes on.  At the end, or on Ctrl-C or SIGTERM, new spawns are
forbidden and any child of this process still present is killed, reaped and
reported.

Policy: a command whose first word is ``python3`` or ``python`` runs with this
interpreter (``sys.executable``), so a shell shim such as pyenv's does not add
its start-up time to one column and not another.  Bytecode for the import
figure goes to a temporary ``PYTHONPYCACHEPREFIX``, so the run writes nothing
into the project.

Exit status: 0 when the run completes (figure errors are listed, not fatal),
1 if processes had to be cleaned up at the end, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import inspect
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

# ==== Settings: paths, counts, limits, targets ====

PROJECT = Path(__file__).resolve().parent.parent
FLOOR_SERVER = PROJECT / "examples" / "floor_server.py"
OURS_SERVER = PROJECT / "mcp_ref.py"

# Any revision the servers know will do: the dumb client never checks the answer.
PROTOCOL_VERSION = "2025-11-25"
MIB = 1024 * 1024


@dataclasses.dataclass
class Counts:
    """How much work one round does; --quick picks the small set."""

    rounds: int
    calls: int  # sequential tools/call round trips (figure 3)
    pings: int  # pipelined pings (figure 4)
    echo_mb: float  # size of the big echo (figure 5)
    reps: int  # repetitions per round of the host-side figures 8 and 9
    client_calls: int  # call_tool round trips per round (figure 9)
    scale: int  # servers opened at once (figure 10)


FULL = Counts(rounds=5, calls=2000, pings=10_000, echo_mb=8, reps=5, client_calls=500, scale=50)
QUICK = Counts(rounds=2, calls=200, pings=1000, echo_mb=1, reps=2, client_calls=50, scale=10)

# One step (a handshake, 2000 calls, 10,000 pings, the big echo) may take this
# long before its server is killed: generous, because shared machines stall.
STEP_TIMEOUT = 120.0
# A server gets this long to exit after stdin EOF; an idle one needs milliseconds.
EXIT_TIMEOUT = 10.0
# How long a writer thread may still run once every reply has been read.
JOIN_TIMEOUT = 10.0

# Server figures: (key, label, target ratio vs the floor or None).
# Labels may name the counts, filled in from Counts when printed.
SERVER_ROWS = [
    ("init_ms", "spawn -> initialize result (ms)", 1.5),
    ("first_call_ms", "first tools/call echo (ms)", None),
    ("calls_s", "{calls} sequential tools/call (s)", 2.0),
    ("call_p50_us", "  per call p50 (us)", None),
    ("call_p99_us", "  per call p99 (us)", None),
    ("pings_s", "{pings} pipelined ping (s)", 2.0),
    ("big_echo_ms", "{echo_mb:g} MB echo round trip (ms)", 2.0),
    ("peak_rss_mb", "server peak RSS (MB)", 1.5),
    ("big_rss_mb", "  peak RSS with the big echo (MB)", None),
    ("exit_ms", "stdin EOF -> exit, idle (ms)", 2.0),
]

# Host figures: (label, reference key, measured key, ratio key, target).
HOST_ROWS = [
    ("python -c: import json | import mcp_ref (ms)", "import_json_ms", "import_mcp_ref_ms", "import_ratio", 1.5),
    ("open+handshake+close: dumb | Client (ms)", "dumb_open_close_ms", "client_open_close_ms", "open_close_ratio", 1.5),
    ("echo round trip: dumb | Client (us)", "dumb_call_us", "client_call_us", "call_ratio", None),
    ("open+call+close: 1 | {scale} at once (ms)", "one_client_ms", "scale_ms", "scale_ratio", None),
]


# ==== Errors: BenchError ====


class BenchError(Exception):
    """A figure could not be measured; the message says why, for the report."""


# ==== Processes: children_of, peak_rss_mb, sweep_children ====


def children_of(pid: int) -> dict[int, str]:
    """Map each child of pid to its state letter ('S', 'R', 'Z' ...), from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # the process ended while we looked
        # The command name may hold spaces and ')': split after its last ')'.
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[1]) == pid:
            found[int(entry)] = fields[0].decode()
    return found


def _vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of one process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise BenchError(f"no VmHWM in /proc/{pid}/status")


def peak_rss_mb(pid: int) -> float:
    """Sum of VmHWM over pid and its descendants (a wrapper may start the real server)."""
    try:
        total = _vm_hwm_kib(pid)
    except OSError as exc:
        raise BenchError(f"cannot read /proc/{pid}/status: {exc}") from None
    todo = list(children_of(pid))
    while todo:
        child = todo.pop()
        with contextlib.suppress(OSError, BenchError):  # a child may exit meanwhile
            total += _vm_hwm_kib(child)
        todo.extend(children_of(child))
    return total / 1024


def _reap(pid: int) -> None:
    """Wait up to 5 s for a killed child; someone else may reap it first."""
    for _ in range(500):
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return  # already reaped, e.g. by its Popen object
        if done:
            return
        time.sleep(0.01)


# Set once, when the run ends or is interrupted: after it nothing new may be
# spawned, so a helper thread still running cannot start a server that the
# final sweep would miss.  Checked by every function that spawns.
STOPPING = threading.Event()
SERVER_ENV: dict[str, str] = {}  # the environment of every server under test (set in main)
# Helper threads of run_bounded that are still running, joined when stopping.
WORKERS: set[threading.Thread] = set()


def check_not_stopping() -> None:
    if STOPPING.is_set():
        raise BenchError("the benchmark is stopping")


def sweep_children() -> list[str]:
    """Kill and reap every child of this process still present; describe each."""
    found = []
    for pid, state in children_of(os.getpid()).items():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        found.append(f"pid {pid} state {state}: {cmd[:120]}")
        if state != "Z":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reap(pid)
    return found


# ==== The dumb client: requests as bytes, Session ====


def _line(obj: dict) -> bytes:
    """One JSON-RPC message as one line of compact JSON."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def initialize_request(rid: int) -> bytes:
    params = {
        "protocolVersion": PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "mcp_ref-bench", "version": "0"},
    }
    return _line({"jsonrpc": "2.0", "id": rid, "method": "initialize", "params": params})


INITIALIZED = _line({"jsonrpc": "2.0", "method": "notifications/initialized"})


def echo_request(rid: int, text: str) -> bytes:
    params = {"name": "echo", "arguments": {"text": text}}
    return _line({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params})


def echo_text(msg: dict) -> str:
    """The text of an echo reply; BenchError for an error or an odd shape."""
    result = msg.get("result")
    try:
        if result.get("isError"):
            raise BenchError(f"echo returned isError: {_short(msg)}")
        return result["content"][0]["text"]
    except (AttributeError, LookupError, TypeError):
        raise BenchError(f"unexpected echo reply: {_short(msg)}") from None


def _short(obj: Any, limit: int = 200) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[:limit] + "..."


class Session:
    """One server process driven by the dumb client over its stdin/stdout pipes.

    A context manager: leaving it kills the process if it still runs and always
    reaps it.  Reads are bounded by deadline(), which kills the server when a
    step takes too long, so the blocked readline() sees EOF.
    """

    def __init__(self, argv: list[str]) -> None:
        check_not_stopping()
        self.stderr = tempfile.TemporaryFile()  # kept for the error messages
        self.next_id = 1
        self.expired: str | None = None  # set by the deadline timer thread only
        self.t_spawn = time.perf_counter()
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self.stderr, cwd=PROJECT, env=SERVER_ENV or None)
        except OSError:
            self.stderr.close()
            raise

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    def take_ids(self, count: int) -> int:
        """Reserve count request ids; return the first."""
        first = self.next_id
        self.next_id += count
        return first

    # -- writing

    def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def write_async(self, data: bytes) -> threading.Thread:
        """Write data from a helper thread, so that replies can be read meanwhile.

        Without it, a server answering while we still write fills its stdout
        pipe, stops reading, fills ours, and both sides block forever.
        """

        def run() -> None:
            # BrokenPipeError means the server went away: the reader reports that.
            with contextlib.suppress(OSError, ValueError):
                self.send(data)

        writer = threading.Thread(target=run, name="bench-writer", daemon=True)
        writer.start()
        return writer

    # -- reading

    def next_response(self) -> dict:
        """Read lines until a response arrives; skip notifications, refuse requests."""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise self._gone()
            msg = json.loads(line)
            if "method" not in msg:
                return msg
            if "id" in msg:  # a server->client request: this client offers nothing
                error = {"code": -32601, "message": "Method not found"}
                self.send(_line({"jsonrpc": "2.0", "id": msg["id"], "error": error}))

    def reply(self, rid: int) -> dict:
        """The response to request rid (stray responses are dropped)."""
        while True:
            msg = self.next_response()
            if msg.get("id") == rid:
                return msg

    def _gone(self) -> BenchError:
        if self.expired:
            return BenchError(self.expired)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(1.0)  # EOF usually means exit: let the status arrive
        return BenchError(f"server closed stdout (exit status {self.proc.poll()}){self.stderr_tail()}")

    def stderr_tail(self, limit: int = 300) -> str:
        """The end of the server's stderr, for error messages."""
        fd = self.stderr.fileno()
        size = os.fstat(fd).st_size
        # pread leaves the file offset alone: the child shares it and still writes.
        tail = os.pread(fd, limit, max(0, size - limit)).decode(errors="replace").strip()
        return f"; stderr: ...{tail}" if tail else ""

    # -- bounding and ending

    @contextlib.contextmanager
    def deadline(self, seconds: float, what: str):
        """Kill the server if the block runs longer than seconds."""
        timer = threading.Timer(seconds, self._expire, (what, seconds))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _expire(self, what: str, seconds: float) -> None:
        self.expired = f"{what}: no answer within {seconds:g} s (server killed)"
        self.proc.kill()  # Popen.kill does nothing once the process is reaped

    def close(self, timeout: float) -> float:
        """Close stdin and return the ms until the process exits."""
        # A blocking wait, not Popen.wait(timeout): that one polls with
        # growing sleeps (0.5, 1, 2, 4, 8 ms...), which would round every
        # exit time up to 7.5 or 15.5 ms.  A timer kills a server that stays.
        expired = threading.Event()
        timer = threading.Timer(timeout, lambda: (expired.set(), self.proc.kill()))
        timer.start()
        t0 = time.perf_counter()
        try:
            with contextlib.suppress(BrokenPipeError):  # normal when the server already left
                self.proc.stdin.close()
            self.proc.wait()
        finally:
            timer.cancel()
            timer.join()
        if expired.is_set():
            raise BenchError(f"still running {timeout:g} s after stdin EOF")
        return (time.perf_counter() - t0) * 1000

    def kill(self) -> None:
        """Kill (if running) and always reap, then close our pipe ends."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(EXIT_TIMEOUT)  # only a process stuck in the kernel outlasts this
        for pipe in (self.proc.stdin, self.proc.stdout, self.stderr):
            with contextlib.suppress(OSError):
                pipe.close()


def handshake(s: Session, timeout: float) -> float:
    """initialize, wait for the result, send initialized; return ms since spawn."""
    rid = s.take_ids(1)
    with s.deadline(timeout, "initialize"):
        s.send(initialize_request(rid))
        msg = s.reply(rid)
    elapsed = (time.perf_counter() - s.t_spawn) * 1000
    if "result" not in msg:
        raise BenchError(f"initialize failed: {_short(msg)}")
    s.send(INITIALIZED)
    return elapsed


# ==== Server figures: the steps of sessions A and B ====
#
# A step takes (session, counts, timeout) and returns a dict of figures.  The
# session lists below pair each step with the figure that names it in errors.


def step_first_call(s: Session, n: Counts, timeout: float) -> dict:
    rid = s.take_ids(1)
    with s.deadline(timeout, "first tools/call"):
        t0 = time.perf_counter()
        s.send(echo_request(rid, "x"))
        msg = s.reply(rid)
        elapsed = (time.perf_counter() - t0) * 1000
    if echo_text(msg) != "x":
        raise BenchError(f"echo answered {_short(msg)}")
    return {"first_call_ms": elapsed}


def step_calls(s: Session, n: Counts, timeout: float) -> dict:
    """n.calls sequential echo round trips: total time and latency percentiles."""
    first = s.take_ids(n.calls)
    # Pre-formatted: only the id changes, so the client's cost is a bytes concat.
    head = b'{"jsonrpc":"2.0","id":'
    tail = b',"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}\n'
    send, reply, clock = s.send, s.reply, time.perf_counter_ns
    latencies = []
    with s.deadline(timeout, f"{n.calls} sequential tools/call"):
        t_all = time.perf_counter()
        for rid in range(first, first + n.calls):
            t0 = clock()
            send(head + b"%d" % rid + tail)
            msg = reply(rid)
            latencies.append(clock() - t0)
            if "result" not in msg:
                raise BenchError(f"call {rid - first} failed: {_short(msg)}")
        total = time.perf_counter() - t_all
    latencies.sort()
    return {
        "calls_s": total,
        "call_p50_us": _percentile(latencies, 50) / 1000,
        "call_p99_us": _percentile(latencies, 99) / 1000,
    }


def _percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def step_pings(s: Session, n: Counts, timeout: float) -> dict:
    """n.pings pings written all at once by a thread while we read every reply."""
    first = s.take_ids(n.pings)
    data = b"".join(b'{"jsonrpc":"2.0","id":%d,"method":"ping"}\n' % rid for rid in range(first, first + n.pings))
    waiting = set(range(first, first + n.pings))  # replies may come in any order
    with s.deadline(timeout, f"{n.pings} pipelined ping"):
        t0 = time.perf_counter()
        writer = s.write_async(data)
        for _ in range(n.pings):
            msg = s.next_response()
            if "result" not in msg or msg.get("id") not in waiting:
                raise BenchError(f"unexpected reply to a ping: {_short(msg)}")
            waiting.discard(msg["id"])
        total = time.perf_counter() - t0
        writer.join(JOIN_TIMEOUT)
    return {"pings_s": total}


def step_big_echo(s: Session, n: Counts, timeout: float) -> dict:
    """One echo of n.echo_mb megabytes: the round trip, written by a thread."""
    text = "x" * int(n.echo_mb * MIB)
    rid = s.take_ids(1)
    data = echo_request(rid, text)
    with s.deadline(timeout, f"{n.echo_mb:g} MB echo"):
        t0 = time.perf_counter()
        writer = s.write_async(data)
        msg = s.reply(rid)
        elapsed = (time.perf_counter() - t0) * 1000
        writer.join(JOIN_TIMEOUT)
    got = echo_text(msg)
    if got != text:
        raise BenchError(f"echo returned {len(got)} chars, sent {len(text)}")
    return {"big_echo_ms": elapsed}


def step_rss(s: Session, n: Counts, timeout: float) -> dict:
    return {"peak_rss_mb": peak_rss_mb(s.proc.pid)}


def step_big_rss(s: Session, n: Counts, timeout: float) -> dict:
    return {"big_rss_mb": peak_rss_mb(s.proc.pid)}


def step_exit(s: Session, n: Counts, timeout: float) -> dict:
    return {"exit_ms": s.close(EXIT_TIMEOUT)}


SESSION_A = [
    ("first_call_ms", step_first_call),
    ("calls_s", step_calls),
    ("pings_s", step_pings),
    ("peak_rss_mb", step_rss),
    ("exit_ms", step_exit),
]
SESSION_B = [("big_echo_ms", step_big_echo), ("big_rss_mb", step_big_rss)]


def run_session(argv: list[str], steps: list, n: Counts, timeout: float, init_key: str | None) -> dict:
    """Spawn, handshake, run steps in order; one step's error does not stop the next.

    Returns {"figures": {...}, "errors": {key: message}}.  Once the server is
    gone the remaining steps are marked skipped rather than run.
    """
    figures: dict[str, float] = {}
    errors: dict[str, str] = {}
    broken = None
    try:
        with Session(argv) as s:
            try:
                init_ms = handshake(s, timeout)
                if init_key:
                    figures[init_key] = init_ms
            except Exception as exc:  # noqa: BLE001 - any failure is a figure's error
                broken = f"handshake failed: {_describe(exc)}"
                errors[init_key or steps[0][0]] = broken
            for key, step in steps:
                if broken:
                    errors.setdefault(key, f"skipped: {broken}")
                    continue
                try:
                    figures.update(step(s, n, timeout))
                except Exception as exc:  # noqa: BLE001
                    errors[key] = _describe(exc)
                    if s.expired or s.proc.poll() is not None:
                        broken = f"server gone after {key}"
    except OSError as exc:  # the command itself cannot be started
        errors[init_key or steps[0][0]] = f"cannot start {argv[0]!r}: {exc}"
    return {"figures": figures, "errors": errors}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BenchError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def measure_server(argv: list[str], n: Counts, timeout: float) -> dict:
    """Sessions A and B for one command, merged."""
    a = run_session(argv, SESSION_A, n, timeout, init_key="init_ms")
    b = run_session(argv, SESSION_B, n, timeout, init_key=None)
    return {"figures": {**a["figures"], **b["figures"]}, "errors": {**a["errors"], **b["errors"]}}


# ==== Host-side figures: import time, mcp_ref.Client, many servers ====


def import_times(reps: int, cache_dir: str) -> dict:
    """Best-of-reps wall ms of `python -c "import json"` and `... import mcp_ref`."""
    # Both modules are timed with their bytecode cached, as an installed module
    # would be.  The cache lives in cache_dir, written even if the caller set
    # PYTHONDONTWRITEBYTECODE (or every run would compile mcp_ref from source).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache_dir
    stmts = {"import_json_ms": "import json", "import_mcp_ref_ms": "import mcp_ref"}
    best = {key: math.inf for key in stmts}
    for rep in range(reps + 1):
        for key, stmt in stmts.items():  # interleaved, so drifting load hits both alike
            elapsed = _time_python(stmt, env)
            if rep:  # the first pass only fills the bytecode cache
                best[key] = min(best[key], elapsed)
    best["import_ratio"] = best["import_mcp_ref_ms"] / best["import_json_ms"]
    return best


def _time_python(stmt: str, env: dict) -> float:
    check_not_stopping()
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-c", stmt],
            cwd=PROJECT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=STEP_TIMEOUT,
        )
    except subprocess.TimeoutExpired:  # subprocess.run kills and reaps the child
        raise BenchError(f"python -c {stmt!r} took over {STEP_TIMEOUT:g} s") from None
    elapsed = (time.perf_counter() - t0) * 1000
    if done.returncode:
        last = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise BenchError(f"python -c {stmt!r} failed: {' '.join(last)}")
    return elapsed


def load_client_class(cache_dir: str) -> type:
    """Import mcp_ref from the project root (lazily, only here) and return Client."""
    sys.pycache_prefix = cache_dir  # keep the project free of __pycache__
    sys.path.insert(0, str(PROJECT))
    try:
        module = importlib.import_module("mcp_ref")
    except Exception as exc:  # noqa: BLE001 - a half-written module may raise anything
        raise BenchError(f"cannot import mcp_ref from {PROJECT}: {_describe(exc)}") from None
    finally:
        sys.path.remove(str(PROJECT))
    client = getattr(module, "Client", None)
    if client is None:
        raise BenchError("mcp_ref has no Client")
    missing = [name for name in ("__enter__", "__exit__", "call_tool") if not hasattr(client, name)]
    if missing:
        raise BenchError(f"mcp_ref.Client lacks {', '.join(missing)}")
    return client


def open_client(client_class: type, argv: list[str], timeout: float) -> Any:
    """mcp_ref.Client(argv, timeout=...), leaving timeout out if it is not accepted."""
    check_not_stopping()
    try:
        params = inspect.signature(client_class).parameters.values()
        takes_timeout = any(p.name == "timeout" or p.kind is p.VAR_KEYWORD for p in params)
    except (TypeError, ValueError):
        takes_timeout = False
    return client_class(argv, timeout=timeout) if takes_timeout else client_class(argv)


def run_bounded(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Run fn in a helper thread; past timeout, kill our children so it unblocks."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except Exception as exc:  # noqa: BLE001 - handed to the caller below
            box["error"] = exc

    worker = threading.Thread(target=target, name=f"bench-{what}", daemon=True)
    WORKERS.add(worker)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        killed = sweep_children()
        worker.join(JOIN_TIMEOUT)
        raise BenchError(f"{what}: not done within {timeout:g} s ({len(killed)} server processes killed)")
    WORKERS.discard(worker)
    if "error" in box:
        raise box["error"]
    return box["value"]


def dumb_open_close(argv: list[str], timeout: float) -> float:
    """Spawn + initialize + initialized + close stdin + wait, in ms."""
    with Session(argv) as s:
        handshake(s, timeout)
        s.close(EXIT_TIMEOUT)
        return (time.perf_counter() - s.t_spawn) * 1000


def client_open_close(client_class: type, argv: list[str], timeout: float) -> float:
    t0 = time.perf_counter()
    with open_client(client_class, argv, timeout):
        pass
    return (time.perf_counter() - t0) * 1000


def open_and_close(client_class: type, argv: list[str], reps: int, timeout: float) -> dict:
    """Figure 9a: median of reps, the dumb client and Client taking turns."""
    dumb, ours = [], []
    for _ in range(reps):
        dumb.append(dumb_open_close(argv, timeout))
        ours.append(client_open_close(client_class, argv, timeout))
    d, o = statistics.median(dumb), statistics.median(ours)
    return {"dumb_open_close_ms": d, "client_open_close_ms": o, "open_close_ratio": o / d}


def dumb_call_us(argv: list[str], calls: int, timeout: float) -> float:
    """Median echo round trip of the dumb client, after one warm-up call."""
    n = dataclasses.replace(FULL, calls=calls)
    with Session(argv) as s:
        handshake(s, timeout)
        step_first_call(s, n, timeout)  # the warm-up
        return step_calls(s, n, timeout)["call_p50_us"]


def check_client_echo(result: Any) -> None:
    """A dict result (a CallToolResult) must echo "x"; other shapes are taken on trust."""
    if isinstance(result, dict) and echo_text({"result": result}) != "x":
        raise BenchError(f"Client echo answered {_short(result)}")


def client_call_us(client_class: type, argv: list[str], calls: int, timeout: float) -> float:
    """Median c.call_tool("echo", {"text": "x"}) round trip, after one warm-up call."""
    clock = time.perf_counter_ns
    latencies = []
    with open_client(client_class, argv, timeout) as c:
        check_client_echo(c.call_tool("echo", {"text": "x"}))  # also the warm-up
        for _ in range(calls):
            t0 = clock()
            c.call_tool("echo", {"text": "x"})
            latencies.append(clock() - t0)
    return statistics.median(latencies) / 1000


def call_round_trip(client_class: type, argv: list[str], calls: int, timeout: float) -> dict:
    """Figure 9b: the same echo through the dumb client and through Client."""
    d = dumb_call_us(argv, calls, timeout)
    o = client_call_us(client_class, argv, calls, timeout)
    return {"dumb_call_us": d, "client_call_us": o, "call_ratio": o / d}


def one_open_call_close(client_class: type, argv: list[str], timeout: float) -> float:
    t0 = time.perf_counter()
    with open_client(client_class, argv, timeout) as c:
        check_client_echo(c.call_tool("echo", {"text": "x"}))
    return (time.perf_counter() - t0) * 1000


def many_at_once(client_class: type, argv: list[str], count: int, timeout: float) -> float:
    """Open count Clients at once (threads), call echo on each, close all; wall ms.

    Every Client that was opened is closed in finally, even if another failed.
    """
    opened: list[tuple[Any, Any]] = []  # (context manager, what __enter__ gave)
    lock = threading.Lock()  # guards opened: the pool threads append to it

    def open_one() -> None:
        cm = open_client(client_class, argv, timeout)
        conn = cm.__enter__()
        with lock:
            opened.append((cm, conn))

    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="bench-client") as pool:
            for future in [pool.submit(open_one) for _ in range(count)]:
                future.result()
            for future in [pool.submit(conn.call_tool, "echo", {"text": "x"}) for _, conn in opened]:
                future.result()
            closing, opened[:] = list(opened), []
            for future in [pool.submit(cm.__exit__, None, None, None) for cm, _ in closing]:
                future.result()
        return (time.perf_counter() - t0) * 1000
    finally:
        for cm, _ in opened:
            with contextlib.suppress(Exception):
                cm.__exit__(None, None, None)


def scale(client_class: type, argv: list[str], count: int, timeout: float) -> dict:
    """Figure 10: count servers at once vs one, and the children left behind."""
    before = set(children_of(os.getpid()))
    one = one_open_call_close(client_class, argv, timeout)
    many = many_at_once(client_class, argv, count, timeout)
    left = {pid: state for pid, state in children_of(os.getpid()).items() if pid not in before}
    figures = {"one_client_ms": one, "scale_ms": many, "scale_ratio": many / one, "left_behind": len(left)}
    if left:
        sweep_children()  # never leave them: the count above is the finding
    return figures


def measure_host(argv: list[str], n: Counts, timeout: float, cache_dir: str, client_class: type | None) -> dict:
    """Figures 8-10 for one round; each can fail alone."""
    figures: dict[str, float] = {}
    errors: dict[str, str] = {}
    jobs: list[tuple[str, Callable[[], dict]]] = [("import_ratio", lambda: import_times(n.reps, cache_dir))]
    if client_class is not None:
        jobs += [
            ("open_close_ratio", lambda: open_and_close(client_class, argv, n.reps, timeout)),
            ("call_ratio", lambda: call_round_trip(client_class, argv, n.client_calls, timeout)),
            ("scale_ratio", lambda: scale(client_class, argv, n.scale, timeout)),
        ]
    for key, job in jobs:
        try:
            figures.update(run_bounded(job, timeout * 2, key))
        except Exception as exc:  # noqa: BLE001
            errors[key] = _describe(exc)
    return {"figures": figures, "errors": errors}


# ==== Load figures (--load): ping under load, a burst, threads after it ====

LOAD_PINGS = 5          # pings measured while the long calls are in flight
LONG_NAP = 2.0          # seconds each of those calls blocks a thread
SHORT_NAP = 0.1         # seconds each call of the burst blocks
IDLE_WAIT = 15.0        # how long to watch the thread count fall back after the burst


def nap_request(rid: int, seconds: float, tool: str = "nap") -> bytes:
    params = {"name": tool, "arguments": {"seconds": seconds}}
    return _line({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params})


def thread_count(pid: int) -> int:
    """The Threads: line of /proc/PID/status (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise BenchError("no Threads: line in /proc status")


def expect_results(s: Session, ids: set, what: str) -> None:
    """Read until every id in ids has its answer; an error answer is a BenchError."""
    while ids:
        msg = s.next_response()
        if "error" in msg or msg.get("result", {}).get("isError"):
            raise BenchError(f"{what}: {_short(msg)}")
        ids.discard(msg.get("id"))


def step_ping_under_load(s: Session, busy: int, tool: str, timeout: float) -> dict:
    """Figure 11: ping round trips while `busy` blocking calls are in flight."""
    first = s.take_ids(busy)
    calls = set(range(first, first + busy))
    latencies = []
    with s.deadline(timeout, "ping under load"):
        s.send(b"".join(nap_request(rid, LONG_NAP, tool) for rid in calls))
        for _ in range(LOAD_PINGS):
            rid = s.take_ids(1)
            t0 = time.perf_counter()
            s.send(_line({"jsonrpc": "2.0", "id": rid, "method": "ping"}))
            while True:  # answers to the naps may come first once they finish
                msg = s.next_response()
                if msg.get("id") == rid:
                    break
                calls.discard(msg.get("id"))
            latencies.append((time.perf_counter() - t0) * 1000)
        expect_results(s, calls, "a long nap")
    return {"ping_busy_ms": statistics.median(latencies), "ping_busy_max_ms": max(latencies)}


def step_burst(s: Session, busy: int, tool: str, timeout: float) -> dict:
    """Figures 12 and 13: a burst of short blocking calls, and the threads after it."""
    before = thread_count(s.proc.pid)
    first = s.take_ids(busy)
    calls = set(range(first, first + busy))
    peak = before
    with s.deadline(timeout, "burst"):
        t0 = time.perf_counter()
        s.send(b"".join(nap_request(rid, SHORT_NAP, tool) for rid in calls))
        while calls:
            msg = s.next_response()
            if "error" in msg or msg.get("result", {}).get("isError"):
                raise BenchError(f"burst: {_short(msg)}")
            calls.discard(msg.get("id"))
            peak = max(peak, thread_count(s.proc.pid))
        burst = time.perf_counter() - t0
    # Polling is fine in a benchmark: this measures, it does not synchronise.
    done = time.perf_counter()
    idle_after = None
    while time.perf_counter() - done < IDLE_WAIT:
        if thread_count(s.proc.pid) <= before:
            idle_after = time.perf_counter() - done
            break
        time.sleep(0.02)
    return {"burst_s": burst, "threads_before": before, "threads_peak": peak, "idle_after_s": idle_after}


def measure_load(argv: list[str], busy: int, tool: str, timeout: float) -> dict:
    """Figures 11 to 13 for one server; an error is recorded, not raised."""
    figures: dict = {}
    try:
        with Session(argv) as s:
            handshake(s, timeout)
            figures.update(step_ping_under_load(s, busy, tool, timeout))
        with Session(argv) as s:
            handshake(s, timeout)
            figures.update(step_burst(s, busy, tool, timeout))
    except (BenchError, OSError, ValueError) as exc:
        figures["error"] = _describe(exc)
    return figures


def run_load(commands: dict[str, list[str]], busy: int, tool: str, rounds: int, timeout: float) -> dict:
    """Interleaved rounds of the load figures; the medians per command."""
    results: dict[str, list[dict]] = {name: [] for name in commands}
    names = list(commands)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            results[name].append(measure_load(commands[name], busy, tool, timeout))
            print(f"load round {r + 1}/{rounds} {name}: {results[name][-1]}", file=sys.stderr)
    summary = {}
    for name, runs in results.items():
        keys = {k for run in runs for k, v in run.items() if isinstance(v, (int, float))}
        summary[name] = {k: _median([run[k] for run in runs if isinstance(run.get(k), (int, float))])
                         for k in sorted(keys)}
        summary[name]["errors"] = [run["error"] for run in runs if "error" in run]
    return summary


def print_load(summary: dict, base: str, busy: int, tool: str) -> None:
    """The load table: each server's medians, and the ratios to `base`."""
    rows = [("ping_busy_ms", f"ping while {busy} x {tool}({LONG_NAP:g}) run (ms)", "< 50 ms"),
            ("ping_busy_max_ms", "  worst of the pings (ms)", None),
            ("burst_s", f"{busy} concurrent {tool}({SHORT_NAP:g}) (s)", "<= 1.5x the SDK"),
            ("threads_before", "server threads before the burst", None),
            ("threads_peak", "  at the burst's peak", None),
            ("idle_after_s", "  seconds until back to that", "a few s")]
    names = list(summary)
    others = [n for n in names if n != base]
    header = ["figure"] + names + [f"{n}/{base}" for n in others] + ["target"]
    table = []
    for key, label, target in rows:
        values = [summary[n].get(key) for n in names]
        ratios = [summary[n][key] / summary[base][key] if summary[n].get(key) and summary[base].get(key)
                  else None for n in others]
        table.append([label] + [_fmt_value(v) for v in values] + [_fmt(r) for r in ratios] + [target or ""])
    _print_table(header, table)
    for name in names:
        for error in summary[name]["errors"]:
            print(f"error: {name}: {error}")


# ==== Rounds: interleave, ratio, median ====


def run_rounds(commands: dict[str, list[str]], client_argv: list[str], n: Counts, opts: argparse.Namespace,
               cache_dir: str, notes: list[str]) -> list[dict]:
    """All rounds; within each, every command once, in an order that rotates."""
    client_class = None
    if not opts.no_host:
        try:
            client_class = load_client_class(cache_dir)
        except BenchError as exc:
            notes.append(f"figures 9-10 (mcp_ref.Client) skipped: {exc}")
    names = list(commands)
    rounds = []
    for r in range(n.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        servers = {}
        for name in order:
            servers[name] = measure_server(commands[name], n, opts.timeout)
            _progress(r, n.rounds, name, servers[name])
        host = None
        if not opts.no_host:
            host = measure_host(client_argv, n, opts.timeout, cache_dir, client_class)
            _progress(r, n.rounds, "host", host)
        rounds.append({"round": r, "order": order, "servers": servers, "host": host})
    return rounds


def _progress(r: int, total: int, name: str, result: dict) -> None:
    figs = ", ".join(f"{k} {_fmt(v)}" for k, v in result["figures"].items())
    errs = f"  ({len(result['errors'])} errors)" if result["errors"] else ""
    print(f"[round {r + 1}/{total}] {name}: {figs}{errs}", file=sys.stderr, flush=True)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize_servers(rounds: list[dict], names: list[str], base: str) -> dict:
    """{figure: {command: {"median", "ratio"}}}; ratios pair commands within a round."""
    summary = {}
    for key, _label, _target in SERVER_ROWS:
        row = {}
        for name in names:
            values, ratios = [], []
            for rd in rounds:
                v = rd["servers"][name]["figures"].get(key)
                b = rd["servers"][base]["figures"].get(key)
                if v is not None:
                    values.append(v)
                if v is not None and b:
                    ratios.append(v / b)
            row[name] = {"median": _median(values), "ratio": _median(ratios) if name != base else None}
        summary[key] = row
    return summary


def summarize_host(rounds: list[dict]) -> dict:
    """Medians of the host figures; the leftover count is the worst round's."""
    per_key: dict[str, list[float]] = {}
    for rd in rounds:
        for key, value in (rd["host"] or {"figures": {}})["figures"].items():
            per_key.setdefault(key, []).append(value)
    summary = {key: _median(values) for key, values in per_key.items()}
    if "left_behind" in per_key:
        summary["left_behind"] = max(per_key["left_behind"])
    return summary


def collect_errors(rounds: list[dict]) -> list[dict]:
    """One entry per distinct (command, figure, message), with the rounds it hit."""
    seen: dict[tuple, list[int]] = {}
    for rd in rounds:
        parts = dict(rd["servers"])
        if rd["host"]:
            parts["host"] = rd["host"]
        for name, part in parts.items():
            for key, message in part["errors"].items():
                seen.setdefault((name, key, message), []).append(rd["round"] + 1)
    return [{"command": c, "figure": k, "message": m, "rounds": rs} for (c, k, m), rs in seen.items()]


# ==== Report: table and JSON ====


def _fmt(value: float | None) -> str:
    """Three significant-ish digits, no exponents."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"


def _fmt_value(value: float | None) -> str:
    """A server figure; None means every round failed (see the errors)."""
    return "err" if value is None else _fmt(value)


def _fmt_ratio(ratio: float | None, target: float | None) -> str:
    if ratio is None:
        return "-"
    over = " !" if target is not None and ratio > target else ""
    return f"{ratio:.2f}x{over}"


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        print("  ".join(cells).rstrip())


def print_server_table(summary: dict, names: list[str], base: str, n: Counts) -> None:
    others = [name for name in names if name != base]
    header = ["figure", base] + [h for name in others for h in (name, f"{name}/{base}")] + ["target"]
    rows = []
    for key, label, target in SERVER_ROWS:
        row = summary[key]
        cells = [label.format(**dataclasses.asdict(n)), _fmt_value(row[base]["median"])]
        for name in others:
            cells += [_fmt_value(row[name]["median"]), _fmt_ratio(row[name]["ratio"], target)]
        cells.append(f"<= {target:g}x" if target else "")
        rows.append(cells)
    _print_table(header, rows)


def print_host_table(summary: dict, n: Counts) -> None:
    header = ["figure", "reference", "measured", "ratio", "target"]
    rows = []
    for label, ref, val, ratio, target in HOST_ROWS:
        cells = [label.format(**dataclasses.asdict(n)), _fmt(summary.get(ref)), _fmt(summary.get(val))]
        cells += [_fmt_ratio(summary.get(ratio), target), f"<= {target:g}x" if target else ""]
        rows.append(cells)
    left = summary.get("left_behind")
    rows.append(["children left behind (worst round)", "", "-" if left is None else str(int(left)), "", "0"])
    _print_table(header, rows)


def print_report(report: dict, names: list[str], base: str, n: Counts) -> None:
    meta = report["meta"]
    print(f"\nPython {meta['python']}, {meta['cpus']} CPUs, load {meta['loadavg_start']} -> {meta['loadavg_end']}")
    for name, argv in report["commands"].items():
        print(f"  {name}: {shlex.join(argv)}")
    print(f"\nServer figures: median of {n.rounds} rounds; ratios are per round vs {base}, then median.")
    print("'!' marks a ratio over its target.\n")
    print_server_table(report["summary"]["servers"], names, base, n)
    if report["summary"]["host"] is not None:
        print(f"\nHost-side figures (python -c runs from {PROJECT}; Client figures against "
              f"{report['client_server']}): median of {n.rounds} rounds.\n")
        print_host_table(report["summary"]["host"], n)
    for note in report["notes"]:
        print(f"\nnote: {note}")
    print_errors(report["errors"])


def print_errors(errors: list[dict]) -> None:
    """Failures in full; figures skipped because of them, one line per command."""
    failures = [e for e in errors if not e["message"].startswith("skipped:")]
    if failures:
        print("\nerrors:")
    for e in failures:
        rounds = ",".join(map(str, e["rounds"]))
        print(f"  {e['command']} / {e['figure']} (rounds {rounds}): {e['message']}")
    skipped: dict[str, set[str]] = {}
    for e in errors:
        if e["message"].startswith("skipped:"):
            skipped.setdefault(e["command"], set()).add(e["figure"])
    for command, figures in skipped.items():
        print(f"  {command}: not measured after a failure: {', '.join(sorted(figures))}")


# ==== Command line: main ====


def parse_command(spec: str, default_name: str) -> tuple[str, list[str]]:
    """'NAME=CMD' or 'CMD' -> (name, argv); a leading python3/python becomes sys.executable."""
    name, sep, cmd = spec.partition("=")
    if not sep or " " in name.strip() or not name.strip():
        name, cmd = default_name, spec
    argv = shlex.split(cmd)
    if not argv:
        raise ValueError(f"empty command in {spec!r}")
    if argv[0] in ("python3", "python"):
        argv[0] = sys.executable  # Policy: no shell shim start-up in one column only
    return name.strip(), argv


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", metavar="[NAME=]CMD", help="the floor every ratio divides by "
                    f"(default: floor={FLOOR_SERVER})")
    ap.add_argument("--with", dest="others", action="append", default=[], metavar="NAME=CMD",
                    help="a command to compare (repeatable; default: ours=python3 mcp_ref.py serve, if present)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 5, --quick 2)")
    ap.add_argument("--quick", action="store_true", help="small counts, for tests: a few seconds")
    ap.add_argument("--calls", type=int, help="sequential tools/call round trips (default 2000)")
    ap.add_argument("--pings", type=int, help="pipelined pings (default 10000)")
    ap.add_argument("--echo-mb", type=float, help="size of the big echo in MB (default 8)")
    ap.add_argument("--scale", type=int, help="servers opened at once through Client (default 50)")
    ap.add_argument("--reps", type=int, help="repetitions per round of figures 8 and 9 (default 5)")
    ap.add_argument("--client-server", metavar="NAME", help="command the Client figures talk to (default: baseline)")
    ap.add_argument("--no-host", action="store_true", help="skip figures 8-10 (import time, mcp_ref.Client)")
    ap.add_argument("--timeout", type=float, default=STEP_TIMEOUT, help="seconds one step may take (default %(default)g)")
    ap.add_argument("--json", metavar="PATH", help="also write every raw figure and the summary as JSON")
    ap.add_argument("--interpreter", choices=["default", "clean", "both"], default="default",
                    help="run on this interpreter, on a clean venv built from it, or both (default: default)")
    ap.add_argument("--load", action="store_true",
                    help="only the load figures 11-13; ratios are to --baseline if given, else to the first --with")
    ap.add_argument("--busy", type=int, default=200, help="calls in flight for the load figures (default 200)")
    ap.add_argument("--load-tool", default="nap", help="the blocking tool the load figures call (default nap)")
    return ap


def resolve_counts(opts: argparse.Namespace) -> Counts:
    """The --quick or full set, with any explicit count on top."""
    n = QUICK if opts.quick else FULL
    overrides = {
        "rounds": opts.rounds, "calls": opts.calls, "pings": opts.pings,
        "echo_mb": opts.echo_mb, "scale": opts.scale, "reps": opts.reps,
    }
    return dataclasses.replace(n, **{k: v for k, v in overrides.items() if v is not None})


def resolve_commands(opts: argparse.Namespace, ap: argparse.ArgumentParser) -> dict[str, list[str]]:
    if opts.baseline:
        base_spec = opts.baseline
    elif FLOOR_SERVER.exists():
        base_spec = f"floor=python3 {FLOOR_SERVER}"
    else:
        ap.error(f"no --baseline given and {FLOOR_SERVER} not found")
    others = opts.others or ([f"ours=python3 {OURS_SERVER} serve", "ours-m=python3 -m mcp_ref serve"]
                             if OURS_SERVER.exists() else [])
    try:
        commands = dict([parse_command(base_spec, "baseline")])
        for i, spec in enumerate(others, 1):
            name, argv = parse_command(spec, f"cmd{i}")
            if name in commands:
                ap.error(f"two commands named {name!r}")
            commands[name] = argv
    except ValueError as exc:
        ap.error(str(exc))
    return commands


def stop_everything() -> list[str]:
    """Forbid new spawns, kill our children, let helper threads end, kill again."""
    STOPPING.set()
    found = sweep_children()
    for worker in list(WORKERS):
        worker.join(JOIN_TIMEOUT)  # their servers are dead, so their reads end
    return found + sweep_children()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_on_clean_interpreter(argv: list[str]) -> int:
    """This script again, with the same arguments, on a new venv without site-packages hooks."""
    with tempfile.TemporaryDirectory(prefix="mcp-bench-venv-") as venv:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
        python = Path(venv) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
        print(f"== clean interpreter: {python} (a venv of {sys.executable}, no .pth hooks)", flush=True)
        return subprocess.run([str(python), __file__, *argv]).returncode


def main(argv: list[str] | None = None) -> int:
    # SIGTERM takes the Ctrl-C path, so every finally below kills its servers.
    signal.signal(signal.SIGTERM, _interrupt)
    ap = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    opts = ap.parse_args(argv)
    if opts.interpreter != "default":
        # The same arguments again; argparse takes the last --interpreter given.
        rest = [*argv, "--interpreter", "default"]
        code = 0
        if opts.interpreter == "both":
            print(f"== default interpreter: {sys.executable}", flush=True)
            code = subprocess.run([sys.executable, __file__, *rest]).returncode
        return run_on_clean_interpreter(rest) or code
    n = resolve_counts(opts)
    if min(n.rounds, n.calls, n.pings, n.scale, n.reps) < 1 or n.echo_mb <= 0:
        ap.error("counts must be positive")
    if opts.load:
        return main_load(opts, ap)
    commands = resolve_commands(opts, ap)
    names = list(commands)
    base = names[0]
    client_server = opts.client_server or base
    if client_server not in commands:
        ap.error(f"--client-server {client_server!r} is not one of {names}")
    notes = [] if len(names) > 1 else ["only the baseline was given: nothing to compare (add --with NAME=CMD)"]
    report: dict[str, Any] = {
        "meta": {"python": sys.version.split()[0], "cpus": os.cpu_count(), "loadavg_start": _load(),
                 "counts": dataclasses.asdict(n), "project": str(PROJECT)},
        "commands": commands,
        "baseline": base,
        "client_server": client_server,
    }
    saved_prefix = sys.pycache_prefix  # load_client_class points it at cache_dir
    with tempfile.TemporaryDirectory(prefix="mcp-bench-pycache-") as cache_dir:
        # Servers run as an installed server would: with bytecode cached (in
        # cache_dir, even where PYTHONDONTWRITEBYTECODE is set).  A script run
        # as `python3 file.py` is compiled anyway: Python never caches __main__.
        SERVER_ENV.update({k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
        SERVER_ENV["PYTHONPYCACHEPREFIX"] = cache_dir
        try:
            rounds = run_rounds(commands, commands[client_server], n, opts, cache_dir, notes)
        finally:
            sys.pycache_prefix = saved_prefix  # cache_dir is about to go
            leftovers = stop_everything()  # the safety net: nothing outlives the run
    if leftovers:
        notes.append(f"{len(leftovers)} child processes were still running at the end and were killed: "
                     + "; ".join(leftovers))
    report["meta"]["loadavg_end"] = _load()
    report["rounds"] = rounds
    report["summary"] = {
        "servers": summarize_servers(rounds, names, base),
        "host": None if opts.no_host else summarize_host(rounds),
    }
    report["errors"] = collect_errors(rounds)
    report["notes"] = notes
    print_report(report, names, base, n)
    if opts.json:
        Path(opts.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 1 if leftovers else 0


def main_load(opts: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    """--load: figures 11-13 for each command, interleaved, and the ratios."""
    specs = ([opts.baseline] if opts.baseline else []) + (opts.others or [f"ours=python3 {OURS_SERVER} serve"])
    try:
        commands = dict(parse_command(spec, f"cmd{i}") for i, spec in enumerate(specs))
    except ValueError as exc:
        ap.error(str(exc))
    rounds = opts.rounds or (1 if opts.quick else 3)
    SERVER_ENV.update({k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
    try:
        summary = run_load(commands, opts.busy, opts.load_tool, rounds, opts.timeout)
    finally:
        leftovers = stop_everything()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load average {_load()}, "
          f"median of {rounds} rounds")
    print_load(summary, list(commands)[0], opts.busy, opts.load_tool)
    if opts.json:
        Path(opts.json).write_text(json.dumps({"commands": commands, "load": summary}, indent=2) + "\n")
    return 1 if leftovers else 0


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every server started was killed", file=sys.stderr)
        sys.exit(130)
