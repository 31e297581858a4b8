"""The catalogue's search service and its 'By photo' page, as any application would write them with a Postgres
driver: psycopg 3 with pgvector's adapter and psycopg's connection pool. The database does all the embedding
(pg_clip); the application server loads no model at all. The page is plain HTML, CSS and JavaScript in
examples/static/: no build step, nothing fetched from a CDN, so it works offline.

usage: python examples/search_service.py --dsn "host=... dbname=... user=..." [--host 127.0.0.1] [--port 8080]
           [--table image_embeddings] [--id-column image_id] [--product-column product_id]
           [--url-column image_url] [--vector-column image_embedding] [--limit 50] [--page-size 24]
           [--max-upload-mb 20] [--photo-max-mb 20] [--photo-timeout 10] [--statement-timeout 30s] [--pool-size 4]
           [--text-model auto|clip|multilingual] [--pidfile FILE]

  open http://127.0.0.1:8080/                                 the 'By photo' page
  curl --data-binary @photo.jpg http://127.0.0.1:8080/api/search-by-image
  curl 'http://127.0.0.1:8080/api/search-by-text?q=red+backpack'
  curl -G http://127.0.0.1:8080/api/search-by-text --data-urlencode 'q=красный рюкзак'
  curl 'http://127.0.0.1:8080/api/more-like-this?image_id=7'  by that row's stored vector: no inference
  -> {"results": [{"image_id": 7, "product_id": 1001, "distance": 0.1234}, ...], "offset": 0, "more": true,
      "ms": 84.2}
  Every search takes ?offset=N&limit=N (limit <= 100, offset + limit <= 1000). "ms" is the time of the search's
  queries, measured here around execute + fetch (connection setup excluded; on a local socket the network adds
  well under a millisecond), so for a photo it includes the inference inside the database.
  GET /photo/<image_id>  that row's image_url, fetched by this application (never a URL the client names)
  GET /api/info          the model and text encoder in force (clip_model_info()) and the page's limits
  Words go to clip_embed_text as they are. --text-model picks the text encoder of every pooled connection
  (pg_clip.text_model, set per session): auto (the default) takes the multilingual one, which reads Russian and
  50+ other languages as well as English, when the model directory has it, and CLIP's own (English) otherwise.
  Errors: {"error": "<a sentence for a person>", "sqlstate": "22P03"}; the database's own message goes to stderr.
"""
import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg_pool import ConnectionPool

STATIC = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".js": "text/javascript; charset=utf-8"}
# The page runs only its own files: no inline script, nothing from another origin; uploads are previewed from
# blob: URLs.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
MAX_LIMIT = 100
# How deep paging goes: an HNSW index scan returns at most hnsw.ef_search rows (default 40, at most 1000), so
# deeper pages raise ef_search to offset + limit + 1 (see search()).
MAX_DEPTH = 1000
# What a proxied photo may be: the raster formats browsers display, told by their first bytes, never by the
# upstream's Content-Type (an SVG or HTML page served from this origin could run script in it).
PHOTO_MAGIC = [(b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF87a", "image/gif"),
               (b"GIF89a", "image/gif"), (b"BM", "image/bmp")]


def photo_type(head: bytes):
    for magic, kind in PHOTO_MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:12] in (b"ftypavif", b"ftypavis"):
        return "image/avif"
    return None


def sentence(state: str, kind: str, max_mb: float) -> str:
    """What the page says for a SQLSTATE: a sentence a shopper understands, never the server's message."""
    image = kind == "image"
    if state == "22023":
        return "The file is empty. Choose a photo." if image else "Type a few words to search for."
    if state == "22P03":
        return "This file is not an image we can read, or it is damaged. Try a JPEG, PNG or WebP photo."
    if state == "0A000":
        return ("This image format is not supported (AVIF, HEIC, JPEG XL and SVG are not). "
                "Save the photo as JPEG or PNG and try again.")
    if state == "54000":
        if image:
            return (f"The photo is too large (over {max_mb:g} MB, or too many pixels). "
                    "Try a smaller photo or a screenshot of it.")
        return "The text is too long. Try fewer words."
    if state in ("58P01", "F0000"):
        return ("Search is not available right now: the database cannot load its model files. "
                "Please tell the site's administrator.")
    if state == "58000":
        return "The search failed inside the database. Try again; if it happens again, tell the site's administrator."
    if state == "57014":
        return "The search took too long and was stopped. Try again in a moment."
    if state.startswith(("08", "57P")) or state in ("", "53300", "3D000", "28000", "28P01"):
        return "The catalogue database cannot be reached right now. Try again in a minute."
    if state.startswith("53"):
        return "The catalogue database is overloaded right now. Try again in a minute."
    if state in ("42P01", "42703", "42883", "42704"):
        return ("Search is not set up on this server (the catalogue table, a column or pg_clip is missing). "
                "Please tell the site's administrator.")
    return "The search failed on the server. Try again; if it happens again, tell the site's administrator."


def http_status(state: str) -> int:
    if state.startswith(("22", "54", "0A")):
        return 400  # the upload or the words: the client's to change
    if state.startswith(("08", "57P", "53", "58", "F0", "28", "3D")) or state == "":
        return 503  # the database or its model: ours, and probably temporary
    return 500


class Catalogue:
    """The table and its columns (names from the command line, quoted as identifiers), the queries on it, and a
    small pool of connections: a new backend would load the model again (~0.3 s with shared weights, before the
    first inference), and pg_clip's per-backend embedding cache only helps a connection that lives on."""

    def __init__(self, args):
        self.names = {k: sql.Identifier(getattr(args, k)) for k in
                      ("table", "id_column", "product_column", "url_column", "vector_column")}
        statement_timeout = args.statement_timeout
        text_model = args.text_model

        def configure(conn):
            register_vector(conn)
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (statement_timeout,))
            choose_text_model(conn, text_model)

        # check: a connection the server dropped (a restart) is replaced before use, not reported as an error.
        # timeout: how long a request waits for a connection; with the database down, that is how long the
        # page waits before it says so.
        self.pool = ConnectionPool(args.dsn, min_size=1, max_size=args.pool_size, open=True, timeout=5,
                                   kwargs={"autocommit": True, "connect_timeout": 5}, configure=configure,
                                   check=ConnectionPool.check_connection, name="catalogue")

    def connection(self):
        return self.pool.connection()

    def search(self, conn, embed, argument, offset: int, limit: int):
        """One query: the design's ORDER BY, the query vector computed once (pg_clip inside the database for a
        photo or words; a parameter for a stored vector). Returns (rows, more, seconds)."""
        # ORDER BY the output column: one expression, so the index scan orders by it and returns it.
        query = sql.SQL(
            "SELECT {id}, {product}, {vector} <=> {embed} AS distance FROM {table} WHERE {vector} IS NOT NULL "
            "ORDER BY 3 LIMIT %s OFFSET %s"
        ).format(id=self.names["id_column"], product=self.names["product_column"],
                 vector=self.names["vector_column"], table=self.names["table"], embed=embed)
        with conn.transaction(), conn.cursor() as cur:
            if offset + limit + 1 > 40:
                # For this query only; never lower a larger setting made by the database's administrator.
                cur.execute("SELECT set_config('hnsw.ef_search', greatest(coalesce(nullif("
                            "current_setting('hnsw.ef_search', true), '')::int, 40), %s)::text, true)",
                            (offset + limit + 1,))
            started = time.perf_counter()
            cur.execute(query, (argument, limit + 1, offset), prepare=True)
            rows = cur.fetchall()
            seconds = time.perf_counter() - started
        results = [{"image_id": i, "product_id": p, "distance": round(float(d), 6) + 0.0} for i, p, d in rows[:limit]]
        return results, len(rows) > limit, seconds

    def stored_vector(self, conn, image_id: int):
        """(found, vector or None, seconds): the row's stored vector, for 'more like this'."""
        query = sql.SQL("SELECT {vector} FROM {table} WHERE {id} = %s").format(
            vector=self.names["vector_column"], table=self.names["table"], id=self.names["id_column"])
        started = time.perf_counter()
        row = conn.execute(query, (image_id,)).fetchone()
        return row is not None, (row[0] if row else None), time.perf_counter() - started

    def photo_url(self, conn, image_id: int):
        query = sql.SQL("SELECT {url} FROM {table} WHERE {id} = %s").format(
            url=self.names["url_column"], table=self.names["table"], id=self.names["id_column"])
        row = conn.execute(query, (image_id,)).fetchone()
        return row[0] if row else None


def choose_text_model(conn, text_model: str):
    """Sets pg_clip.text_model for this connection's session. auto: multilingual when the model directory has that
    tower (clip_model_info() reads the manifest, loads nothing), else the server's default; a failure here (pg_clip
    missing, say) leaves the default, and the search itself then says what is wrong."""
    if text_model == "clip":
        return
    try:
        conn.execute("SELECT set_config('pg_clip.text_model', 'multilingual', false)")
    except psycopg.Error:
        if text_model == "auto":
            return  # a pg_clip without the setting: its one encoder
        raise
    if text_model == "auto":
        try:
            has_tower = conn.execute("SELECT text_random_weights IS NOT NULL FROM clip_model_info()").fetchone()[0]
        except psycopg.Error:
            has_tower = False
        if not has_tower:
            conn.execute("RESET pg_clip.text_model")


class PhotoError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    max_redirections = 3

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme not in ("http", "https"):
            raise PhotoError(502, f"redirect to a non-http URL refused: {newurl.split('?')[0]}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


# No proxy from the environment, http(s) only, even after a redirect.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _HttpOnlyRedirects())


def fetch_photo(url: str, max_bytes: int, timeout: float):
    """The catalogue photo at url: (bytes, content type). Bounded in size (max_bytes, declared or counted) and
    time (each network wait at most `timeout`, the whole download checked against it between reads, so it
    ends within about twice `timeout`)."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise PhotoError(502, "only http(s) photo URLs are fetched")
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"User-Agent": "pg_clip-example/1", "Accept": "image/*"})
    try:
        with _opener.open(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise PhotoError(502, f"photo larger than {max_bytes} bytes (declared {declared})")
            chunks, size = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise PhotoError(504, f"photo download took more than {timeout:g} s")
                chunk = response.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise PhotoError(502, f"photo larger than {max_bytes} bytes")
                chunks.append(chunk)
    except urllib.error.HTTPError as e:
        raise PhotoError(404 if e.code in (404, 410) else 502, f"image host answered {e.code}") from None
    except (TimeoutError, urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            raise PhotoError(504, f"photo download took more than {timeout:g} s") from None
        raise PhotoError(502, f"image host unreachable: {reason}") from None
    data = b"".join(chunks)
    kind = photo_type(data[:16])
    if kind is None:
        raise PhotoError(502, "the image host's answer is not a photo browsers display")
    return data, kind


def make_handler(catalogue: Catalogue, args):
    max_upload = int(args.max_upload_mb * 1024 * 1024)
    photo_max = int(args.photo_max_mb * 1024 * 1024)

    class Handler(BaseHTTPRequestHandler):
        def version_string(self):
            return "pg_clip-example"

        # --- replies -------------------------------------------------------------------------------------

        def _send(self, status: int, body: bytes, content_type: str, headers=()):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _reply(self, status: int, payload: dict):
            self._send(status, json.dumps(payload).encode(), "application/json", [("Cache-Control", "no-store")])

        def _fail(self, status: int, message: str, sqlstate=None, **extra):
            self._reply(status, {"error": message, "sqlstate": sqlstate, **extra})

        def _db_error(self, e: psycopg.Error, kind: str):
            state = e.sqlstate or ""
            # The database's own message is for the operator (stderr), the sentence for the person.
            first = (str(e).strip().splitlines() or [""])[0]
            print(f"search_service: {kind} search failed: SQLSTATE {state or '(none)'}: {first}", file=sys.stderr,
                  flush=True)
            self._fail(http_status(state), sentence(state, kind, args.max_upload_mb), state or None)

        # --- searches ------------------------------------------------------------------------------------

        def _paging(self, query):
            try:
                offset = int(query.get("offset", ["0"])[0])
                limit = int(query.get("limit", [str(args.limit)])[0])
            except ValueError:
                return None
            if offset < 0 or not 1 <= limit <= MAX_LIMIT or offset + limit > MAX_DEPTH:
                return None
            return offset, limit

        def _search(self, kind: str, query, argument):
            paging = self._paging(query)
            if paging is None:
                return self._fail(400, f"offset >= 0, 1 <= limit <= {MAX_LIMIT}, offset + limit <= {MAX_DEPTH}")
            offset, limit = paging
            try:
                with catalogue.connection() as conn:
                    seconds = 0.0
                    if kind == "like":
                        found, vector, seconds = catalogue.stored_vector(conn, argument)
                        if not found:
                            return self._fail(404, "This product is no longer in the catalogue.")
                        if vector is None:
                            return self._fail(409, "This product's photo has not been indexed yet, so there is "
                                                   "nothing to compare it with.")
                        embed, argument = sql.SQL("%s"), vector
                    else:
                        embed = sql.SQL("clip_embed_bytes(%s)" if kind == "image" else "clip_embed_text(%s)")
                    results, more, query_seconds = catalogue.search(conn, embed, argument, offset, limit)
            except psycopg.Error as e:
                return self._db_error(e, kind)
            more = more and offset + limit < MAX_DEPTH
            self._reply(200, {"results": results, "offset": offset, "more": more,
                              "ms": round((seconds + query_seconds) * 1e3, 1)})

        def _read_upload(self):
            """The request body if it is a plausible upload, else None after replying. Bounded before the
            database sees a byte: Content-Length is required and checked first."""
            length = self.headers.get("Content-Length")
            if self.headers.get("Transfer-Encoding") or length is None or not length.isdigit():
                self.close_connection = True
                self._fail(411, "Send the photo as the request body, with its Content-Length.")
                return None
            length = int(length)
            if length == 0:
                self._fail(400, "The file is empty. Choose a photo.")
                return None
            if length > max_upload:
                self._fail(413, f"The photo is larger than {args.max_upload_mb:g} MB. Try a smaller one.")
                self._discard(length)
                return None
            return self.rfile.read(length)

        def _discard(self, length: int):
            """Read (and drop) what the client is still sending, for a little while, so that closing the
            socket does not reset the connection before the client has read the answer (a lingering close)."""
            self.close_connection = True
            self.connection.settimeout(2)
            left = min(length, 4 * max_upload)
            try:
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    left -= len(chunk)
            except OSError:
                pass

        # --- routes --------------------------------------------------------------------------------------

        def do_POST(self):
            url = urlsplit(self.path)
            if url.path != "/api/search-by-image":
                return self._fail(404, "not found")
            body = self._read_upload()
            if body is not None:
                self._search("image", parse_qs(url.query), body)

        def do_GET(self):
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            path = url.path
            if path in ("/", "/index.html"):
                return self._static("index.html")
            if path.startswith("/static/"):
                return self._static(path[len("/static/"):])
            if path == "/api/info":
                return self._info()
            if path == "/api/search-by-text":
                return self._search("text", query, query.get("q", [""])[0])
            if path == "/api/more-like-this":
                image_id = self._int(query.get("image_id", [""])[0])
                if image_id is None:
                    return self._fail(400, "image_id must be an integer")
                return self._search("like", query, image_id)
            if path.startswith("/photo/"):
                return self._photo(path[len("/photo/"):])
            self._fail(404, "not found")

        do_HEAD = do_GET

        @staticmethod
        def _int(text):
            try:
                value = int(text)
            except ValueError:
                return None
            return value if -2**63 <= value < 2**63 else None

        def _static(self, name: str):
            # Only the files that are in examples/static/, by exact name: no path ever reaches the file system.
            files = {p.name: p for p in STATIC.iterdir() if p.is_file() and p.suffix in STATIC_TYPES}
            if name not in files:
                return self._fail(404, "not found")
            headers = [("Cache-Control", "no-cache"), ("Referrer-Policy", "no-referrer")]
            if name.endswith(".html"):
                headers.append(("Content-Security-Policy", PAGE_CSP))
            self._send(200, files[name].read_bytes(), STATIC_TYPES[files[name].suffix], headers)

        def _info(self):
            limits = {"max_upload_bytes": max_upload, "page_size": args.page_size, "max_results": MAX_DEPTH}
            try:
                with catalogue.connection() as conn:
                    row = conn.execute("SELECT model_version, random_weights, dimensions, text_model, "
                                       "text_random_weights FROM clip_model_info()").fetchone()
            except psycopg.Error as e:
                state = e.sqlstate or ""
                print(f"search_service: info failed: SQLSTATE {state or '(none)'}: {str(e).strip()[:200]}",
                      file=sys.stderr, flush=True)
                return self._fail(http_status(state), sentence(state, "info", args.max_upload_mb), state or None,
                                  **limits)
            self._reply(200, {"model_version": row[0], "random_weights": row[1], "dimensions": row[2],
                              "text_model": row[3], "text_random_weights": row[4], **limits})

        def _photo(self, text: str):
            """The photo of one row, looked up by id: only URLs stored in the catalogue are ever fetched."""
            image_id = self._int(text)
            if image_id is None:
                return self._fail(400, "the photo's id must be an integer")
            try:
                with catalogue.connection() as conn:
                    url = catalogue.photo_url(conn, image_id)
            except psycopg.Error as e:
                return self._db_error(e, "photo")
            if not url:
                return self._fail(404, "no photo for this id")
            try:
                data, kind = fetch_photo(url, photo_max, args.photo_timeout)
            except PhotoError as e:
                print(f"search_service: photo {image_id}: {e}", file=sys.stderr, flush=True)
                return self._fail(e.status, "The product's photo could not be loaded.")
            self._send(200, data, kind, [("Cache-Control", "private, max-age=600"),
                                         ("Content-Security-Policy", "default-src 'none'; sandbox")])

        def log_message(self, *args):
            pass

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8080, help="0 = any free port")
    ap.add_argument("--table", default="image_embeddings")
    ap.add_argument("--id-column", default="image_id", help="the row's key: photo and 'more like this' by it")
    ap.add_argument("--product-column", default="product_id")
    ap.add_argument("--url-column", default="image_url", help="the photo's http(s) URL")
    ap.add_argument("--vector-column", default="image_embedding")
    ap.add_argument("--limit", type=int, default=50, help="results when a request names no limit")
    ap.add_argument("--page-size", type=int, default=24, help="results per page on the page")
    ap.add_argument("--max-upload-mb", type=float, default=20,
                    help="largest upload (default 20, pg_clip.max_image_bytes' default); refused before the database")
    ap.add_argument("--photo-max-mb", type=float, default=20, help="largest catalogue photo the proxy passes on")
    ap.add_argument("--photo-timeout", type=float, default=10, help="seconds for one catalogue photo's download")
    ap.add_argument("--statement-timeout", default="30s", help="statement_timeout of the search queries")
    ap.add_argument("--pool-size", type=int, default=4, help="connections to the database at most (each one "
                    "loads the model once)")
    ap.add_argument("--text-model", choices=("auto", "clip", "multilingual"), default="auto",
                    help="text encoder for words (pg_clip.text_model): auto = multilingual when the model has it "
                         "(Russian and 50+ languages), else clip (English)")
    ap.add_argument("--pidfile", help="write this process's id there once it listens (scripts/demo.sh stops it by it)")
    args = ap.parse_args()
    if not 1 <= args.limit <= MAX_LIMIT or not 1 <= args.page_size <= MAX_LIMIT:
        ap.error(f"--limit and --page-size must be between 1 and {MAX_LIMIT}")
    server = ThreadingHTTPServer((args.host, args.port), make_handler(Catalogue(args), args))
    host, port = server.server_address[:2]
    if args.pidfile:
        Path(args.pidfile).write_text(f"{os.getpid()}\n")
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
