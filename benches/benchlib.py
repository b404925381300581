"""Helpers the benchmark scripts share.

    python3 benches/benchlib.py collector    # a Zipkin-like collector alone: prints its address
"""
import http.server, json, sys, threading


def wait_fields(proc, field):
    """The fields of the first JSON log line (on stderr) that has `field`; the rest of the log
    is drained in the background so that the process never blocks on a full pipe."""
    while True:
        line = proc.stderr.readline()
        if not line:
            sys.exit(f"{proc.args[0]} ended early")
        try:
            f = json.loads(line).get("fields", {})
        except ValueError:
            continue
        if field in f:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return f


class Collector(http.server.BaseHTTPRequestHandler):
    """Takes Zipkin v2 span batches (`POST /api/v2/spans`) and answers 202, as Zipkin does."""
    protocol_version = "HTTP/1.1"  # keep-alive, as real collectors do
    spans = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        # Counted, not parsed: the collector shares the machine with what is measured.
        Collector.spans += body.count(b'"traceId"')
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


def start_collector():
    """A collector on a port the OS picked, served from a thread: returns its server."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__" and sys.argv[1:] == ["collector"]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    print(f"127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
