#!/usr/bin/env python3
"""Side-by-side throughput and memory of a RESP server against a real redis-server.

Both servers run on this machine with matching persistence; redis-benchmark drives them in
turn (A B A B ...) for several rounds, so that drift in the machine's speed hits both alike.
The figure to quote is the median of the per-round ratios candidate/redis.

Needs redis-server and redis-benchmark on PATH (Debian: apt-get install redis-server redis-tools).
Standard library only.

example:
  resp_vs_redis.py --candidate "target/release/kv-server --port {port} --data-dir {dir} --fsync everysec" \
      --persistence everysec --clients 50 --pipeline 1,16 --requests 200000 --keyspace 100000 --datasize 100
"""
import argparse
import csv
import io
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REDIS_PERSISTENCE = {
    "none": ["--save", "", "--appendonly", "no"],
    "everysec": ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
    "always": ["--save", "", "--appendonly", "yes", "--appendfsync", "always"],
}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ping(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def rss_kib(pid, field="VmRSS"):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Server:
    def __init__(self, name, argv, workdir, cpu):
        self.name, self.argv, self.workdir = name, argv, workdir
        if cpu is not None:
            self.argv = ["taskset", "-c", str(cpu)] + self.argv
        self.proc = None
        self.port = None

    def start(self, port):
        self.port = port
        self.log = open(os.path.join(self.workdir, self.name + ".log"), "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL, cwd=self.workdir)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited at start (code %s); see its log" % (self.name, self.proc.returncode))
            if ping(port):
                self.rss_start = rss_kib(self.proc.pid)
                return
            time.sleep(0.05)
        raise RuntimeError("%s did not answer PING within 30 s" % self.name)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bench(port, tests, clients, pipeline, requests, keyspace, datasize, cpu):
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(clients), "-P", str(pipeline),
           "-n", str(requests), "-r", str(keyspace), "-d", str(datasize), "-t", tests, "--csv"]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError("redis-benchmark failed: %s" % (out.stderr.strip() or out.stdout.strip())[:300])
    rows = {}
    for rec in csv.reader(io.StringIO(out.stdout)):
        if len(rec) >= 2 and rec[0] != "test":
            try:
                rows[rec[0]] = {"rps": float(rec[1]), "p99": float(rec[6]) if len(rec) > 6 else float("nan")}
            except ValueError:
                pass
    if not rows:
        raise RuntimeError("redis-benchmark printed no results: %s" % out.stdout[:300])
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidate", required=True, help="command line with {port} and {dir} placeholders")
    ap.add_argument("--persistence", choices=sorted(REDIS_PERSISTENCE), default="everysec")
    ap.add_argument("--tests", default="set,get")
    ap.add_argument("--clients", default="50")
    ap.add_argument("--pipeline", default="1,16")
    ap.add_argument("--requests", type=int, default=200000)
    ap.add_argument("--keyspace", type=int, default=100000)
    ap.add_argument("--datasize", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--taskset", action="store_true", help="servers on CPU 0, redis-benchmark on CPU 1")
    ap.add_argument("--per-round", action="store_true", help="also print each round's p99 of both servers")
    a = ap.parse_args()
    for tool in ("redis-server", "redis-benchmark"):
        if not shutil.which(tool):
            print("%s is not installed (Debian: apt-get install redis-server redis-tools)" % tool)
            return 2
    server_cpu, bench_cpu = (0, 1) if a.taskset else (None, None)
    root = tempfile.mkdtemp(prefix="resp-vs-redis-")
    servers = []
    try:
        cport, rport = free_port(), free_port()
        cdir = os.path.join(root, "candidate-data")
        rdir = os.path.join(root, "redis-data")
        os.makedirs(rdir)
        cand_argv = [x.replace("{port}", str(cport)).replace("{dir}", cdir) for x in shlex.split(a.candidate)]
        redis_argv = ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--dir", rdir,
                      "--daemonize", "no", "--protected-mode", "no"] + REDIS_PERSISTENCE[a.persistence]
        cand = Server("candidate", cand_argv, root, server_cpu)
        redis = Server("redis", redis_argv, root, server_cpu)
        servers = [cand, redis]
        cand.start(cport)
        redis.start(rport)
        # fill the key space so that GETs hit, untimed
        for s in servers:
            bench(s.port, "set", 50, 16, a.keyspace * 2, a.keyspace, a.datasize, bench_cpu)
        results = {}  # (test, clients, pipeline) -> {"candidate": [...], "redis": [...], "ratio": [...]}
        for rnd in range(a.rounds):
            order = servers if rnd % 2 == 0 else servers[::-1]
            for c in [int(x) for x in a.clients.split(",")]:
                for p in [int(x) for x in a.pipeline.split(",")]:
                    got = {}
                    for s in order:
                        got[s.name] = bench(s.port, a.tests, c, p, a.requests, a.keyspace, a.datasize, bench_cpu)
                    for test in got["candidate"]:
                        if test not in got["redis"]:
                            continue
                        r = results.setdefault((test, c, p), {"candidate": [], "redis": [], "ratio": [], "cp99": [], "rp99": []})
                        r["candidate"].append(got["candidate"][test]["rps"])
                        r["redis"].append(got["redis"][test]["rps"])
                        r["ratio"].append(got["candidate"][test]["rps"] / got["redis"][test]["rps"])
                        r["cp99"].append(got["candidate"][test]["p99"])
                        r["rp99"].append(got["redis"][test]["p99"])
        mem = {}
        for s in servers:
            mem[s.name] = (rss_kib(s.proc.pid) - s.rss_start, rss_kib(s.proc.pid, "VmHWM"))
        print("mode: persistence=%s, %s, %d rounds, %d requests, keyspace %d, %d-byte values"
              % (a.persistence, "pinned (servers CPU 0, benchmark CPU 1)" if a.taskset else "unpinned",
                 a.rounds, a.requests, a.keyspace, a.datasize))
        print("%-6s %7s %4s %14s %14s %8s %7s %9s %9s" % ("test", "clients", "P", "candidate rps", "redis rps",
                                                          "ratio", "spread", "cand p99", "redis p99"))
        worst = None
        for (test, c, p), r in sorted(results.items()):
            ratio = statistics.median(r["ratio"])
            spread = max(r["ratio"]) - min(r["ratio"])
            print("%-6s %7d %4d %14.0f %14.0f %8.3f %7.3f %9.3f %9.3f" % (
                test, c, p, statistics.median(r["candidate"]), statistics.median(r["redis"]), ratio, spread,
                statistics.median(r["cp99"]), statistics.median(r["rp99"])))
            if a.per_round:
                print("       p99 per round: candidate %s, redis %s, candidate/redis %s" % (
                    "/".join("%.3f" % x for x in r["cp99"]), "/".join("%.3f" % x for x in r["rp99"]),
                    "/".join("%.2f" % (x / y) for x, y in zip(r["cp99"], r["rp99"]))))
            if worst is None or ratio < worst[0]:
                worst = (ratio, "%s c=%d P=%d" % (test, c, p))
        keys = a.keyspace
        for name, (grown, peak) in mem.items():
            print("memory %-9s grew %8.1f MiB after loading ~%d keys (%.0f bytes/key), peak RSS %.1f MiB"
                  % (name, grown / 1024, keys, grown * 1024 / keys, peak / 1024))
        print("worst ratio %.3f (%s)" % worst)
        return 0
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print("error: %s" % e)
        return 1
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
