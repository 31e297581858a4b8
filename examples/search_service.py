"""The catalogue's /api/search-by-image and /api/search-by-text, as any application would write them with a
Postgres driver: psycopg 3 with pgvector's adapter. The database does the embedding (pg_clip); the
application server loads no model at all.

usage: python examples/search_service.py --dsn "host=... dbname=... user=..." [--port 8080] [--table image_embeddings]

  curl --data-binary @photo.jpg http://127.0.0.1:8080/api/search-by-image
  curl 'http://127.0.0.1:8080/api/search-by-text?q=red+backpack'
  -> {"results": [{"product_id": 1001, "distance": 0.1234}, ...], "ms": 84.2}
"""
import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

MAX_UPLOAD = 20 * 1024 * 1024  # the server refuses more anyway (pg_clip.max_image_bytes); fail early


def search(conn, table: str, embed_sql: str, argument, limit: int):
    """One round trip: the design's query, embedding computed once inside the database."""
    # ORDER BY the output column: one expression, so the index scan orders by it and returns it.
    query = sql.SQL(
        "SELECT product_id, image_embedding <=> {embed}(%s) AS distance FROM {table} ORDER BY 2 LIMIT %s"
    ).format(table=sql.Identifier(table), embed=sql.SQL(embed_sql))
    with conn.cursor() as cur:
        cur.execute(query, (argument, limit), prepare=True)
        return [{"product_id": pid, "distance": round(float(d), 6)} for pid, d in cur.fetchall()]


def make_handler(dsn: str, table: str, limit: int):
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, payload: dict):
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _run(self, embed_sql: str, argument):
            started = time.perf_counter()
            try:
                with psycopg.connect(dsn) as conn:
                    register_vector(conn)
                    results = search(conn, table, embed_sql, argument, limit)
            except psycopg.Error as e:
                # pg_clip's errors carry a SQLSTATE: bad uploads are the client's fault, the rest ours.
                client_fault = (e.sqlstate or "").startswith(("22", "54", "0A"))
                return self._reply(400 if client_fault else 500,
                                   {"error": str(e).strip().splitlines()[0], "sqlstate": e.sqlstate})
            self._reply(200, {"results": results, "ms": round((time.perf_counter() - started) * 1e3, 1)})

        def do_POST(self):
            if urlparse(self.path).path != "/api/search-by-image":
                return self._reply(404, {"error": "not found"})
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_UPLOAD:
                return self._reply(400, {"error": f"send the photo as the request body (1..{MAX_UPLOAD} bytes)"})
            self._run("clip_embed_bytes", self.rfile.read(length))

        def do_GET(self):
            url = urlparse(self.path)
            if url.path != "/api/search-by-text":
                return self._reply(404, {"error": "not found"})
            q = parse_qs(url.query).get("q", [""])[0]
            self._run("clip_embed_text", q)

        def log_message(self, *args):
            pass

    return Handler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--table", default="image_embeddings")
    ap.add_argument("--limit", type=int, default=50)
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.dsn, args.table, args.limit))
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
