#!/usr/bin/env python3
"""soak.py: open, handshake and close a server many times; count what is left.

Each cycle opens a ``mcp_ref.Client`` on a server command, negotiates (the
2026-07-28 probe, or the handshake), lists the tools, and closes.  After all cycles it reports:

- processes left behind: children of this process still alive (must be 0);
- file descriptors: how many this process has open now versus before the
  first cycle (the difference must be 0);
- threads: how many more are running than before (must be 0);
- the time per cycle (median and worst), which is mostly interpreter start.

Usage, from the project root::

    python3 examples/soak.py                          # 500 cycles of the demo server
    python3 examples/soak.py --cycles 50 -- python3 my_server.py

Exit status 0 when nothing was left behind, 1 otherwise.  The test suite
runs a short version of this through ``soak()``.
"""

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mcp_ref  # noqa: E402 - after the path is set


def children() -> set:
    """PIDs of this process's living children: /proc on Linux, a process snapshot on Windows."""
    if os.name == "nt":
        return _windows_children()
    if not Path("/proc/self").exists():  # macOS and the BSDs: ask ps
        import subprocess
        ps = subprocess.Popen(["ps", "-A", "-o", "pid=,ppid=,stat="], stdout=subprocess.PIPE, text=True)
        rows = ps.communicate()[0]
        return {int(pid) for pid, ppid, stat in (row.split()[:3] for row in rows.splitlines())
                if int(ppid) == os.getpid() and int(pid) != ps.pid and not stat.startswith("Z")}
    me = str(os.getpid())
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        if fields[1] == me and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def open_fds() -> int:
    """File descriptors (Windows: handles) this process has open."""
    if os.name != "nt" and not Path("/proc/self/fd").exists():
        return len(os.listdir("/dev/fd"))  # macOS
    if os.name == "nt":
        import ctypes
        count = ctypes.c_uint32()
        kernel32 = ctypes.WinDLL("kernel32")
        kernel32.GetProcessHandleCount(ctypes.c_void_p(kernel32.GetCurrentProcess()), ctypes.byref(count))
        return count.value
    return len(os.listdir("/proc/self/fd"))


def _windows_children() -> set:
    """Windows: the processes whose parent is this one (CreateToolhelp32Snapshot)."""
    import ctypes
    from ctypes import wintypes

    class Entry(ctypes.Structure):  # PROCESSENTRY32W
        _fields_ = [("dwSize", wintypes.DWORD), ("cntUsage", wintypes.DWORD),
                    ("th32ProcessID", wintypes.DWORD), ("th32DefaultHeapID", ctypes.c_void_p),
                    ("th32ModuleID", wintypes.DWORD), ("cntThreads", wintypes.DWORD),
                    ("th32ParentProcessID", wintypes.DWORD), ("pcPriClassBase", ctypes.c_long),
                    ("dwFlags", wintypes.DWORD), ("szExeFile", ctypes.c_wchar * 260)]
    kernel32 = ctypes.WinDLL("kernel32")
    kernel32.CreateToolhelp32Snapshot.restype = ctypes.c_void_p
    kernel32.Process32FirstW.argtypes = kernel32.Process32NextW.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
    kernel32.CloseHandle.argtypes = (ctypes.c_void_p,)
    snapshot = kernel32.CreateToolhelp32Snapshot(2, 0)  # TH32CS_SNAPPROCESS
    entry = Entry(dwSize=ctypes.sizeof(Entry))
    found, me = set(), os.getpid()
    try:
        more = kernel32.Process32FirstW(snapshot, ctypes.byref(entry))
        while more:
            if entry.th32ParentProcessID == me:
                found.add(entry.th32ProcessID)
            more = kernel32.Process32NextW(snapshot, ctypes.byref(entry))
    finally:
        kernel32.CloseHandle(snapshot)
    return found


def soak(command: list, cycles: int) -> dict:
    """Run the cycles; return the figures (see the module docstring)."""
    fds, threads = open_fds(), threading.active_count()
    times = []
    for _ in range(cycles):
        started = time.perf_counter()
        with mcp_ref.Client(command, timeout=30) as client:
            if "tools" in client.server_capabilities:  # one request, in either era
                client.list_tools()
        times.append(time.perf_counter() - started)
    return {
        "cycles": cycles,
        "processes_left": len(children()),
        "fds_leaked": open_fds() - fds,
        "threads_left": threading.active_count() - threads,
        "cycle_ms_median": round(statistics.median(times) * 1000, 1),
        "cycle_ms_worst": round(max(times) * 1000, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the server command, after -- (default: the demo server)")
    opts = parser.parse_args()
    command = opts.command[1:] if opts.command[:1] == ["--"] else opts.command
    command = command or [sys.executable, str(ROOT / "mcp_ref.py"), "serve"]
    figures = soak(command, opts.cycles)
    for name, value in figures.items():
        print(f"{name:>16}: {value}")
    clean = not (figures["processes_left"] or figures["fds_leaked"] or figures["threads_left"])
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
