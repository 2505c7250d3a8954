#!/usr/bin/env python3
"""notes_server.py: a small MCP server that keeps notes in a JSON file.

What it shows, beyond ``python3 mcp_ref.py serve``: tools with structured
results and an outputSchema (``add_note``, ``search_notes``), a destructive
tool (``delete_note``), and tool errors the model sees as isError results
(raise; mcp_ref converts); a resource ``notes://all`` (application/json) and
a template ``notes://note/{id}``, with resources/updated notifications after
each change for clients that subscribed; a prompt ``summarize_notes(topic)``;
state shared by the worker threads under one lock; a cleanup hook
(``server.on_shutdown``) that writes the store atomically (a temporary file,
then os.replace); and ``logging`` as the only output: records go to stderr
at --log-level, and to the client at the level it sets (Server.run()
attaches server.log_handler to the root logger).  Nothing here writes to
stdout: it carries the protocol.

Run it (from the project root, or anywhere)::

    python3 examples/notes_server.py [--file notes.json] [--log-level info]
    python3 mcp_ref.py client --call add_note --args '{"title":"t","body":"b"}' \\
        -- python3 examples/notes_server.py

The file is --file, else $NOTES_FILE, else mcp_ref_notes.json in the temp
directory.  (mcp_ref.Client passes a server only an allowlist of the host's
environment: give it env={"NOTES_FILE": ...}, or use --file.)  A host
configuration (Claude Desktop, an IDE) that starts it::

    {"mcpServers": {"notes": {"command": "python3",
                              "args": ["examples/notes_server.py"]}}}

Trade-off: the store is written behind, once, at shutdown.  A host that
closes stdin (as mcp_ref.Client does) or sends SIGTERM gets every note
saved; SIGKILL or a crash loses the notes added since the server started.
"""

import argparse
import datetime
import json
import logging
import os
import sys
import tempfile
import threading

# Import mcp_ref from the project root, wherever this file is run from.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mcp_ref  # noqa: E402 - after the path fix, on purpose

log = logging.getLogger("notes")

ALL_URI = "notes://all"
NOTE_URI = "notes://note/{id}"

# The shape of one note: add_note's outputSchema, and the items search returns.
NOTE_SCHEMA = {"type": "object", "required": ["id", "title", "body", "tags", "created"],
               "properties": {"id": {"type": "string"}, "title": {"type": "string"},
                              "body": {"type": "string"}, "created": {"type": "string"},
                              "tags": {"type": "array", "items": {"type": "string"}}}}


# ==== The store: NoteStore ===================================================

class NoteStore:
    """The notes in memory, loaded from and saved to one JSON file."""

    def __init__(self, path: str):
        self.path = path
        # Guards notes, next_id and dirty: tools run on several worker
        # threads at once, and the shutdown hook runs on yet another.
        self.lock = threading.Lock()
        self.notes = {}       # id -> note dict, in insertion order
        self.next_id = 1      # ids are never reused, even after a delete
        self.dirty = False    # changed since the last save
        if os.path.exists(path):
            # A file we cannot parse raises ValueError: better to refuse to
            # start than to overwrite someone's notes with an empty store.
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            self.notes = {note["id"]: note for note in data["notes"]}
            self.next_id = data["next_id"]

    def save(self) -> None:
        """Write the store atomically: readers see the old file or the new, never half."""
        with self.lock:
            if not self.dirty:
                return
            data = {"next_id": self.next_id, "notes": list(self.notes.values())}
            self.dirty = False
        # The temporary file is in the same directory, so os.replace() is a
        # rename within one file system, which POSIX makes atomic.
        folder = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=".notes-", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())  # on disk before the rename makes it visible
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            with self.lock:
                self.dirty = True  # still unsaved: a later save() may succeed
            raise
        log.info("saved %d notes to %s", len(data["notes"]), self.path)


def _matches(note: dict, query: str) -> bool:
    words = query.lower().split()
    text = " ".join([note["title"], note["body"], *note["tags"]]).lower()
    return all(word in text for word in words)


# ==== The server: build_server ===============================================

def build_server(store: NoteStore) -> mcp_ref.Server:
    """A Server whose tools, resources and prompt work on `store`."""
    server = mcp_ref.Server(
        "notes", version="1.0.0", title="Notes",
        instructions="A notes store: add_note, search_notes, delete_note; "
                     f"read {ALL_URI} for everything, {NOTE_URI} for one note.")

    def changed(note_id: str) -> None:
        # Sent only for URIs the client subscribed to (resources/subscribe).
        # No resources/list_changed: the template already covers new notes.
        server.notify_resource_updated(ALL_URI)
        server.notify_resource_updated(NOTE_URI.format(id=note_id))

    @server.tool(output_schema=NOTE_SCHEMA)
    def add_note(title: str, body: str, tags: list[str] | None = None) -> dict:
        """Add a note and return it, with its new id."""
        # mcp_ref checks argument types at the top level only: check the items.
        if not title.strip():
            raise ValueError("the title must not be empty")
        if not all(isinstance(tag, str) for tag in tags or []):
            raise ValueError("tags must be strings")
        now = datetime.datetime.now(datetime.timezone.utc)
        with store.lock:
            note = {"id": str(store.next_id), "title": title.strip(), "body": body,
                    "tags": list(tags or []), "created": now.isoformat(timespec="seconds")}
            store.notes[note["id"]] = note
            store.next_id += 1
            store.dirty = True
        log.info("added note %s: %s", note["id"], note["title"])
        changed(note["id"])
        return note  # a dict: structuredContent, plus the same JSON as text

    @server.tool(annotations={"readOnlyHint": True}, output_schema={
        "type": "object", "properties": {"count": {"type": "integer"},
                                         "matches": {"type": "array", "items": NOTE_SCHEMA}}})
    def search_notes(query: str, limit: int = 10) -> dict:
        """Find notes whose title, body or tags contain every word of the query."""
        if not 1 <= limit <= 100:
            raise ValueError("limit must be between 1 and 100")
        with store.lock:
            matches = [dict(n) for n in store.notes.values() if _matches(n, query)]
        return {"count": len(matches), "matches": matches[:limit]}

    @server.tool(annotations={"destructiveHint": True, "idempotentHint": True})
    def delete_note(id: str) -> str:
        """Delete the note with this id."""
        with store.lock:
            note = store.notes.pop(id, None)
            store.dirty = store.dirty or note is not None
        if note is None:
            raise ValueError(f"no note with id {id!r}")  # the model sees it: isError
        log.info("deleted note %s", id)
        changed(id)
        return f"deleted note {id}: {note['title']}"

    @server.resource(ALL_URI, description="Every note, as JSON.", mime_type="application/json")
    def all_notes() -> str:
        with store.lock:
            return json.dumps({"notes": list(store.notes.values())}, indent=1)

    @server.resource(NOTE_URI, description="One note, as JSON.", mime_type="application/json")
    def one_note(id: str) -> str:
        with store.lock:
            note = store.notes.get(id)
        if note is None:
            # resources: "Resource not found: -32002", the same as an unknown URI.
            raise mcp_ref.RPCError(mcp_ref.RESOURCE_NOT_FOUND, "Resource not found",
                                   {"uri": NOTE_URI.format(id=id)})
        return json.dumps(note, indent=1)

    @server.prompt()
    def summarize_notes(topic: str) -> str:
        """Ask the model to summarize the notes about a topic."""
        with store.lock:
            found = [n for n in store.notes.values() if _matches(n, topic)]
        if not found:
            return f"I have no notes about {topic!r}. Say so, and suggest what to write down."
        text = "\n\n".join(f"## {n['title']} ({', '.join(n['tags']) or 'no tags'})\n{n['body']}"
                           for n in found)
        return f"Summarize my notes about {topic!r} in a few bullet points:\n\n{text}"

    # Runs once when serving ends, after in-flight tools have drained (a
    # tool still running past drain_timeout is abandoned, and the lock keeps
    # the snapshot whole even then).  Cleanup hooks run before the output
    # closes, so the "saved" log line can still reach the client.
    server.on_shutdown(store.save)
    return server


# ==== The entry point ========================================================

def configure(argv: list) -> mcp_ref.Server:
    """Read the command line, set up logging, load the store; the server to run."""
    parser = argparse.ArgumentParser(description="An MCP server keeping notes in a JSON file.")
    parser.add_argument("--file", default=os.environ.get("NOTES_FILE")
                        or os.path.join(tempfile.gettempdir(), "mcp_ref_notes.json"),
                        help="the JSON file (default: $NOTES_FILE, else one in the temp directory)")
    parser.add_argument("--log-level", default="warning", choices=["info", "warning", "error"],
                        help="what goes to stderr (default: warning)")
    opts = parser.parse_args(argv)
    # The root logger lets INFO through, so a client that asks for "info"
    # receives it; stderr shows only what --log-level allows.
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(opts.log_level.upper())
    logging.basicConfig(level=logging.INFO, handlers=[stderr],
                        format="%(asctime)s notes %(levelname)s: %(message)s")
    try:
        store = NoteStore(opts.file)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        parser.exit(1, f"notes_server: cannot load {opts.file}: {exc}\n")  # stderr, exit 1
    log.info("serving %d notes from %s", len(store.notes), opts.file)
    return build_server(store)


if __name__ == "__main__":
    server = configure(sys.argv[1:])
    raise SystemExit(server.run())
