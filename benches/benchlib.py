"""Helpers the benchmark scripts share."""
import json, sys, threading


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
