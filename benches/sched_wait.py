#!/usr/bin/env python3
"""Where a server's time goes under redis-benchmark: CPU and run-queue wait per thread.

  sched_wait.py BIN THREADS TEST P N [pin]

Starts BIN (a kv-server, with `--threads THREADS` unless THREADS is `default`; or
redis-server when BIN is `redis`, with `appendfsync everysec`) on a free-ish port and a
fresh data directory, fills it (200,000 SETs at P=16), then runs `redis-benchmark -c 50
-P P -n N -r 100000 -d 100 -t TEST` and prints its requests/s, p50 and p99 and, for every
server thread that ran or waited over 1 ms, the CPU it used and the time it spent runnable
but not running (second field of /proc/PID/task/TID/schedstat), with context switches.
With `pin`, the server runs on CPU 0 and redis-benchmark on CPU 1. Standard library only.
"""
import os, sys, subprocess, time, tempfile, socket, csv, io
bin_, threads, test, p, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
pin = len(sys.argv) > 6
port = 7400 + os.getpid() % 100
d = tempfile.mkdtemp(prefix="sched-")
pre = ["taskset", "-c", "0"] if pin else []
bpre = ["taskset", "-c", "1"] if pin else []
if bin_ == "redis":
    argv = pre + ["redis-server", "--port", str(port), "--dir", d, "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
else:
    argv = pre + [bin_, "--port", str(port), "--data-dir", d, "--fsync", "everysec"] + (["--threads", threads] if threads != "default" else [])
srv = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close(); break
    except OSError:
        time.sleep(0.05)
subprocess.run(bpre + ["redis-benchmark", "-p", str(port), "-c", "50", "-P", "16", "-n", "200000", "-r", "100000", "-d", "100", "-t", "set", "-q"], capture_output=True)
def snap():
    out = {}
    for tid in os.listdir("/proc/%d/task" % srv.pid):
        try:
            name = open("/proc/%d/task/%s/comm" % (srv.pid, tid)).read().strip()
            run, wait, slices = map(int, open("/proc/%d/task/%s/schedstat" % (srv.pid, tid)).read().split())
            st = open("/proc/%d/task/%s/status" % (srv.pid, tid)).read()
            nv = int([l for l in st.splitlines() if l.startswith("nonvoluntary_ctxt_switches")][0].split()[1])
            v = int([l for l in st.splitlines() if l.startswith("voluntary_ctxt_switches")][0].split()[1])
            out[tid] = (name, run, wait, slices, v, nv)
        except OSError:
            pass
    return out
a = snap()
t0 = time.time()
r = subprocess.run(bpre + ["redis-benchmark", "-p", str(port), "-c", "50", "-P", p, "-n", n, "-r", "100000", "-d", "100", "-t", test, "--csv"], capture_output=True, text=True)
el = time.time() - t0
b = snap()
srv.terminate(); srv.wait()
rows = [x for x in csv.reader(io.StringIO(r.stdout)) if x and x[0] != "test"]
rps, p50, p99 = float(rows[0][1]), rows[0][4], rows[0][6]
print("%s threads=%s %s P=%s: %.0f rps p50 %s p99 %s (%.1f s)" % (os.path.basename(bin_), threads, test, p, rps, p50, p99, el))
tot_wait = 0
for tid, (name, run, wait, sl, v, nv) in sorted(b.items()):
    if tid not in a: continue
    _, run0, wait0, sl0, v0, nv0 = a[tid]
    dr, dw = (run - run0) / 1e6, (wait - wait0) / 1e6
    tot_wait += dw
    if dr > 1 or dw > 1:
        print("   %-14s cpu %7.1f ms  runq-wait %7.1f ms  (%.2f us/req)  vol-sw %6d  invol-sw %6d" % (name, dr, dw, dw * 1000 / int(n), v - v0, nv - nv0))
print("   total run-queue wait %.1f ms = %.2f us per request" % (tot_wait, tot_wait * 1000 / int(n)))
