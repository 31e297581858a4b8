"""A local HTTP server for the URL-fetching tests and benchmarks: real images, and every way a real image host
misbehaves (error statuses, redirects, endless or dripping bodies, stalls, truncated and cut-off files, flaky
answers), on the loopback so nothing leaves the machine. Standard library only, so the tests need nothing new.

HTTP/1.1 with keep-alive (a fetcher's connection reuse is exercised), one thread per connection (a stalled or
dripping response ties up only its own connection; hundreds of concurrent connections are fine).

usage: server.py [--host H]... [--port P] [--root DIR] [--photos DIR] [--latency-ms N] [--tls-port P --tls-cert F
                 --tls-key F] [--pidfile F] [--verbose]
Prints one line, "listening on http://H:P ...", once every host accepts connections.

Routes (the query string is ignored unless stated):
  /img/<name>                   the file <name> from --root (Content-Type from the extension, Content-Length)
  /delay/<ms>/<name>            /img/<name> after <ms> more milliseconds
  /status/<code>                that status, small text/html body
  /flaky/<key>/<n>/<name>       503 for the first n requests for key, then /img/<name>
  /count/<key>                  how many /flaky requests key has seen (text)
  /reset                        forgets the /flaky counters
  /stats                        JSON: requests per route and connections currently held by /stall, /drip, /huge*
  /redirect?to=<url>            302 to <url>
  /redirect-chain/<n>/<name>    n successive 302 hops, then /img/<name>
  /huge                         200 image/jpeg, no Content-Length (chunked; ?close for close-delimited), JPEG magic
                                then bytes until the client goes away
  /huge-declared                Content-Length 1000000000, JPEG magic, bytes until the client goes away
  /drip                         Content-Length 100000, JPEG magic, then one byte per second
  /stall                        reads the request and never answers (holds the socket until the client closes)
  /html                         200 text/html error page (what a CDN answers for a missing object)
  /truncated/<name>             200, the first half of the file, Content-Length of that half (a corrupt stored file)
  /cut/<name>                   200, the whole file's Content-Length, connection closed after half the body
  /photos/<i>.jpg               the benchmark catalogue: photo i % P of --photos (sorted *.jpg/jpeg/png/webp);
                                every i with i % 30 == 7 fails by (i // 30) % 3: 0 -> 404, 1 -> stall, 2 -> truncated
  /photos/manifest.json         {"count": P, ...}: the catalogue and its failure rule
--latency-ms is added before every response except the control routes (/count, /reset, /stats, manifest).
"""
import argparse
import errno
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

JPEG_MAGIC = b"\xff\xd8\xff\xe0"
HUGE_DECLARED = 1_000_000_000
TYPES = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".gif": "image/gif",
    ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff", ".html": "text/html; charset=utf-8",
    ".json": "application/json", ".txt": "text/plain; charset=utf-8",
}
HTML_ERROR = (b"<!DOCTYPE html><html><head><title>Error</title></head><body><h1>Something went wrong</h1>"
              b"<p>The page you requested could not be displayed. Please try again later.</p></body></html>\n")
QUIET = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError, socket.timeout)
FAIL_EVERY, FAIL_AT, FAIL_KINDS = 30, 7, ("404", "stall", "truncated")

args = None
photos = []
lock = threading.Lock()
flaky = {}  # key -> requests seen
stats = {"requests": {}, "open": {}}


def count(table, name, delta=1):
    with lock:
        stats[table][name] = stats[table].get(name, 0) + delta


@lru_cache(maxsize=1024)
def read_file(path):
    """The catalogue is read once: the benchmark measures the fetcher, not this server's disk."""
    return Path(path).read_bytes()


def content_type(name):
    return TYPES.get(os.path.splitext(name)[1].lower(), "application/octet-stream")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pg_clip-test-http/1"
    # Headers and body go out in separate writes: with Nagle's algorithm a reused connection would wait for the
    # client's delayed ACK (40 ms) on every response.
    disable_nagle_algorithm = True

    # Client disconnects are part of the job (every stall, drip and endless body ends with one): stay quiet.
    def handle(self):
        try:
            super().handle()
        except QUIET:
            pass
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF):
                raise

    def log_message(self, fmt, *a):
        if args.verbose:
            sys.stderr.write("%s %s\n" % (self.address_string(), fmt % a))

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        route = parts[0] if parts else ""
        count("requests", route)
        if route not in ("count", "reset", "stats") and url.path != "/photos/manifest.json" and args.latency_ms:
            time.sleep(args.latency_ms / 1000)
        handler = ROUTES.get(route)
        if handler is None:
            return self.status(404)
        try:
            handler(self, parts[1:], parse_qs(url.query, keep_blank_values=True))
        except (ValueError, IndexError):
            self.status(400)

    # --- helpers ---------------------------------------------------------------------------------------------

    def body(self, code, data, ctype, length=None, close=False):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
            self.wfile.flush()

    def status(self, code):
        text = self.responses.get(code, ("",))[0]
        if code in (204, 304) or code < 200:
            self.send_response(code)
            self.end_headers()
            return
        self.body(code, f"<html><body><h1>{code} {text}</h1></body></html>\n".encode(), TYPES[".html"])

    def file(self, name):
        """The file <name> under --root, or None (after answering 404) if there is none."""
        if not args.root or "/" in name or name.startswith("."):
            self.status(404)
            return None
        path = os.path.join(args.root, name)
        try:
            return read_file(path)
        except OSError:
            self.status(404)
            return None

    def redirect(self, location):
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def origin(self):
        host = self.headers.get("Host") or "%s:%d" % self.server.server_address[:2]
        return "http://" + host

    def hold(self, name):
        """Keep the connection until the client closes it (reading and dropping anything it sends)."""
        self.close_connection = True
        count("open", name)
        try:
            while True:
                ready, _, _ = select.select([self.connection], [], [], 1.0)
                if ready and not self.connection.recv(65536):
                    return
        except QUIET + (OSError,):
            return
        finally:
            count("open", name, -1)

    def stream(self, name, first, chunked=False, limit=None):
        """Write `first`, then filler until the client goes away (or `limit` bytes are out)."""
        self.close_connection = True
        count("open", name)
        filler = bytes(range(256)) * 256
        try:
            data, sent = first + filler, 0
            while limit is None or sent < limit:
                if limit is not None:
                    data = data[: limit - sent]
                sent += len(data)
                if chunked:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                else:
                    self.wfile.write(data)
                self.wfile.flush()
                data = filler
        except QUIET + (OSError,):
            return
        finally:
            count("open", name, -1)

    # --- routes ----------------------------------------------------------------------------------------------

    def r_img(self, parts, query):
        data = self.file("/".join(parts))
        if data is not None:
            self.body(200, data, content_type(parts[-1]))

    def r_delay(self, parts, query):
        time.sleep(int(parts[0]) / 1000)
        self.r_img(parts[1:], query)

    def r_status(self, parts, query):
        code = int(parts[0])
        if not 100 <= code <= 599:
            raise ValueError(code)
        self.status(code)

    def r_flaky(self, parts, query):
        key, n, name = parts[0], int(parts[1]), "/".join(parts[2:])
        with lock:
            flaky[key] = seen = flaky.get(key, 0) + 1
        if seen <= n:
            self.status(503)
        else:
            self.r_img([name], query)

    def r_count(self, parts, query):
        with lock:
            n = flaky.get(parts[0], 0)
        self.body(200, b"%d\n" % n, TYPES[".txt"])

    def r_reset(self, parts, query):
        with lock:
            flaky.clear()
        self.body(200, b"ok\n", TYPES[".txt"])

    def r_stats(self, parts, query):
        with lock:
            data = json.dumps(stats, sort_keys=True).encode()
        self.body(200, data, TYPES[".json"])

    def r_redirect(self, parts, query):
        to = query.get("to", [""])[0]
        if not to:
            raise ValueError("no to=")
        self.redirect(to)

    def r_redirect_chain(self, parts, query):
        n, name = int(parts[0]), "/".join(parts[1:])
        if n <= 0:
            self.redirect(f"{self.origin()}/img/{quote(name)}")
        else:
            self.redirect(f"{self.origin()}/redirect-chain/{n - 1}/{quote(name)}")

    def r_huge(self, parts, query):
        close = "close" in query
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        if close:
            self.send_header("Connection", "close")
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.command != "HEAD":
            self.stream("huge", JPEG_MAGIC, chunked=not close)
        self.close_connection = True

    def r_huge_declared(self, parts, query):
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(HUGE_DECLARED))
        self.end_headers()
        if self.command != "HEAD":
            self.stream("huge-declared", JPEG_MAGIC, limit=HUGE_DECLARED)
        self.close_connection = True

    def r_drip(self, parts, query):
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.close_connection = True
        if self.command == "HEAD":
            return
        count("open", "drip")
        try:
            self.wfile.write(JPEG_MAGIC)
            self.wfile.flush()
            for _ in range(100000 - len(JPEG_MAGIC)):
                # Wake every second to send a byte, but notice at once when the client has closed.
                ready, _, _ = select.select([self.connection], [], [], 1.0)
                if ready and not self.connection.recv(65536):
                    return
                self.wfile.write(b"\0")
                self.wfile.flush()
        except QUIET + (OSError,):
            return
        finally:
            count("open", "drip", -1)

    def r_stall(self, parts, query):
        self.hold("stall")

    def r_html(self, parts, query):
        self.body(200, HTML_ERROR, TYPES[".html"])

    def r_truncated(self, parts, query):
        data = self.file("/".join(parts))
        if data is not None:
            self.body(200, data[: len(data) // 2], content_type(parts[-1]))

    def r_cut(self, parts, query):
        data = self.file("/".join(parts))
        if data is None:
            return
        self.send_response(200)
        self.send_header("Content-Type", content_type(parts[-1]))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.close_connection = True
        if self.command != "HEAD":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()

    def r_photos(self, parts, query):
        name = "/".join(parts)
        if name == "manifest.json":
            manifest = {"count": len(photos), "photos": [os.path.basename(p) for p in photos],
                        "fail_when": f"i % {FAIL_EVERY} == {FAIL_AT}",
                        "fail_kind": f"({', '.join(FAIL_KINDS)})[(i // {FAIL_EVERY}) % {len(FAIL_KINDS)}]"}
            return self.body(200, json.dumps(manifest).encode(), TYPES[".json"])
        if not photos:
            return self.status(404)
        i = int(os.path.splitext(name)[0])
        path = photos[i % len(photos)]
        if i % FAIL_EVERY == FAIL_AT:
            kind = FAIL_KINDS[(i // FAIL_EVERY) % len(FAIL_KINDS)]
            if kind == "404":
                return self.status(404)
            if kind == "stall":
                return self.hold("stall")
            data = read_file(path)
            return self.body(200, data[: len(data) // 2], content_type(path))
        self.body(200, read_file(path), content_type(path))


ROUTES = {
    "img": Handler.r_img, "delay": Handler.r_delay, "status": Handler.r_status, "flaky": Handler.r_flaky,
    "count": Handler.r_count, "reset": Handler.r_reset, "stats": Handler.r_stats, "redirect": Handler.r_redirect,
    "redirect-chain": Handler.r_redirect_chain, "huge": Handler.r_huge, "huge-declared": Handler.r_huge_declared,
    "drip": Handler.r_drip, "stall": Handler.r_stall, "html": Handler.r_html, "truncated": Handler.r_truncated,
    "cut": Handler.r_cut, "photos": Handler.r_photos,
}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # the listen backlog: a burst of concurrent connects must not be refused

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], QUIET):
            super().handle_error(request, client_address)


def main():
    global args, photos
    ap = argparse.ArgumentParser(description="local HTTP server for pg_clip's URL tests and benchmarks")
    ap.add_argument("--host", action="append", help="address to listen on (repeatable; default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port (the same one on every host)")
    ap.add_argument("--root", help="directory served under /img/")
    ap.add_argument("--photos", help="directory of the /photos/ benchmark catalogue")
    ap.add_argument("--latency-ms", type=float, default=0, help="added before every response")
    ap.add_argument("--tls-port", type=int, help="also serve HTTPS on this port (first --host only)")
    ap.add_argument("--tls-cert", help="certificate (PEM) for --tls-port; a self-signed one is not trusted by "
                    "pg_clip, which is what the tests check")
    ap.add_argument("--tls-key", help="its private key (PEM)")
    ap.add_argument("--pidfile")
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = ap.parse_args()
    if args.photos:
        photos = sorted(str(p) for p in Path(args.photos).iterdir()
                        if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp") and p.is_file())
        if not photos:
            sys.exit(f"no photos in {args.photos}")
    hosts = args.host or ["127.0.0.1"]
    servers, port = [], args.port
    for host in hosts:
        server = Server((host, port), Handler)
        port = server.server_address[1]
        servers.append(server)
    if args.tls_port:
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        tls = Server((hosts[0], args.tls_port), Handler)
        tls.socket = context.wrap_socket(tls.socket, server_side=True)
        servers.append(tls)
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    if args.pidfile:
        Path(args.pidfile).write_text(f"{os.getpid()}\n")
    tls_note = f" https://{hosts[0]}:{args.tls_port}" if args.tls_port else ""
    print("listening on " + " ".join(f"http://{h}:{port}" for h in hosts) + tls_note, flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        if args.pidfile:
            try:
                os.unlink(args.pidfile)
            except OSError:
                pass


if __name__ == "__main__":
    main()
