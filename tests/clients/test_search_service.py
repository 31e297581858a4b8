"""End-to-end test of examples/search_service.py against a real server: psycopg + pgvector's adapter, the
design's query, pg_clip embedding inside the database. Run by scripts/test.sh after pg_regress.

usage: test_search_service.py DSN INPUTS_DIR   (INPUTS_DIR: made by tests/pg_regress/make_inputs.py)
"""
import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg

dsn, inputs = sys.argv[1], Path(sys.argv[2])
root = Path(__file__).resolve().parents[2]
photos = ["astronaut.png", "chelsea.png", "coffee.png", "small.png", "upright.png"]
from checklist import check, finish


with psycopg.connect(dsn, autocommit=True) as conn:
    conn.execute("SET client_min_messages = error")
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_clip CASCADE")
    conn.execute("DROP TABLE IF EXISTS client_catalog")
    # The catalogue's shape: the application answers with each result's image_id (its photo, "more like this").
    conn.execute("CREATE TABLE client_catalog (image_id int PRIMARY KEY, product_id int, image_url text, "
                 "image_embedding vector(512))")
    for i, name in enumerate(photos, start=1):
        conn.execute("INSERT INTO client_catalog (image_id, product_id, image_embedding) VALUES (%s, %s, clip_embed_bytes(%s))",
                     (i, i, (inputs / name).read_bytes()))
    conn.execute("CREATE INDEX ON client_catalog USING hnsw (image_embedding vector_cosine_ops)")

# The application's own log (the database's messages behind each error sentence) goes to a file, not here.
(root / "target").mkdir(exist_ok=True)
service = subprocess.Popen(
    [sys.executable, str(root / "examples/search_service.py"), "--dsn", dsn, "--port", "0", "--table", "client_catalog"],
    stdout=subprocess.PIPE, stderr=open(root / "target/search-service.log", "w"), text=True)
try:
    base = service.stdout.readline().strip().split()[-1]

    def call(path, body=None):
        request = urllib.request.Request(base + path, data=body, method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    status, answer = call("/api/search-by-image", (inputs / "astronaut.jpg").read_bytes())
    results = answer.get("results", [])
    check("photo search answers 200", status == 200, answer)
    check("returns every product (table smaller than LIMIT 50)", len(results) == len(photos), results)
    check("the same photo as JPEG finds its PNG first", results and results[0]["product_id"] == 1, results)
    check("distances ascend", [r["distance"] for r in results] == sorted(r["distance"] for r in results), results)

    status, answer = call("/api/search-by-text?q=an+astronaut+in+a+white+suit")
    check("text search answers 200 with every product", status == 200 and len(answer.get("results", [])) == len(photos), answer)

    # Words in Russian: with --text-model auto (the default) the application's connections use the multilingual
    # encoder, which the test model has. The words go to the database as they are (UTF-8, percent-encoded here).
    status, info = call("/api/info")
    check("the application chose the multilingual text encoder", status == 200 and info.get("text_model") == "multilingual", info)
    status, answer = call("/api/search-by-text?q=" + urllib.parse.quote("красный рюкзак"))
    check("a Russian text query answers 200 with every product",
          status == 200 and len(answer.get("results", [])) == len(photos), answer)
    status, answer = call("/api/search-by-text?q=" + urllib.parse.quote("красный рюкзак Nike, 30 л"))
    check("mixed Cyrillic and Latin with digits answers 200", status == 200 and answer.get("results"), answer)

    status, answer = call("/api/search-by-image", (inputs / "page.html").read_bytes())
    check("an HTML upload is the client's fault, with pg_clip's SQLSTATE", status == 400 and answer.get("sqlstate") == "22P03", answer)
    status, answer = call("/api/search-by-text?q=")
    check("an empty text query is the client's fault", status == 400 and answer.get("sqlstate") == "22023", answer)
finally:
    service.terminate()
    service.wait(timeout=10)

finish("search_service")
