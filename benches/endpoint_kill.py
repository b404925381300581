#!/usr/bin/env python3
"""Success rate and latency through an endpoint kill, with and without a RetryPolicy.

    python3 benches/endpoint_kill.py [--bin-dir target/release] [--seconds 8] [--rate 1000]

Starts three demo-app backends of one Service `web`, a control plane and a client proxy, and
sends `--rate` HTTP/1.1 GETs/s of `--path` (h2load, open loop, 20 connections) for `--seconds`;
the default path answers after 20 ms, so that requests are in flight when the kill comes. A third
of the way in one backend is killed (SIGKILL: its connections reset, its port refuses); it is
started again two thirds of the way in. Run twice: without a policy, and with a RetryPolicy
(defaults: reset, gateway-error, unavailable; 2 retries; budget 20 %). Prints, per run, the
requests answered 2xx, the failures, latency percentiles from h2load's log, and the proxy's
retry and ejection counters. Everything listens on loopback on ports the OS picked; every
process it started is stopped at the end.
"""
import argparse, os, signal, socket, subprocess, sys, tempfile, time, urllib.request
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import wait_fields  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target/release"))
ap.add_argument("--seconds", type=float, default=8)
ap.add_argument("--rate", type=int, default=1000)
ap.add_argument("--path", default="/slow?ms=20",
                help="what each request asks for (the default keeps ~20 requests in flight)")
args = ap.parse_args()
for tool in ["h2load"]:
    if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
        sys.exit(f"{tool} is missing: apt-get install nghttp2-client")
binary = lambda name: os.path.join(args.bin_dir, name)
for name in ["pillion", "pillion-proxy", "pillion-control-plane"]:
    if not os.path.exists(binary(name)):
        sys.exit(f"{binary(name)} is missing: bash scripts/build-release.sh")

procs = []


def start(cmd, env=None):
    p = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    procs.append(p)
    return p


def wait_field(proc, field):
    return wait_fields(proc, field)[field]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_app(port):
    p = start([binary("pillion"), "demo-app", "--listen", f"127.0.0.1:{port}"],
              env=dict(os.environ, PILLION_LOG_FORMAT="json"))
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p
        except OSError:
            time.sleep(0.05)
    sys.exit(f"demo-app on {port} did not start")


def metric(admin, prefix):
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(prefix))


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def run(label, retries, ports, apps):
    conf = tempfile.mkdtemp(prefix="pillion-kill-")
    yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{name: http, port: 80}]\n"
    for i, port in enumerate(ports):
        yaml += (f"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-{i}\n"
                 f"  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\n"
                 f"ports: [{{name: http, port: {port}}}]\nendpoints:\n- addresses: [\"127.0.0.1\"]\n")
    with open(os.path.join(conf, "mesh.yaml"), "w") as f:
        f.write(yaml)
    if retries:
        with open(os.path.join(conf, "retry.yaml"), "w") as f:
            f.write("apiVersion: pillion.dev/v1alpha1\nkind: RetryPolicy\nmetadata: {name: web}\n"
                    "spec:\n  targetRef: {kind: Service, name: web}\n")
    env = dict(os.environ, PILLION_LOG_FORMAT="json", PILLION_LOG="warn,pillion_control_plane=info,pillion_proxy=info")
    cp = start([binary("pillion-control-plane"), "--config-dir", conf, "--listen", "127.0.0.1:0",
                "--admin-listen", "127.0.0.1:0"], env)
    cp_addr = wait_field(cp, "addr")
    proxy = start([binary("pillion-proxy")], dict(env, PILLION_CONTROL_PLANE_ADDR=cp_addr,
                                                 PILLION_OUTBOUND_LISTEN="127.0.0.1:0",
                                                 PILLION_INBOUND_LISTEN="127.0.0.1:0",
                                                 PILLION_ADMIN_LISTEN="127.0.0.1:0"))
    fields = wait_fields(proxy, "outbound_addr")
    out, admin = fields["outbound_addr"], fields["admin_addr"]
    # Ready: a request answered 200.
    deadline = time.time() + 30
    while True:
        try:
            req = urllib.request.Request(f"http://{out}/", headers={"Host": "web"})
            if urllib.request.urlopen(req, timeout=2).status == 200:
                break
        except OSError:
            pass
        if time.time() > deadline:
            sys.exit("the proxy never answered 200")
        time.sleep(0.1)
    log = os.path.join(conf, "h2load.log")
    conns = 20
    h2load = subprocess.Popen(["h2load", "--h1", "-c", str(conns), "--rps", str(args.rate // conns),
                               "-D", str(int(args.seconds)), "--log-file", log,
                               "-H", ":authority: web", f"http://{out}{args.path}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(args.seconds / 3)
    victim = apps[1]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    time.sleep(args.seconds / 3)
    apps[1] = demo_app(ports[1])
    output = h2load.communicate()[0]
    statuses, latencies = [], []
    with open(log) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                statuses.append(int(parts[1]))
                latencies.append(int(parts[2]) / 1000.0)
    total = next((int(l.split()[1]) for l in output.splitlines() if l.startswith("requests:")), len(statuses))
    ok = sum(1 for s in statuses if 200 <= s < 300)
    result = {
        "run": label,
        "requests": total,
        "succeeded": ok,
        "success_rate": ok / total if total else 0,
        "non_2xx": sum(1 for s in statuses if not 200 <= s < 300),
        "not_answered": total - len(statuses),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "p999_ms": percentile(latencies, 99.9),
        "max_ms": max(latencies) if latencies else float("nan"),
        "retries": metric(admin, "pillion_retries_total"),
        "ejections": metric(admin, "pillion_outlier_ejections_total"),
    }
    proxy.kill()
    cp.kill()
    return result


try:
    ports = [free_port() for _ in range(3)]
    apps = [demo_app(p) for p in ports]
    results = [run("no retry policy", False, ports, apps), run("RetryPolicy (defaults)", True, ports, apps)]
    print(f"\n{args.rate} req/s of GET {args.path} for {args.seconds:.0f} s over 3 endpoints; one killed at "
          f"{args.seconds / 3:.1f} s, back at {2 * args.seconds / 3:.1f} s\n")
    print("| run | requests | 2xx | success | failed | p50 ms | p99 ms | p99.9 ms | max ms | retries | ejections |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['run']} | {r['requests']} | {r['succeeded']} | {100 * r['success_rate']:.3f} % | "
              f"{r['non_2xx'] + r['not_answered']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['p999_ms']:.2f} | {r['max_ms']:.1f} | {r['retries']:.0f} | {r['ejections']:.0f} |")
finally:
    for p in procs:
        if p.poll() is None:
            p.kill()
