"""Writes the fuzz targets' seed inputs (fuzz/seeds/) from a real HTTP/2 implementation,
python-hyper's h2: `python3 -m venv /tmp/h2 && /tmp/h2/bin/pip install h2 && /tmp/h2/bin/python
fuzz/make_seeds.py`. The seeds are committed; this records how they were made.

Every input starts with the harness's delivery byte (tests/harness/mod.rs): its low 4 bits the
write size, bit 4 whether the peer closes its end after the input.
"""
import os

import h2.config
import h2.connection
import h2.settings
import h2.events

HERE = os.path.dirname(os.path.abspath(__file__))
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def write(target, name, delivery, data):
    path = os.path.join(HERE, "seeds", target, name)
    with open(path, "wb") as f:
        f.write(bytes([delivery]) + data)


def client():
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    return c


def request(path, method="GET"):
    return [(":method", method), (":scheme", "http"), (":authority", "fuzz.test"), (":path", path),
            ("user-agent", "seed"), ("accept", "*/*")]


def server_seeds():
    # One GET, the client closing after it.
    c = client()
    c.send_headers(1, request("/"), end_stream=True)
    write("http2_server", "get", 0x1f, c.data_to_send()[len(PREFACE):])

    # Four requests, one of each kind the harness's handler answers, with a body in several
    # DATA frames (one padded), trailers, window updates, a PING, a reset and a GOAWAY.
    c = client()
    c.send_headers(1, request("/echo", "POST"))
    c.send_data(1, b"x" * 1000)
    c.send_data(1, b"y" * 100, pad_length=20, end_stream=True)
    c.send_headers(3, request("/big"), end_stream=True)
    c.increment_flow_control_window(1 << 20)
    c.increment_flow_control_window(1 << 20, stream_id=3)
    c.send_headers(5, request("/trailers", "PUT"))
    c.send_data(5, b"abc")
    c.send_headers(5, [("x-sum", "1")], end_stream=True)
    c.send_headers(7, request("/slow"), end_stream=True)
    c.ping(b"12345678")
    c.reset_stream(7)
    c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    c.close_connection()
    write("http2_server", "kinds", 0x03, c.data_to_send()[len(PREFACE):])

    # A header block too large for one frame: HEADERS and CONTINUATIONs.
    c = client()
    c.send_headers(1, request("/") + [("x-long-%d" % i, "v" * 200) for i in range(120)], end_stream=True)
    write("http2_server", "continuation", 0x0f, c.data_to_send()[len(PREFACE):])

    # Priorities, and a stream opened with HEADERS carrying its priority.
    c = client()
    c.send_headers(1, request("/"), end_stream=True, priority_weight=200, priority_depends_on=0)
    c.prioritize(3, weight=10, depends_on=1)
    c.send_headers(3, request("/p"), end_stream=True)
    write("http2_server", "priority", 0x05, c.data_to_send()[len(PREFACE):])


def client_seeds():
    # The harness's client sends GET (1), POST with 100 KiB (3), PUT with trailers (5) and a
    # GET it gives up on (7); a real server answers each from here.
    cfg = h2.config.H2Configuration(client_side=False)
    s = h2.connection.H2Connection(cfg)
    s.initiate_connection()
    s.data_to_send()  # its SETTINGS: the harness writes one of its own before the input
    c = client()
    c.send_headers(1, request("/"), end_stream=True)
    c.send_headers(3, request("/", "POST"))
    c.send_data(3, b"\x01" * 16000)
    c.send_headers(5, request("/", "PUT"))
    c.send_data(5, b"abc")
    c.send_headers(5, [("x-sum", "1")], end_stream=True)
    c.send_headers(7, request("/"), end_stream=True)
    s.receive_data(c.data_to_send())
    s.data_to_send()  # the SETTINGS ack: the server's input begins below
    s.increment_flow_control_window(1 << 20)
    s.increment_flow_control_window(1 << 20, stream_id=3)
    s.send_headers(1, [(":status", "200"), ("content-type", "text/plain")])
    s.send_data(1, b"hello", end_stream=True)
    s.send_headers(3, [(":status", "200")])
    s.send_data(3, b"ok")
    s.send_headers(3, [("grpc-status", "0")], end_stream=True)
    s.send_headers(5, [(":status", "100")])
    s.send_headers(5, [(":status", "204")], end_stream=True)
    s.reset_stream(7)
    s.ping(b"abcdefgh")
    s.close_connection(last_stream_id=7)
    write("http2_client", "answers", 0x04, s.data_to_send())

    # A server that refuses streams above 1 and goes away.
    s2 = h2.connection.H2Connection(cfg)
    s2.initiate_connection()
    s2.data_to_send()
    c = client()
    c.send_headers(1, request("/"), end_stream=True)
    s2.receive_data(c.data_to_send())
    s2.data_to_send()
    s2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1,
                        h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 20})
    s2.send_headers(1, [(":status", "503"), ("retry-after", "1")], end_stream=True)
    s2.close_connection(last_stream_id=1)
    write("http2_client", "refused", 0x1f, s2.data_to_send())


def hpack_seeds():
    import hpack
    e = hpack.Encoder()
    blocks = [e.encode(request("/a")), e.encode(request("/b") + [("cookie", "a=b"), ("x-y", "z")]),
              e.encode([(":status", "200"), ("content-length", "5")])]
    write("hpack", "blocks", 0, b"\xff\x00".join(blocks)[0:])
    e2 = hpack.Encoder()
    e2.header_table_size = 256
    write("hpack", "resize", 0, e2.encode(request("/resize") + [("x", "y" * 300)]))


for target in ("http2_server", "http2_client", "hpack"):
    os.makedirs(os.path.join(HERE, "seeds", target), exist_ok=True)
server_seeds()
client_seeds()
hpack_seeds()
