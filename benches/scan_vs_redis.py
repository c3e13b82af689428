#!/usr/bin/env python3
"""A full SCAN of a large keyspace, kv-server against redis-server (issue 11, item 5).

Loads KEYS keys (16-byte values) into both servers, then times full SCAN
walks (cursor 0 back to 0) with COUNT 10, 100 and 1000, each server in
turn for ROUNDS rounds; prints the median time of each and the ratio
kv/redis. Also times how long `kv-client LIST` takes to print its first key.

    python3 benches/scan_vs_redis.py [KEYS] [ROUNDS]     (defaults 1000000 3)

BIN_DIR (default target/release) picks kv-server and kv-client. Needs
redis-server and redis-cli.
"""
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BIN_DIR", os.path.join(ROOT, "target", "release"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait(port):
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def load(port, n):
    lines = bytearray()
    for i in range(n):
        k = f"key:{i:08d}".encode()
        lines += b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$16\r\nvvvvvvvvvvvvvvvv\r\n" % (len(k), k)
    subprocess.run(["redis-cli", "-p", str(port), "--pipe"], input=bytes(lines),
                   check=True, stdout=subprocess.DEVNULL)


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.f = self.s.makefile("rb")

    def call(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.s.sendall(out)
        return self.read()

    def read(self):
        line = self.f.readline()
        t, rest = line[:1], line[1:-2]
        if t == b"*":
            return [self.read() for _ in range(int(rest))]
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self.f.read(n + 2)[:-2]
        if t == b"-":
            raise RuntimeError(rest.decode())
        return rest


def full_scan(port, count):
    c = Conn(port)
    cursor, seen = b"0", 0
    start = time.perf_counter()
    while True:
        cursor, keys = c.call("SCAN", cursor, "COUNT", count)
        seen += len(keys)
        if cursor == b"0":
            return time.perf_counter() - start, seen


def first_key_seconds(port):
    start = time.perf_counter()
    p = subprocess.Popen([os.path.join(BIN, "kv-client"), f"127.0.0.1:{port}", "-c", "LIST"],
                         stdout=subprocess.PIPE)
    p.stdout.readline()
    took = time.perf_counter() - start
    p.kill()
    p.wait()
    return took


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    kv_port, redis_port = free_port(), free_port()
    procs = [
        subprocess.Popen([os.path.join(BIN, "kv-server"), "--port", str(kv_port), "--no-persistence"],
                         stdout=subprocess.DEVNULL),
        subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
                         stdout=subprocess.DEVNULL),
    ]
    try:
        wait(kv_port)
        wait(redis_port)
        load(kv_port, n)
        load(redis_port, n)
        print(f"| COUNT | kv-server full SCAN (s) | redis-server (s) | kv / redis |")
        print("|---|---|---|---|")
        for count in (10, 100, 1000):
            kv, rd = [], []
            for _ in range(rounds):
                t, seen = full_scan(kv_port, count)
                assert seen == n, f"kv returned {seen} keys of {n}"
                kv.append(t)
                t, seen = full_scan(redis_port, count)
                rd.append(t)
            k, r = statistics.median(kv), statistics.median(rd)
            print(f"| {count} | {k:.2f} | {r:.2f} | {k / r:.2f} |")
        print(f"\nkv-client LIST printed its first key of {n} after {first_key_seconds(kv_port):.3f} s")
    finally:
        for p in procs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
