"""Hostile clients for benches/attack-load.sh: hold request bodies open, or
hold idle connections, against a TLS webhook on loopback, for a bounded time.

usage: attack_client.py HOST PORT CA_FILE MODE N SECONDS
  MODE bodies: N HTTP/1.1 connections, each POSTs /validate announcing an
               8 MiB - 1 body, sends 1 MiB of it, then holds the rest back
  MODE idle:   N TLS connections that send nothing (reopened when closed)
Prints how many connections were open at the end, then exits.
"""
import socket
import ssl
import sys
import time

host, port, ca, mode, n, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["http/1.1"])
deadline = time.time() + seconds


def connect():
    # Another loopback address than the load generator's: the server
    # shares its limits per client address.
    raw = socket.create_connection((host, port), timeout=5, source_address=("127.0.0.2", 0))
    s = ctx.wrap_socket(raw, server_hostname=host)
    if mode == "bodies":
        s.sendall(
            b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + b"Content-Length: %d\r\n\r\n" % ((8 << 20) - 1)
        )
        chunk = b" " * (64 << 10)
        for _ in range(16):
            s.sendall(chunk)
    s.setblocking(False)
    return s


def alive(s):
    try:
        return s.recv(1) != b""
    except (BlockingIOError, ssl.SSLWantReadError):
        return True
    except OSError:
        return False


conns = []
while time.time() < deadline:
    conns = [c for c in conns if alive(c)]
    while len(conns) < n and time.time() < deadline:
        try:
            conns.append(connect())
        except OSError:
            break
    time.sleep(0.5)
print(f"open={len(conns)}")
