#!/usr/bin/env python3
"""Proxy memory with many idle connections, and after they close.

    python3 benches/idle_connections.py [PROXY_BINARY] [N]

Starts a control plane (empty configuration) and one proxy, opens N (default 10,000) HTTP/1.1
keep-alive connections to its outbound listener, each after one request (answered 503: not in
mesh), and prints the proxy's RSS: idle, with the N connections open, right after they close,
and 15 s later. Everything listens on loopback on ports the OS picked.
"""
import json, os, resource, socket, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
proxy_bin = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/pillion-proxy")
n = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
cp_bin = os.path.join(os.path.dirname(proxy_bin), "pillion-control-plane")

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n * 2 + 1000)), hard))


def wait_line(proc, field):
    while True:
        line = proc.stderr.readline()
        if not line:
            sys.exit(f"{proc.args[0]} ended early")
        try:
            v = json.loads(line)
        except ValueError:
            continue
        f = v.get("fields", {})
        if field in f:
            return f


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as s:
        for line in s:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


env = dict(os.environ, PILLION_LOG_FORMAT="json", PILLION_LOG="info")
conf = tempfile.mkdtemp(prefix="pillion-bench-")
cp = subprocess.Popen([cp_bin, "--config-dir", conf, "--listen", "127.0.0.1:0",
                       "--admin-listen", "127.0.0.1:0"], env=env,
                      stderr=subprocess.PIPE, text=True)
cp_addr = wait_line(cp, "addr")["addr"]
penv = dict(env, PILLION_CONTROL_PLANE_ADDR=cp_addr, PILLION_OUTBOUND_LISTEN="127.0.0.1:0",
            PILLION_INBOUND_LISTEN="127.0.0.1:0", PILLION_ADMIN_LISTEN="127.0.0.1:0")
proxy = subprocess.Popen([proxy_bin], env=penv, stderr=subprocess.PIPE, text=True)
out = wait_line(proxy, "outbound_addr")["outbound_addr"]
host, port = out.rsplit(":", 1)
try:
    time.sleep(1)
    idle = rss_kib(proxy.pid)
    socks = []
    for i in range(n):
        s = socket.create_connection((host, int(port)))
        s.sendall(b"GET / HTTP/1.1\r\nHost: made-up-%d\r\n\r\n" % (i % 50))
        socks.append(s)
    for s in socks:
        s.recv(4096)
    time.sleep(1)
    loaded = rss_kib(proxy.pid)
    for s in socks:
        s.close()
    time.sleep(2)
    closed = rss_kib(proxy.pid)
    time.sleep(15)
    later = rss_kib(proxy.pid)
    print(f"proxy RSS: idle {idle/1024:.1f} MiB, {n} open connections {loaded/1024:.1f} MiB, "
          f"2 s after closing {closed/1024:.1f} MiB, 17 s after {later/1024:.1f} MiB")
finally:
    proxy.kill()
    cp.kill()
