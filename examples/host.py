#!/usr/bin/env python3
"""host.py: a small MCP host that runs several stdio servers at once.

What it shows: one mcp_ref.Client per server, opened concurrently; keepalive
pings; restarts with backoff under a RestartPolicy, ending in CrashLoop for a
server that keeps dying; each server's stderr and log messages in this host's
logging, under the server's name; and a shutdown that leaves no process or
thread behind, whatever happened before it.

Run it from anywhere::

    python3 examples/host.py                      # two demo servers + the notes server
    python3 examples/host.py --duration 3 --crash-demo
    python3 examples/host.py "python3 mcp_ref.py serve" "node server.js --stdio"

Each server command is one quoted string.  The host lists each server's
tools and calls one whose required arguments are all strings, read-only
tools first; --duration repeats the call every second.  The report goes to
stdout, logging to stderr.  Exit code 0 when every server answered (and,
with --crash-demo, the crashing one ended in CrashLoop).
"""

import argparse
import concurrent.futures
import itertools
import logging
import os
import shlex
import sys
import textwrap
import threading
import time

# Import mcp_ref from the project root, wherever this file is run from.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import mcp_ref  # noqa: E402 - after the path fix, on purpose

log = logging.getLogger("host")

# A server that works for one second, then dies with exit code 3: a crash
# (exit code 0 would be a deliberate exit, which is never restarted).  It
# runs with cwd=ROOT, so `import mcp_ref` finds the module.
CRASHY_SERVER = """\
import os, sys, threading, mcp_ref
server = mcp_ref.Server("crashy")
@server.tool()
def echo(text: str) -> str:
    "Return the text, while it lasts."
    return text
def crash():
    print("crashy: crashing now", file=sys.stderr, flush=True)
    os._exit(3)  # no cleanup, no flush: as abrupt as a segfault

threading.Timer(1.0, crash).start()
raise SystemExit(server.run())
"""


# ==== Which servers, and what to call on them ================================

def default_servers() -> list:
    """(name, argv, cwd) of the servers to run when none are given."""
    python = sys.executable  # the same interpreter, whatever "python3" means here
    return [("demo-1", [python, os.path.join(ROOT, "mcp_ref.py"), "serve"], None),
            ("demo-2", [python, os.path.join(ROOT, "mcp_ref.py"), "serve"], None),
            ("notes", [python, os.path.join(ROOT, "examples", "notes_server.py")], None)]


def name_for(argv: list, taken: set) -> str:
    """A short unique name for a server command: its script's name, else its program's."""
    scripts = [a for a in argv if a.endswith((".py", ".js", ".ts"))]
    base = os.path.splitext(os.path.basename(scripts[0] if scripts else argv[0]))[0]
    candidates = (base if n == 1 else f"{base}-{n}" for n in itertools.count(1))
    return next(name for name in candidates if name not in taken)


def pick_call(tools: list) -> tuple | None:
    """(tool name, arguments) for one harmless call, or None if no tool fits."""
    # Policy: read-only tools first, so a demo never writes into someone's data.
    for tool in sorted(tools, key=lambda t: not t.get("annotations", {}).get("readOnlyHint")):
        schema = tool.get("inputSchema", {})
        required = schema.get("required", [])
        if all(schema.get("properties", {}).get(r, {}).get("type") == "string" for r in required):
            return tool["name"], {r: "hello" for r in required}
    return None


def summary(result: dict) -> str:
    """A CallToolResult as one short line of text."""
    text = " ".join(b.get("text", f"<{b.get('type')}>") for b in result.get("content", []))
    return ("ERROR " if result.get("isError") else "") + textwrap.shorten(text, 60)


# ==== Running them ===========================================================

def open_and_list(client: mcp_ref.Client, stats: dict) -> str:
    """Open one client, ask for its logs, list its tools and call one; a report."""
    client.open()
    stats["pids"].add(client.pid)
    if "logging" in client.server_capabilities:
        # Its log records now arrive as notifications/message, which the
        # Client logs as mcp_ref.server.<name>.  (Handshake era: a restarted
        # server starts a new session with no level set.  2026-07-28: the
        # level travels with every request, so it survives restarts.)
        client.set_logging_level("info")
    tools = client.list_tools() if "tools" in client.server_capabilities else []
    stats["call"] = pick_call(tools)  # repeated by the --duration loop
    info = client.server_info
    text = (f"{client.name}: {info.get('name')} {info.get('version')}, protocol "
            f"{client.protocol_version}, pid {client.pid}\n"
            f"    tools: {', '.join(t['name'] for t in tools) or '(none)'}")
    if stats["call"] is not None:
        name, arguments = stats["call"]
        result = client.call_tool(name, arguments)
        stats["failed" if result.get("isError") else "ok"] += 1
        text += f"\n    {name}({arguments}) -> {summary(result)}"
    return text


def tick(client: mcp_ref.Client, stats: dict) -> str:
    """One call (or ping) on one server; a word for the progress line."""
    stats["pids"].add(client.pid)  # a new pid means a restart happened
    try:
        # A short timeout: a hung server should delay the next tick by
        # little (the keepalive, meanwhile, decides whether it is dead).
        if stats["call"] is not None:
            if client.call_tool(*stats["call"], timeout=2).get("isError"):
                raise mcp_ref.MCPError("the tool returned isError")
        elif client.era == "legacy":
            client.ping(timeout=2)
        # (2026-07-28 has no ping: without a tool to call, the process is the signal.)
    except mcp_ref.MCPError as exc:
        stats["failed"] += 1
        return f"{client.name}:{type(exc).__name__}"
    stats["ok"] += 1
    return f"{client.name}:ok"


def run(clients: list, stats: dict, duration: float, crashy) -> bool:
    """Open all, list and call, then tick every second; False if a healthy server failed."""
    healthy = True
    # One thread per server, for opening (spawn and handshake) and for each
    # tick: a slow or hung server must not hold up the others.
    pool = concurrent.futures.ThreadPoolExecutor(len(clients), thread_name_prefix="host")
    try:
        opening = [(c, pool.submit(open_and_list, c, stats[c.name])) for c in clients]
        print(f"== {len(clients)} servers")
        for client, future in opening:
            try:
                print(future.result())
            except (mcp_ref.MCPError, OSError) as exc:
                print(f"{client.name}: failed: {type(exc).__name__}: {exc}")
                healthy = healthy and client is crashy
        if duration > 0 or crashy is not None:
            print(f"== one call per server per second for {duration:g} s"
                  + (", and until crashy gives up" if crashy else ""))
        started = time.monotonic()
        # Poll once a second: the calls are the point, and Client offers no
        # event to wait on for a restart or a CrashLoop.  Bounded either way.
        while (time.monotonic() - started < duration
               or (crashy is not None and crashy.error is None
                   and time.monotonic() - started < duration + 15)):
            time.sleep(1.0)
            words = list(pool.map(tick, clients, [stats[c.name] for c in clients]))
            print(f"t={time.monotonic() - started:4.1f}s  " + "  ".join(words), flush=True)
    finally:
        # No wait: on Ctrl-C an open() may still be running; close_all() ends it.
        pool.shutdown(wait=False, cancel_futures=True)
    return healthy


def close_all(clients: list) -> None:
    """Close every client at once; blocks.  Fine on one that never opened or gave up."""
    threads = [threading.Thread(target=c.close, name=f"close-{c.name}") for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run several MCP stdio servers at once.")
    parser.add_argument("servers", nargs="*", metavar="COMMAND",
                        help="server commands, each one quoted string (default: the demos)")
    parser.add_argument("--keepalive", type=float, default=2.0, metavar="SECONDS",
                        help="ping each server this often (default: 2)")
    parser.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                        help="stay connected this long, calling each server every second")
    parser.add_argument("--crash-demo", action="store_true", help="add a server that keeps crashing")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    opts = parser.parse_args(argv)
    logging.basicConfig(level=opts.log_level.upper(), stream=sys.stderr, datefmt="%H:%M:%S",
                        format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s: %(message)s")

    servers = []
    for argv in map(shlex.split, opts.servers):
        servers.append((name_for(argv, {"crashy"} | {s[0] for s in servers}), argv, None))
    servers = servers or default_servers()
    if opts.crash_demo:
        servers.append(("crashy", [sys.executable, "-c", CRASHY_SERVER], ROOT))
    # Policy: three crashes within 30 s is a loop.  Short delays, so the demo
    # reaches CrashLoop in a few seconds; a real host would wait longer.
    policy = mcp_ref.RestartPolicy(max_crashes=3, window=30.0, initial_delay=0.25, max_delay=2.0)
    clients = [mcp_ref.Client(argv, name=name, cwd=cwd, timeout=10.0, keepalive=opts.keepalive,
                              restart=policy,
                              on_stderr=lambda line, name=name: log.info("[%s] %s", name, line))
               for name, argv, cwd in servers]
    stats = {c.name: {"ok": 0, "failed": 0, "pids": set(), "call": None} for c in clients}
    crashy = clients[-1] if opts.crash_demo else None
    try:
        healthy = run(clients, stats, opts.duration, crashy)
    except KeyboardInterrupt:
        # Only we get Ctrl-C: each server runs in its own session (process
        # group), so the terminal's SIGINT does not reach it.  We close it.
        print("== interrupted")
        return 130  # the shell's code for "ended by SIGINT"
    finally:
        close_all(clients)

    print("== report")
    for client in clients:
        s = stats[client.name]
        outcome = f"gave up: {client.error}" if client.error else f"state {client.state.value}"
        print(f"{client.name}: {s['ok']} calls ok, {s['failed']} failed, "
              f"{len(s['pids'])} pid(s) seen; {outcome}")
        if client is crashy:
            healthy = healthy and isinstance(client.error, mcp_ref.CrashLoop)
        else:
            healthy = healthy and s["failed"] == 0 and client.error is None
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
