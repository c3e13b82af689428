#!/usr/bin/env python3
"""Memory per key: kv-server against redis-server, each loaded with the same
N keys (16-byte keys, 100-byte values) through `redis-cli --pipe`, with the
same persistence (kv --fsync everysec; redis appendonly yes, appendfsync
everysec). Prints RSS growth per key, split into anonymous memory (the data
structures) and file pages mapped by the process.

    python3 benches/memory_per_key.py [--keys 1000000] [--kv target/release/kv-server]

Needs redis-server and redis-cli (apt-get install redis-server redis-tools).
"""
import argparse
import os
import socket
import subprocess
import tempfile
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("VmRSS:", "RssAnon:", "RssFile:", "RssShmem:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out


def wait_ping(port):
    deadline = time.time() + 30
    while time.time() < deadline:
        r = subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True, text=True)
        if r.stdout.strip() == "PONG":
            return
        time.sleep(0.05)
    raise RuntimeError("server on port %d did not answer" % port)


def load(port, n):
    value = b"v" * 100
    chunks = []
    for i in range(n):
        key = b"key%013d" % i
        chunks.append(b"*3\r\n$3\r\nSET\r\n$16\r\n%s\r\n$100\r\n%s\r\n" % (key, value))
    data = b"".join(chunks)
    r = subprocess.run(["redis-cli", "-p", str(port), "--pipe"], input=data, capture_output=True)
    if r.returncode != 0:
        raise RuntimeError("redis-cli --pipe failed: %s" % r.stderr[:300])


def measure(name, argv, port, n, workdir):
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    try:
        wait_ping(port)
        before = status(proc.pid)
        load(port, n)
        time.sleep(1.5)  # let an everysec fsync (and its page release) happen
        after = status(proc.pid)
        dbsize = subprocess.run(["redis-cli", "-p", str(port), "DBSIZE"], capture_output=True, text=True).stdout.strip()
        return name, before, after, dbsize
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--kv", default=os.path.abspath("target/release/kv-server"))
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        p = free_port()
        kv_dir = os.path.join(d, "kv")
        rows.append(measure("kv-server", [a.kv, "--port", str(p), "--data-dir", kv_dir, "--fsync", "everysec"], p, a.keys, d))
        p = free_port()
        rd = os.path.join(d, "redis")
        os.mkdir(rd)
        rows.append(measure("redis", ["redis-server", "--port", str(p), "--dir", rd, "--save", "",
                                      "--appendonly", "yes", "--appendfsync", "everysec"], p, a.keys, d))
    print("%d keys, 16-byte keys, 100-byte values" % a.keys)
    print("%-10s %8s %14s %14s %14s" % ("server", "dbsize", "RSS/key", "anon/key", "file/key"))
    for name, b, c, dbsize in rows:
        per = lambda k: (c.get(k, 0) - b.get(k, 0)) / a.keys
        print("%-10s %8s %14.1f %14.1f %14.1f" % (name, dbsize, per("VmRSS"), per("RssAnon"), per("RssFile")))


if __name__ == "__main__":
    main()
