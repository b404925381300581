"""A real third-party gRPC peer (Python grpcio) for the end-to-end tests.

    python echo.py server VERSION        serves pillion.demo.v1.Echo on 127.0.0.1:<free port>,
                                         prints "listening <port>" once it is up
    python echo.py client TARGET AUTHORITY
                                         calls through TARGET with :authority AUTHORITY and prints
                                         one JSON object with what came back
    python echo.py many TARGET AUTHORITY N
                                         makes N unary calls, 50 at a time, and prints one JSON
                                         object counting them by status

ECHO_MAX_AGE_MS, for the server: close each connection after so long (grpcio's
grpc.max_connection_age_ms: GOAWAY, as Go and Java servers configured for load balancing do).

Stubs are generated at start from proto/pillion/demo/v1/demo.proto with grpc_tools.
"""

import json
import os
import shutil
import sys
import tempfile
from concurrent import futures

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "..", "proto", "proto")


def load_stubs():
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="pillion-stubs-")
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        os.path.join(PROTO_ROOT, "pillion", "demo", "v1", "demo.proto"),
    ])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out)
    try:
        from pillion.demo.v1 import demo_pb2, demo_pb2_grpc  # noqa: E402
    finally:
        # The modules are loaded: their source files are no longer needed.
        sys.path.remove(out)
        shutil.rmtree(out, ignore_errors=True)

    return demo_pb2, demo_pb2_grpc


def serve(version):
    import grpc

    pb, pb_grpc = load_stubs()

    class Echo(pb_grpc.EchoServicer):
        def Hello(self, request, context):
            if request.fail_with:
                context.abort(grpc.StatusCode(_code(request.fail_with)), f"python failed as asked by {request.name}")
            context.set_trailing_metadata((("x-served-by", f"grpcio-{version}"),))
            return pb.HelloReply(message=f"hello {request.name} from {version}", version=version, payload=request.payload)

        def Chat(self, request_iterator, context):
            for m in request_iterator:
                yield pb.HelloReply(message=f"hello {m.name} from {version}", version=version, payload=m.payload)

    opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    if os.environ.get("ECHO_MAX_AGE_MS"):
        age = int(os.environ["ECHO_MAX_AGE_MS"])
        opts += [("grpc.max_connection_age_ms", age), ("grpc.max_connection_age_grace_ms", 10000)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=opts)
    pb_grpc.add_EchoServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


def _code(n):
    for c in __import__("grpc").StatusCode:
        if c.value[0] == n:
            return c.value
    return (2, "unknown")


def client(target, authority):
    import grpc

    pb, pb_grpc = load_stubs()
    opts = [
        ("grpc.default_authority", authority),
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    result = {"versions": [], "errors": []}
    with grpc.insecure_channel(target, options=opts) as channel:
        stub = pb_grpc.EchoStub(channel)
        for i in range(20):
            reply, call = stub.Hello.with_call(pb.HelloRequest(name=f"py{i}"), timeout=30)
            result["versions"].append(reply.version)
            result["trailer"] = dict(call.trailing_metadata()).get("x-served-by", "")
        try:
            stub.Hello(pb.HelloRequest(name="boom", fail_with=5), timeout=30)
            result["errors"].append("no error for fail_with=5")
        except grpc.RpcError as e:
            result["status"] = e.code().name
            result["message"] = e.details()
        big = stub.Hello(pb.HelloRequest(name="big", payload=b"x" * (4 << 20)), timeout=60)
        result["big"] = len(big.payload)
        replies = list(stub.Chat(iter([pb.HelloRequest(name=f"s{i}") for i in range(10)]), timeout=30))
        result["stream"] = [r.message.split(" from ")[0] for r in replies]
        result["stream_versions"] = sorted({r.version for r in replies})
    print(json.dumps(result), flush=True)


def many(target, authority, n):
    import grpc

    pb, pb_grpc = load_stubs()
    counts = {}
    with grpc.insecure_channel(target, options=[("grpc.default_authority", authority)]) as channel:
        stub = pb_grpc.EchoStub(channel)
        for start in range(0, n, 50):
            calls = [
                stub.Hello.future(pb.HelloRequest(name=f"m{i}", payload=b"p" * 100), timeout=30)
                for i in range(start, min(n, start + 50))
            ]
            for call in calls:
                try:
                    call.result()
                    code = "OK"
                except grpc.RpcError as e:
                    code = f"{e.code().name}: {e.details()}"
                counts[code] = counts.get(code, 0) + 1
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(sys.argv[2])
    elif sys.argv[1] == "many":
        many(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        client(sys.argv[2], sys.argv[3])
