#!/usr/bin/env python3
"""What telemetry costs a proxy: CPU per request with tracing off and at 100 % sampling, and
the time and size of a /metrics scrape with a few thousand series.

    bash scripts/build-release.sh
    python3 benches/telemetry.py [N]          (N requests per run, default 50,000)

Everything runs on loopback on ports the OS picked: a control plane, the demo app, one proxy
per run, an in-process Zipkin collector (answers 202), and h2load (HTTP/1.1, 10 connections;
H2=1: h2c, 10 connections x 10 streams).
CPU is the proxy's user + system time from /proc, divided by the requests.
"""
import json, os, subprocess, sys, tempfile, time, urllib.request
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Collector, start_collector, wait_fields  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = os.path.join(ROOT, "target/release")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
ROUNDS = int(os.environ.get("ROUNDS", "3"))
CONNS = int(os.environ.get("CONNS", "10"))
# Requests per second per connection (h2load --rps): a fixed load below saturation, where CPU
# per request does not depend on how busy the proxy already is.
RPS = os.environ.get("RPS")
# H2=1: h2c clients (CONNS connections x 10 streams), as the side-by-side harness's one hop.
SHAPE = ["-m", "10"] if os.environ.get("H2") == "1" else ["--h1"]
# The proxy on core 0 (one worker thread, as a sidecar limited to one core runs), everything
# else (this script and its collector, the app, h2load) on core 1: fewer migrations, less noise.
PIN_PROXY = []
if len(os.sched_getaffinity(0)) >= 2 and os.environ.get("PIN", "1") == "1":
    cores = sorted(os.sched_getaffinity(0))
    PIN_PROXY = ["taskset", "-c", str(cores[0])]
    os.sched_setaffinity(0, cores[1:])
env = dict(os.environ, PILLION_LOG_FORMAT="json", PILLION_LOG="warn,pillion_proxy=info,pillion_control_plane=info")
procs = []


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / 100.0


zipkin = start_collector()

conf = tempfile.mkdtemp(prefix="pillion-bench-")
app = subprocess.Popen([f"{T}/pillion", "demo-app", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True, env=env)
procs.append(app)
app_addr = app.stdout.readline().strip().rsplit(" ", 1)[1]
with open(os.path.join(ROOT, "examples/demo/services.yaml")) as f:
    services = f.read()
with open(f"{conf}/mesh.yaml", "w") as f:
    f.write(services + f"""---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-v1-bench, labels: {{kubernetes.io/service-name: web-v1}}}}
addressType: IPv4
ports: [{{name: http, port: {app_addr.rsplit(':', 1)[1]}}}]
endpoints: [{{addresses: ["127.0.0.1"]}}]
""")
cp = subprocess.Popen([f"{T}/pillion-control-plane", "--config-dir", conf, "--listen", "127.0.0.1:0",
                       "--admin-listen", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True, env=env)
procs.append(cp)
cp_addr = wait_fields(cp, "addr")["addr"]


def proxy(extra):
    penv = dict(env, PILLION_CONTROL_PLANE_ADDR=cp_addr, PILLION_OUTBOUND_LISTEN="127.0.0.1:0",
                PILLION_INBOUND_LISTEN="127.0.0.1:0", PILLION_ADMIN_LISTEN="127.0.0.1:0", **extra)
    p = subprocess.Popen([*PIN_PROXY, f"{T}/pillion-proxy"], stderr=subprocess.PIPE, text=True, env=penv)
    procs.append(p)
    return p, wait_fields(p, "outbound_addr")


def run(label, extra):
    p, addrs = proxy(extra)
    out = addrs["outbound_addr"]
    subprocess.run(["h2load", *SHAPE, "-n", "200", "-c", "2", "-H", ":authority: web-v1", f"http://{out}/"],
                   capture_output=True, check=True)
    before = cpu_seconds(p.pid)
    rate = ["--rps", RPS] if RPS else []
    r = subprocess.run(["h2load", *SHAPE, "-n", str(N), "-c", str(CONNS), *rate, "-H", ":authority: web-v1", f"http://{out}/"],
                       capture_output=True, text=True, check=True).stdout
    used = cpu_seconds(p.pid) - before
    rps = [l for l in r.splitlines() if l.startswith("finished in")][0].split(",")[1].strip()
    counts = [l for l in r.splitlines() if l.startswith("requests:")][0].split(",")
    ok = [c.strip() for c in counts if "succeeded" in c][0]
    print(f"{label:<28} {used / N * 1e6:6.1f} µs CPU/request  {rps}  ({ok})")
    p.kill()
    return used / N


# Interleaved rounds; medians (two shared cores make single runs noisy).
zipkin_env = {"PILLION_ZIPKIN_URL": f"http://127.0.0.1:{zipkin.server_port}/api/v2/spans",
              "PILLION_TRACE_SAMPLE_RATE": "1"}
# Where the cost is: context propagation only (rate 0), spans built and encoded but the
# collector unreachable (its CPU out of the picture), and the whole path to a collector.
variants = {
    "tracing off": {},
    "propagation only (rate 0)": dict(zipkin_env, PILLION_TRACE_SAMPLE_RATE="0"),
    "100 %, collector down": dict(zipkin_env, PILLION_ZIPKIN_URL="http://127.0.0.1:9/api/v2/spans"),
    "100 %, to the collector": zipkin_env,
}
if os.environ.get("VARIANTS"):
    variants = {k: v for k, v in variants.items() if k == "tracing off" or any(w in k for w in os.environ["VARIANTS"].split(","))}
results = {k: [] for k in variants}
for _ in range(ROUNDS):
    for label, extra in variants.items():
        results[label].append(run(label, extra))
time.sleep(2)
off = sorted(results["tracing off"])[ROUNDS // 2]
print(f"median of {ROUNDS} interleaved rounds (collector received {Collector.spans} spans):")
for label, runs in results.items():
    m = sorted(runs)[ROUNDS // 2]
    print(f"  {label:<28} {m * 1e6:6.1f} µs CPU/request  {100 * (m - off) / off:+6.1f} %")

# A scrape with a few thousand series: 1,000 inbound authorities, a few series each.
p, addrs = proxy({"PILLION_INBOUND_FORWARD": app_addr})
inbound = addrs["inbound_addr"]
for i in range(1000):
    req = urllib.request.Request(f"http://{inbound}/", headers={"Host": f"svc-{i}.bench"})
    urllib.request.urlopen(req).read()
url = f"http://{addrs['admin_addr']}/metrics"
text = urllib.request.urlopen(url).read()
series = sum(1 for l in text.splitlines() if l and not l.startswith(b"#"))
times = []
for _ in range(20):
    t = time.perf_counter()
    urllib.request.urlopen(url).read()
    times.append(time.perf_counter() - t)
times.sort()
print(f"/metrics with {series} series, {len(text) / 1024:.0f} KiB: median scrape {times[10] * 1000:.1f} ms")
for p in procs:
    p.kill()
