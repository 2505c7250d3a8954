#!/usr/bin/env python3
"""tour.py: watch one MCP connection live and die, step by step, with the rule for each step.

Our Client talks to our demo Server, as two real processes over real pipes.
Both sides trace every message and every state change (the trace hook of
mcp_ref: the client's in this process, the server's on its stderr, on the
same monotonic clock), and the tour prints them step by step, each step
with the spec rule that governs it::

    python3 examples/tour.py                 # the handshake era (2025-11-25)
    python3 examples/tour.py --era modern    # 2026-07-28: server/discover, _meta, input_required, listen
    python3 examples/tour.py --crash         # then a crash, a restart with backoff, a crash loop
    python3 examples/tour.py --svg tour.svg  # and draw the run as a sequence diagram

Inside one step the two sides' events are merged in an order that respects
cause and effect (a message is received after it is sent), so the same
tour prints and draws the same story every time; only the timings differ.
"""

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mcp_ref  # noqa: E402 - after the path is set

WAIT = 10.0  # the longest any step waits for the other side


# ==== The server: the demo server, four more tools, traced to stderr ====

def tour_server() -> mcp_ref.Server:
    """The demo server plus what the tour needs: a short deadline, a change, a question, a crash."""
    server = mcp_ref.demo_server()

    @server.tool(timeout=0.4)
    def stall(ctx: mcp_ref.Context) -> str:
        """Take longer than the tool's own 0.4 s deadline."""
        ctx.cancelled.wait(5)
        return "too late"

    @server.tool()
    def grow(name: str) -> str:
        """Register a new tool: the tool list changes."""
        server.tool(lambda: "new", name=name)
        return f"registered {name}"

    @server.tool()
    def ask(ctx: mcp_ref.Context) -> str:
        """Ask the user for a name (elicitation)."""
        answer = ctx.elicit("What should I call you?", {"type": "object", "properties": {"name": {"type": "string"}}})
        return f"hello, {answer['content']['name']}"

    @server.tool()
    def crash() -> str:
        """Exit at once with code 3, as a crashing server does."""
        os._exit(3)
    return server


# ==== Recording: both sides' events, step by step ====

class Recorder:
    """Collects trace events from both sides; steps take theirs when the other side caught up."""

    def __init__(self):
        # Guards events: the client's threads and the stderr thread append.
        self._changed = threading.Condition()
        self.events = []
        self.taken = 0      # events before this index belong to earlier steps
        self.leftover = []  # merged events a step left for the next one
        self.start = time.monotonic()

    def add(self, event: dict) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def client_hook(self, kind: str, detail, at: float) -> None:
        """The client's trace hook."""
        event = {"side": "client", "kind": kind, "at": at}
        if kind == "state":
            event.update({"from": detail[0].value, "event": detail[1].value, "to": detail[2].value})
        else:
            event["message"] = detail
        self.add(event)

    def server_line(self, line: str) -> None:
        """A line of the server's stderr: its trace events start with "trace "."""
        if line.startswith("trace "):
            self.add(json.loads(line[len("trace "):]))

    def take(self, until, last=None) -> list:
        """This step's events, once `until(events)` holds (or WAIT passed: the story shows what came).

        A step also waits until every message in it has been both sent and
        received: the two sides' traces travel separately (the server's on
        its stderr), and a step must not end between the two halves.  With
        `last`, the step ends at the first event it matches; the rest open
        the next step (one action, such as open(), can be two steps).
        """
        def done():
            pending = self.leftover + self.events[self.taken:]
            return until(pending) and balanced(pending)
        with self._changed:
            self._changed.wait_for(done, WAIT)
            step, self.taken = self.events[self.taken:], len(self.events)
        merged, self.leftover = self.leftover + merge(step), []
        if last is not None:
            end = next((i for i, event in enumerate(merged) if last(event)), len(merged) - 1)
            merged, self.leftover = merged[:end + 1], merged[end + 1:]
        return merged


def key(message) -> str:
    return json.dumps(message, sort_keys=True)


def balanced(events: list) -> bool:
    """Whether every message sent among `events` was received among them, and the other way round."""
    count = {}
    for event in events:
        if event["kind"] in ("send", "recv"):
            k = key(event["message"])
            count[k] = count.get(k, 0) + (1 if event["kind"] == "send" else -1)
    return not any(count.values())


def merge(events: list) -> list:
    """One causal order for a step: each side's own order, every recv after its send.

    A message is delivered as soon as it has been sent; otherwise the client
    goes first, then the server.  So the order depends only on what each side
    did, not on which process the scheduler happened to run first, and the
    same tour draws the same picture every time.
    """
    queues = {side: [e for e in events if e["side"] == side] for side in ("client", "server")}
    sent, merged = [], []

    def deliverable(queue) -> bool:
        return bool(queue) and queue[0]["kind"] == "recv" and key(queue[0]["message"]) in sent

    def ready(queue) -> bool:
        return bool(queue) and queue[0]["kind"] != "recv"
    while queues["client"] or queues["server"]:
        side = (next((s for s in queues if deliverable(queues[s])), None)
                or next((s for s in queues if ready(queues[s])), None)
                # both wait on the other: a message from before the step; the earlier one goes
                or min((s for s in queues if queues[s]), key=lambda s: queues[s][0]["at"]))
        event = queues[side].pop(0)
        if event["kind"] == "send":
            sent.append(key(event["message"]))
        elif event["kind"] == "recv" and key(event["message"]) in sent:
            sent.remove(key(event["message"]))
        merged.append(event)
    return merged


def sent_by(side: str, method: str = None, id=None, result=False):
    """A predicate for Recorder.take: `side` has sent that message."""
    def seen(events):
        return any(e["side"] == side and e["kind"] == "send"
                   and (method is None or e["message"].get("method") == method)
                   and (id is None or e["message"].get("id") == id)
                   and (not result or "result" in e["message"] or "error" in e["message"]) for e in events)
    return seen


def reached(side: str, state: str):
    def seen(events):
        return any(e["side"] == side and e["kind"] == "state" and e["to"] == state for e in events)
    return seen


def answers_sent(count: int):
    """A predicate for Recorder.take: the server has sent `count` results (the call's, the re-list's)."""
    return lambda events: sum(e["side"] == "server" and e["kind"] == "send" and "result" in e["message"]
                              for e in events) >= count


def answered(events) -> bool:
    """A predicate for Recorder.take: the client has received an answer."""
    return any(e["side"] == "client" and e["kind"] == "recv" and "id" in e["message"]
               and "method" not in e["message"] for e in events)


def field(events: list, side: str, path: str, **match) -> str:
    """`path` (dots) in the first message `side` sent whose keys match, as compact JSON."""
    for event in events:
        message = event.get("message", {})
        if event["side"] == side and event["kind"] == "send" and all(message.get(k) == v for k, v in match.items()):
            value = message
            for part in path.split("."):
                value = value.get(part, {}) if isinstance(value, dict) else {}
            text = json.dumps(value, separators=(",", ":"))
            return f"{side} sent {path} = {text if len(text) < 150 else text[:147] + '...'}"
    return f"({side} sent no {path})"


def both(*predicates):
    return lambda events: all(p(events) for p in predicates)


# ==== Narration: a step, its rule, its events ====

def label(message: dict) -> str:
    """A message in a few words: its method (or result/error) and id."""
    if "method" in message:
        text = message["method"]
        params = message.get("params", {})
        if message["method"] == "tools/call":
            text += f" {params.get('name')}"
        if message["method"] == "notifications/progress":
            text += f" {params.get('progress')}/{params.get('total')}"
        if message["method"] == "notifications/cancelled":
            text += f" #{params.get('requestId')}"
    elif "error" in message:
        text = f"error {message['error'].get('code')}"
    else:
        result = message.get("result", {})
        text = "result" + (" input_required" if result.get("resultType") == "input_required" else "")
        text += " isError" if result.get("isError") else ""
    return text + (f" #{message['id']}" if "id" in message else "")


class Tour:
    """The steps in order, printed as they happen, kept for the picture."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder
        self.steps = []  # (title, rule, events)

    def step(self, title: str, rule: str, until, action=None, last=None, show=None):
        """Run `action`, take the step's events once `until` holds, print them.

        `show(events)` may name a few lines worth a closer look: a field of
        a message that the rule is about.
        """
        result = action() if action is not None else None
        events = self.recorder.take(until, last)
        self.steps.append((title, rule, events))
        print(f"\n{len(self.steps):2}. {title}\n    rule: {rule}")
        for event in events:
            print("    " + describe(event, self.recorder.start))
        for line in (show(events) if show is not None else ()):
            print("        " + line)
        return result


def describe(event: dict, start: float) -> str:
    """One event as one line of the transcript."""
    ms = (event["at"] - start) * 1000
    side = event["side"]
    if event["kind"] == "state":
        return f"{ms:8.1f} ms  {side:6}  state  {event['from']} --{event['event']}--> {event['to']}"
    arrow = "->" if event["kind"] == "send" else "<-"
    other = "server" if side == "client" else "client"
    return f"{ms:8.1f} ms  {side:6}  {arrow} {other:6}  {label(event['message'])}"


# ==== The stories: handshake era, modern era, crashes ====

def handshake_story(tour: Tour, client: mcp_ref.Client) -> None:
    tour.step("spawn, initialize and version negotiation",
              "2025-11-25 basic/lifecycle, Initialization: the server answers the version the client asked "
              "for if it speaks it",
              both(reached("client", "ready"), reached("server", "ready")),
              last=lambda e: e["side"] == "client" and e["kind"] == "recv",
              show=lambda ev: [field(ev, "client", "params.protocolVersion", method="initialize"),
                               field(ev, "server", "result.protocolVersion")])
    tour.step("notifications/initialized: both sides are ready",
              "2025-11-25 basic/lifecycle: the client MUST send initialized before normal operations",
              both(reached("client", "ready"), reached("server", "ready")))
    tour.step("list the tools", "2025-11-25 server/tools, Listing Tools",
              sent_by("server", result=True), client.list_tools)
    tour.step("a call that reports progress",
              "2025-11-25 basic/utilities/progress: progress increases, and stops with the answer",
              answered,
              lambda: client.call_tool("slow", {"seconds": 0.3, "steps": 3}, on_progress=lambda *a: None))
    tour.step("a call the client gives up on: cancelled",
              "2025-11-25 basic/lifecycle, Timeouts, and utilities/cancellation: the sender SHOULD send "
              "notifications/cancelled; the receiver sends no answer",
              lambda ev: any(e["side"] == "server" and e["kind"] == "recv"
                             and e["message"].get("method") == "notifications/cancelled" for e in ev),
              lambda: expect(mcp_ref.RequestTimeout, client.call_tool, "slow", {"seconds": 5}, timeout=0.3))
    tour.step("a tool that fails: an isError result, not a protocol error",
              "2025-11-25 server/tools, Error Handling: tool execution errors are results with isError",
              sent_by("server", result=True), lambda: client.call_tool("fail"))
    tour.step("a tool past its own deadline",
              "policy (mcp_ref): the server answers -32603 at the deadline and tells the handler to stop",
              sent_by("server", result=True), lambda: expect(mcp_ref.RPCError, client.call_tool, "stall"))
    tour.step("ping", "2025-11-25 basic/utilities/ping: the receiver MUST respond promptly with {}",
              sent_by("server", result=True), client.ping)
    tour.step("a list_changed, and the host lists again",
              "2025-11-25 server/tools, List Changed Notification: the server SHOULD notify; the host re-lists",
              answers_sent(2), lambda: relist(client))


def modern_story(tour: Tour, client: mcp_ref.Client) -> None:
    tour.step("spawn and server/discover: no handshake",
              "2026-07-28 basic/transports/stdio: a client SHOULD probe with server/discover; server/discover",
              both(sent_by("server", result=True), reached("client", "ready")))
    tour.step("every request carries the _meta envelope; lists carry caching hints",
              "2026-07-28 basic/index, _meta: protocolVersion, clientCapabilities, clientInfo on every request; "
              "server/utilities/caching",
              sent_by("server", result=True), client.list_tools,
              show=lambda ev: [field(ev, "client", "params._meta", method="tools/list"),
                               field(ev, "server", "result.ttlMs"), field(ev, "server", "result.cacheScope")])
    tour.step("the server asks the user: an input_required round trip",
              "2026-07-28 basic/patterns/mrtr: input_required, then the same request again with inputResponses "
              "and requestState",
              lambda ev: sum(e["side"] == "server" and e["kind"] == "send" for e in ev) >= 2,
              lambda: client.call_tool("ask"),
              show=lambda ev: [field(ev, "server", "result.inputRequests"),
                               field(ev, "client", "params.inputResponses", id=4)])
    tour.step("subscriptions/listen: a stream of changes",
              "2026-07-28 basic/patterns/subscriptions: acknowledged first, then only what the filter asked for",
              sent_by("server", "notifications/subscriptions/acknowledged"),
              lambda: client.listen(prompts=False, resources=False))
    tour.step("a change on the stream, and the host lists again",
              "2026-07-28 basic/patterns/subscriptions: notifications tagged with the subscription's id",
              answers_sent(2), lambda: relist(client))


def crash_story(tour: Tour, client: mcp_ref.Client) -> None:
    pid = client.pid
    tour.step("the server crashes; the client restarts it, after a backoff",
              "2026-07-28 basic/transports/stdio, Unexpected Termination: the client SHOULD restart it",
              lambda ev: client.wait_ready(0) and client.pid != pid and reached("client", "ready")(ev),
              lambda: (expect(mcp_ref.ConnectionClosed, client.call_tool, "crash"), client.wait_ready(WAIT)))
    tour.step("it crashes again and again: a crash loop, and the client gives up",
              "policy (mcp_ref RestartPolicy): max_crashes within the window is a crash loop: CrashLoop",
              lambda ev: client.error is not None,
              lambda: crash_until_loop(client))
    print(f"    client.error: {type(client.error).__name__}: {str(client.error).splitlines()[0]}")


def relist(client: mcp_ref.Client) -> None:
    """Change the tool list, and list again once told.

    The host lists here, after the call, rather than in on_list_changed:
    that callback runs on a worker, and its request would race the call's
    answer, so the story would not be the same every time.
    """
    client.call_tool("grow", {"name": "new_tool"})
    client.list_tools()


def crash_until_loop(client: mcp_ref.Client) -> None:
    while client.error is None:
        if client.wait_ready(WAIT):
            expect(mcp_ref.ConnectionClosed, client.call_tool, "crash")


def expect(error: type, fn, *args, **kwargs):
    """Call fn and return the error it was meant to raise (anything else propagates)."""
    try:
        fn(*args, **kwargs)
    except error as exc:
        return exc
    raise AssertionError(f"{fn.__name__} did not raise {error.__name__}")


def run_tour(era: str, crash: bool) -> Tour:
    # The tour tells what happens itself: mcp_ref's own warnings (a crash,
    # a restart) would only repeat it, with the server's trace lines attached.
    logging.getLogger("mcp_ref").setLevel(logging.CRITICAL)
    recorder = Recorder()
    tour = Tour(recorder)
    restart = mcp_ref.RestartPolicy(max_crashes=3, window=60, initial_delay=0.1, jitter=0.0) if crash else None
    client = mcp_ref.Client([sys.executable, __file__, "--serve"], era="modern" if era == "modern" else "legacy",
                            trace=recorder.client_hook, on_stderr=recorder.server_line, restart=restart,
                            elicitation=lambda params: {"action": "accept", "content": {"name": "Ada"}},
                            timeout=WAIT)
    print(f"mcp_ref {mcp_ref.__version__}: a {era} connection, our Client and our demo Server")
    with client:
        (modern_story if era == "modern" else handshake_story)(tour, client)
        if crash:
            crash_story(tour, client)
        proc = client._proc
        if not crash:
            tour.step("stdin EOF: the server drains, ends its streams, exits; the client reaps it",
                      "2025-11-25 basic/lifecycle, Shutdown (stdio): close stdin, wait for the exit, then SIGTERM, "
                      "then SIGKILL" if era != "modern" else "2026-07-28 basic/transports/stdio, Shutdown: stdin "
                      "EOF is the primary graceful shutdown signal",
                      both(reached("client", "closed"), reached("server", "closed")), client.close)
    print(f"\nexit code {proc.returncode}; pid {proc.pid} reaped; client state {client.state.value}")
    return tour


# ==== The picture: a sequence diagram in SVG, drawn by hand ====

COLOURS = {"new": "#d9d9d9", "connected": "#9ecae1", "initializing": "#fdd49e", "ready": "#a1d99b",
           "closing": "#fc9272", "failed": "#cb181d", "closed": "#737373"}
WIDTH, ROW, HEADER, TOP = 1200, 22, 30, 96
LIFELINE = {"client": 380, "server": 860}


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def draw(tour: Tour, title: str) -> str:
    """The tour as an SVG sequence diagram: lifelines, state bands, one arrow per message."""
    rows, y = [], TOP
    for number, (step, rule, events) in enumerate(tour.steps, 1):
        rows.append(("step", y, (number, step, rule)))
        y += HEADER
        for event in events:
            if event["kind"] != "recv":  # a message is drawn once, where it is sent
                rows.append(("event", y, event))
                y += ROW
    height = y + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
           f'<text x="20" y="26" font-size="17" font-weight="bold">{escape(title)}</text>']
    x = 20
    for state, colour in COLOURS.items():  # the legend
        out.append(f'<rect x="{x}" y="40" width="14" height="14" fill="{colour}" stroke="#444"/>'
                   f'<text x="{x + 19}" y="52">{state}</text>')
        x += 30 + 8 * len(state)
    out.append('<text x="20" y="74" fill="#555">state of each side: the band along its lifeline; '
               'one arrow per message, drawn when it is sent; ms since the tour began at the left</text>')
    for side, lx in LIFELINE.items():
        out.append(f'<text x="{lx}" y="{TOP - 6}" text-anchor="middle" font-weight="bold">{side}</text>')
        out.append(f'<line x1="{lx}" y1="{TOP}" x2="{lx}" y2="{height - 20}" stroke="#999"/>')
        out.extend(bands(rows, side, lx, height - 20))
    for kind, y, item in rows:
        out.extend(draw_step(y, item) if kind == "step" else draw_event(y, item, tour.recorder.start))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def bands(rows: list, side: str, x: int, bottom: int) -> list:
    """Coloured rectangles along a lifeline: one per state, from the row it began."""
    changes = [(y, item["to"]) for kind, y, item in rows
               if kind == "event" and item["side"] == side and item["kind"] == "state"]
    shapes = []
    for (y, state), following in zip(changes, changes[1:] + [(bottom, None)]):
        shapes.append(f'<rect x="{x - 6}" y="{y + ROW // 2}" width="12" height="{following[0] - y}" '
                      f'fill="{COLOURS[state]}" opacity="0.9"/>')
    return shapes


def draw_step(y: int, item) -> list:
    number, step, rule = item
    return [f'<rect x="10" y="{y + 3}" width="{WIDTH - 20}" height="{HEADER - 6}" fill="#f2f2f2"/>',
            f'<text x="18" y="{y + 19}" font-weight="bold">{number}. {escape(step)}</text>',
            f'<text x="{WIDTH - 18}" y="{y + 19}" text-anchor="end" fill="#555" font-size="10.5">'
            f'{escape(short_rule(rule))}</text>']


def short_rule(rule: str) -> str:
    """The revision and page of a rule: what fits beside a step."""
    return rule.split(":")[0]


def draw_event(y: int, event: dict, start: float) -> list:
    shapes = [f'<text class="time" x="18" y="{y + 15}" fill="#777">{(event["at"] - start) * 1000:.1f} ms</text>']
    lx = LIFELINE[event["side"]]
    if event["kind"] == "state":
        anchor, tx = ("end", lx - 14) if event["side"] == "client" else ("start", lx + 14)
        shapes.append(f'<text x="{tx}" y="{y + 15}" text-anchor="{anchor}" fill="#333" font-style="italic">'
                      f'{event["from"]} --{event["event"]}--&gt; {event["to"]}</text>')
        return shapes
    to = LIFELINE["server" if event["side"] == "client" else "client"]
    mid = y + ROW // 2 + 2
    head = to - 8 if to > lx else to + 8
    colour = "#08519c" if event["side"] == "client" else "#a63603"
    shapes.append(f'<line x1="{lx}" y1="{mid}" x2="{head}" y2="{mid}" stroke="{colour}" stroke-width="1.5"/>')
    shapes.append(f'<polygon points="{to},{mid} {head},{mid - 4} {head},{mid + 4}" fill="{colour}"/>')
    shapes.append(f'<text x="{(lx + to) // 2}" y="{mid - 4}" text-anchor="middle" fill="{colour}">'
                  f'{escape(label(event["message"]))}</text>')
    return shapes


# ==== Command line ====

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--era", choices=["legacy", "modern"], default="legacy")
    parser.add_argument("--crash", action="store_true", help="add a crash, a restart and a crash loop")
    parser.add_argument("--svg", metavar="FILE", help="also draw the run as a sequence diagram")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the server side of the tour
    opts = parser.parse_args()
    if opts.serve:
        server = tour_server()
        server.trace = mcp_ref.trace_to_stderr("server")
        return server.run()
    tour = run_tour(opts.era, opts.crash)
    if opts.svg:
        era = "2026-07-28" if opts.era == "modern" else "2025-11-25"
        Path(opts.svg).write_text(draw(tour, f"One MCP connection over stdio, {era}: mcp_ref's tour"))
        print(f"drawn: {opts.svg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
