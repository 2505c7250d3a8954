#!/usr/bin/env python3
"""floor_server.py: the cheapest stdio "MCP server" there is, as a benchmark floor.

Not a correct server: no validation, no state machine, no threads, no
shutdown sequence.  It reads a line, parses it, answers the four methods the
benchmark sends (initialize, ping, tools/list, tools/call echo), and exits at
EOF.  What it costs is the interpreter, the pipes and json, nothing more:
``examples/bench.py`` divides every server's figures by this one's, so the
ratios say what a real server adds to that physical limit.
"""

import json
import sys

TOOLS = [{"name": "echo", "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}}]


def answer(msg: dict):
    """The result for one request, or None for a notification."""
    method = msg.get("method")
    if "id" not in msg:
        return None
    if method == "initialize":
        return {"protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}},
                "serverInfo": {"name": "floor", "version": "0"}}
    if method == "tools/list":
        return {"tools": TOOLS}
    if method == "tools/call":
        return {"content": [{"type": "text", "text": msg["params"]["arguments"]["text"]}], "isError": False}
    return {}  # ping, and anything else


def main() -> None:
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        msg = json.loads(line)
        result = answer(msg)
        if result is not None:
            out.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result},
                                 separators=(",", ":")).encode() + b"\n")
            out.flush()


if __name__ == "__main__":
    main()
