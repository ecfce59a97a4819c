#!/usr/bin/env python3
"""Where a process's anonymous memory is, from /proc/PID/smaps snapshots.

    anon.py SMAPS...      one line per file: KiB by kind

Kinds: the main malloc heap ([heap]), the other malloc arenas (glibc maps
each in a 64 MiB-aligned reservation: a read-write part followed by a
PROT_NONE rest), thread stacks (a read-write mapping right after a guard
page), the binary's and libraries' relocated data (anonymous pages of file
mappings), and the rest. Used by run.sh for its summary; no dependencies.
"""
import re
import sys

HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")
ARENA_ALIGN = 64 << 20


def parse(path):
    maps, cur = [], None
    with open(path) as f:
        for line in f:
            m = HEADER.match(line)
            if m:
                cur = {"lo": int(m.group(1), 16), "hi": int(m.group(2), 16),
                       "perm": m.group(3), "name": m.group(4).strip(), "anon": 0}
                maps.append(cur)
            elif cur is not None and line.startswith("Anonymous:"):
                cur["anon"] = int(line.split()[1])
    return maps


def kind(maps, i):
    m = maps[i]
    prev = maps[i - 1] if i > 0 else None
    nxt = maps[i + 1] if i + 1 < len(maps) else None
    if m["name"] == "[heap]":
        return "main heap"
    if m["name"] == "[stack]":
        return "main stack"
    if m["name"]:
        return "relocated data"
    if (m["lo"] % ARENA_ALIGN == 0 and nxt and nxt["perm"].startswith("---")
            and nxt["lo"] == m["hi"]):
        return "malloc arenas"
    if (prev and prev["perm"].startswith("---") and prev["hi"] == m["lo"]
            and prev["hi"] - prev["lo"] <= 64 << 10 and m["hi"] - m["lo"] >= 1 << 20):
        return "thread stacks"
    return "other"


def breakdown(path):
    maps = parse(path)
    out = {}
    for i, m in enumerate(maps):
        if m["anon"]:
            k = kind(maps, i)
            count, kib = out.get(k, (0, 0))
            out[k] = (count + 1, kib + m["anon"])
    return out


if __name__ == "__main__":
    for path in sys.argv[1:]:
        b = breakdown(path)
        total = sum(kib for _, kib in b.values())
        parts = ", ".join(f"{k} {kib} KiB ({n})" for k, (n, kib) in sorted(b.items()))
        print(f"{path}: {total} KiB anonymous: {parts}")
