#!/usr/bin/env python3
"""PING latency and server memory while hostile connections run (issue 10).

Starts one kv-server (one event loop, so every attack shares the PING
client's loop; a password; --maxmemory), then for each attack in turn:
runs it in child processes for --seconds while this process sends PINGs
one at a time on an authenticated connection, and samples the server's
RSS from /proc every 50 ms. Prints, per attack, PING p50/p99/max in ms,
the PINGs answered, the server's peak RSS and what the attack achieved.

Attacks (the reproductions at the top of issue 10):
  none            baseline
  slow_multibulk  4 authenticated connections announce *1000000 and send one
                  element per millisecond (a parser that re-reads from the
                  start burns the loop)
  unauth_buffer   16 unauthenticated connections each announce a 64 MiB bulk
                  and stream into it as fast as they can, reconnecting when
                  closed
  idle_flood      --idle connections opened and left idle (past --max-clients)
  auth_guess      4 connections pipelining wrong AUTH guesses
  peer_garbage    connections that send the peer preamble and a 16 KiB frame
                  of junk, reconnecting in a loop

Standard library only. Example:
  python3 benches/attack_latency.py --bin target/release/kv-server --seconds 10
"""
import argparse
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

PASSWORD = "attack-bench-password"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_bytes(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def command(*args):
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def connect(port, auth):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if auth:
        s.sendall(command("AUTH", PASSWORD))
        if not s.recv(64).startswith(b"+OK"):
            raise RuntimeError("AUTH failed")
    return s


def until(deadline):
    return time.monotonic() < deadline


def slow_multibulk(port, deadline, stats):
    conns = [connect(port, True) for _ in range(4)]
    for c in conns:
        c.sendall(b"*1000000\r\n")
    sent = 0
    while until(deadline):
        for c in conns:
            try:
                c.sendall(b"$1\r\nx\r\n")
                sent += 1
            except OSError:
                stats["closed"] = stats.get("closed", 0) + 1
                conns.remove(c)
                break
        time.sleep(0.001)
        if not conns:
            break
    stats["elements sent"] = sent


def unauth_buffer(port, deadline, stats):
    chunk = b"x" * 65536
    header = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$67108864\r\n"
    sent, closed = 0, 0
    conns = []
    while until(deadline):
        while len(conns) < 16:
            try:
                c = socket.create_connection(("127.0.0.1", port), timeout=1)
                c.setblocking(False)
                c.send(header)
                conns.append(c)
            except OSError:
                break
        for c in list(conns):
            try:
                sent += c.send(chunk)
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
                conns.remove(c)
                c.close()
        time.sleep(0.0005)
    stats["bytes sent"] = sent
    stats["connections closed by the server"] = closed


def idle_flood(port, deadline, stats, n):
    conns = []
    refused = 0
    for _ in range(n):
        try:
            conns.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        except OSError:
            refused += 1
    stats["idle connections opened"] = len(conns)
    stats["connect errors"] = refused
    while until(deadline):
        time.sleep(0.1)
    # How many the server kept open.
    alive = 0
    for c in conns:
        c.setblocking(False)
        try:
            if c.recv(1) == b"":
                continue
        except BlockingIOError:
            alive += 1
            continue
        except OSError:
            continue
        alive += 1
    stats["still open at the end"] = alive


def auth_guess(port, deadline, stats):
    conns = [socket.create_connection(("127.0.0.1", port), timeout=1) for _ in range(4)]
    guesses = command("AUTH", "wrong-guess") * 100
    sent, closed = 0, 0
    while until(deadline):
        for i, c in enumerate(conns):
            try:
                c.sendall(guesses)
                sent += 100
                c.setblocking(False)
                try:
                    while c.recv(65536):
                        pass
                except BlockingIOError:
                    pass
                c.setblocking(True)
            except OSError:
                closed += 1
                c.close()
                conns[i] = socket.create_connection(("127.0.0.1", port), timeout=1)
        time.sleep(0.001)
    stats["guesses sent"] = sent
    stats["connections closed by the server"] = closed


def peer_garbage(port, deadline, stats):
    preamble = bytes([0xF0, ord("K"), ord("V"), ord("N"), 0, 1, 0, 4])
    junk = os.urandom(16384)
    frame = len(junk).to_bytes(4, "little") + junk
    n = 0
    while until(deadline):
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=1)
            c.sendall(preamble + frame)
            c.settimeout(0.2)
            try:
                c.recv(4096)
            except OSError:
                pass
            c.close()
            n += 1
        except OSError:
            time.sleep(0.01)
    stats["connections made"] = n


ATTACKS = ["none", "slow_multibulk", "unauth_buffer", "idle_flood", "auth_guess", "peer_garbage"]


def run_attack(name, port, seconds, idle, queue):
    stats = {}
    deadline = time.monotonic() + seconds
    try:
        if name == "slow_multibulk":
            slow_multibulk(port, deadline, stats)
        elif name == "unauth_buffer":
            unauth_buffer(port, deadline, stats)
        elif name == "idle_flood":
            idle_flood(port, deadline, stats, idle)
        elif name == "auth_guess":
            auth_guess(port, deadline, stats)
        elif name == "peer_garbage":
            peer_garbage(port, deadline, stats)
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        stats["attack error"] = repr(e)
    queue.put(stats)


def ping_loop(port, seconds, pid):
    c = connect(port, True)
    lat, peak = [], 0
    end = time.monotonic() + seconds
    next_rss = 0.0
    while time.monotonic() < end:
        t0 = time.perf_counter()
        c.sendall(b"*1\r\n$4\r\nPING\r\n")
        got = b""
        while not got.endswith(b"\r\n"):
            got += c.recv(64)
        lat.append((time.perf_counter() - t0) * 1000)
        now = time.monotonic()
        if now >= next_rss:
            peak = max(peak, rss_bytes(pid))
            next_rss = now + 0.05
        time.sleep(0.001)
    c.close()
    return lat, peak


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/kv-server")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--idle", type=int, default=12000, help="connections of idle_flood")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    args = ap.parse_args()
    port = free_port()
    data = tempfile.mkdtemp(prefix="kv-attack-")
    cmd = [args.bin, "--port", str(port), "--data-dir", data, "--no-persistence",
           "--threads", "1", "--requirepass", PASSWORD, "--maxmemory", "100mb",
           "--max-clients", "10000", "--loglevel", "warning"]
    log = open(os.path.join(data, "server.log"), "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=log)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        print(f"# {' '.join(cmd)}")
        print(f"# {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, load average {os.getloadavg()[0]:.1f}, "
              f"{args.seconds:.0f} s per attack, PINGs one at a time with 1 ms pauses")
        print("| attack | PINGs | p50 ms | p99 ms | max ms | peak RSS MB | what the attack did |")
        print("|---|---|---|---|---|---|---|")
        for name in args.attacks.split(","):
            queue = multiprocessing.Queue()
            p = multiprocessing.Process(target=run_attack, args=(name, port, args.seconds, args.idle, queue))
            p.start()
            time.sleep(0.5 if name != "idle_flood" else 3.0)
            lat, peak = ping_loop(port, max(1.0, args.seconds - 1.5), server.pid)
            p.join(args.seconds + 30)
            try:
                stats = queue.get(timeout=30)
            except Exception:  # noqa: BLE001 - the attack process died
                stats = {"attack": "reported nothing"}
            if p.is_alive():
                p.kill()
            lat.sort()
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            said = "; ".join(f"{k} {v}" for k, v in stats.items())
            print(f"| {name} | {len(lat)} | {statistics.median(lat):.2f} | {p99:.2f} | {lat[-1]:.2f} | "
                  f"{peak / 1e6:.1f} | {said} |", flush=True)
            if server.poll() is not None:
                print(f"the server exited during {name}: {server.returncode}", file=sys.stderr)
                return 1
            time.sleep(1.0)
        with open(os.path.join(data, "server.log")) as f:
            warnings = [line.rstrip() for line in f if " warning " in line]
        print(f"# server warnings: {len(warnings)}" + (f", last: {warnings[-1]}" if warnings else ""))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
