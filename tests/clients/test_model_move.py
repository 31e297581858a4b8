"""The move to a better model with no downtime (README, "Moving to another model"), as a client runs it, on the
regress cluster (pg_clip preloaded, the auto-embed worker running), with models of RANDOM weights: the catalogue's
ViT-B/32 column keeps serving search while SigLIP 2 fills a new column in the background; then one query changes.

A searcher thread runs the shop's photo search the whole time (exact search, every product asked for) and a writer
thread adds products and changes photos during the move. The verdicts: no search failed; every product that had a
vector when the move began was in every search's answer (but those whose photo the writer changed: an UPDATE of
the URL clears the old photo's vector, move or no move, until the new one is embedded); new and changed products got both vectors during the
move, each from its own model; model_version kept describing the old column until the move ended; after the
switch and the stop, new products get the new vector (and model_version the new model).

usage: test_model_move.py CONNINFO NEW_MODEL   (NEW_MODEL: a name under pg_clip.models_path, e.g.
       siglip2-base-patch16-224; tests/http/server.py serving at $PG_CLIP_TEST_HTTP)
"""
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psycopg

import checklist
from checklist import check

conninfo, NEW = sys.argv[1], sys.argv[2]
base = os.environ.get("PG_CLIP_TEST_HTTP", "http://127.0.0.1:28836").rstrip("/")
DB = "pg_clip_model_move"
PHOTOS = ["chelsea.png", "astronaut.png", "coffee.png", "brick.png", "camera.png", "coins.png", "moon.png",
          "hubble_deep_field.jpg", "motorcycle_left.png", "ihc.png"]
N = 30


def connect(autocommit=True):
    conn = psycopg.connect(f"{conninfo} dbname={DB}", autocommit=autocommit)
    conn.execute("SET client_min_messages = error")
    return conn


def one(conn, query, params=None):
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def url(i, photo=None):
    return f"{base}/img/{photo or PHOTOS[i % len(PHOTOS)]}?product={i}"


def wait_until(what, condition, timeout):
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.2)
    print(f"     (gave up waiting for {what} after {timeout} s)")
    return None


def vec(text):
    return np.array(json.loads(text), dtype=np.float64)


class Searcher(threading.Thread):
    """The shop's search by photo, over and over: the column and model it uses are switched by the test."""

    def __init__(self):
        super().__init__(daemon=True)
        self.target = ("image_embedding", "default")  # (column, model), switched as one
        self.must_have = set()
        # Products whose photo the writer changed: out of search until their new photo is embedded, by design
        # (an UPDATE of the URL clears the old photo's vector), move or no move.
        self.changing = set()
        self.searches = self.failures = self.missing = 0
        self.errors = []
        self.stop = threading.Event()
        self.photo = (Path(os.environ.get("PG_CLIP_TEST_INPUTS", "")) / "chelsea.png")

    def run(self):
        conn = connect()
        photo = self.photo.read_bytes() if self.photo.is_file() else None
        while not self.stop.is_set():
            (column, model), must_have = self.target, set(self.must_have)
            try:
                ids = self.search(conn, column, model, photo)
                self.searches += 1
                lost = must_have - ids - self.changing
                if lost:
                    self.missing += 1
                    self.errors.append(f"missing {sorted(lost)[:5]} from {column}")
            except psycopg.Error as e:
                self.failures += 1
                self.errors.append(f"{e.sqlstate}: {e}")
            time.sleep(0.05)
        conn.close()

    @staticmethod
    def search(conn, column, model, photo):
        # Products with a vector in the column searched (a NULL sorts last and is no match): every one of them
        # must be in the answer.
        if photo is not None:
            rows = conn.execute(f"SELECT id FROM products WHERE {column} IS NOT NULL "
                                f"ORDER BY {column} <=> clip_embed_bytes(%s, %s) LIMIT 1000", (photo, model))
        else:
            rows = conn.execute(f"SELECT id FROM products WHERE {column} IS NOT NULL "
                                f"ORDER BY {column} <=> clip_embed_text('a photo', %s) LIMIT 1000", (model,))
        return {r[0] for r in rows.fetchall()}


class Writer(threading.Thread):
    """The shop's admin during the move: a new product a second (12 in all), and every third time a changed photo."""

    def __init__(self, first_id, searcher):
        super().__init__(daemon=True)
        self.searcher = searcher
        self.next_id = first_id
        self.added, self.changed = [], []
        self.stop = threading.Event()

    def run(self):
        conn = connect()
        while not self.stop.is_set() and len(self.added) < 12:
            i = self.next_id
            self.next_id += 1
            conn.execute("INSERT INTO products (id, name, image_url) VALUES (%s, %s, %s)", (i, f"product {i}", url(i)))
            self.added.append(i)
            if i % 3 == 0:
                target = 1 + i % N
                # Marked before the UPDATE commits: a search that starts right after the commit already misses
                # the product (its vector is cleared), and must know it is changing when it checks its answer.
                self.searcher.changing.add(target)
                conn.execute("UPDATE products SET image_url = %s WHERE id = %s", (url(target, PHOTOS[i % 4]) + f"&v={i}", target))
                self.changed.append(target)
            time.sleep(1.0)
        conn.close()


def main():
    admin = psycopg.connect(f"{conninfo} dbname=postgres", autocommit=True)
    admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {DB}")
    admin.execute(f"ALTER DATABASE {DB} SET pg_clip.allowed_private_networks = '127.0.0.1/32'")
    conn = connect()
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    conn.execute("CREATE EXTENSION pg_clip")
    new_dims = one(conn, "SELECT dimensions FROM clip_models() WHERE name = %s", (NEW,))
    check(f"the new model {NEW} is installed ({new_dims} dimensions)", new_dims is not None)
    # The catalogue as it stands: ViT-B/32 vectors, their model_version, kept fresh by the worker.
    conn.execute("""CREATE TABLE products (id int PRIMARY KEY, name text, image_url text,
                                           image_embedding vector(512), model_version varchar)""")
    conn.execute("INSERT INTO products (id, name, image_url) SELECT i, 'product ' || i, NULL FROM generate_series(1, %s) i",
                 (N,))
    for i in range(1, N + 1):
        conn.execute("UPDATE products SET image_url = %s WHERE id = %s", (url(i), i))
    conn.execute("SELECT clip_auto_embed('products', 'image_url', 'image_embedding')")
    took = wait_until("the catalogue's vectors", lambda: one(
        conn, "SELECT count(*) FROM products WHERE image_embedding IS NULL") == 0, 180)
    check(f"before the move: {N} products with ViT-B/32 vectors ({took and round(took, 1)} s)", took is not None)
    old_version = one(conn, "SELECT model_version FROM products WHERE id = 1")

    searcher = Searcher()
    searcher.must_have = set(range(1, N + 1))
    searcher.start()
    writer = Writer(first_id=1000, searcher=searcher)
    writer.start()

    # 1. A column for the new model, filled by it in the background; the old column keeps serving.
    started = time.monotonic()
    conn.execute(f"ALTER TABLE products ADD COLUMN image_embedding_v2 vector({new_dims})")
    conn.execute("SELECT set_config('pg_clip.model', %s, false)", (NEW,))
    queued = one(conn, "SELECT clip_auto_embed('products', 'image_url', 'image_embedding_v2')")
    conn.execute("RESET pg_clip.model")
    check(f"clip_auto_embed of the new column with {NEW} queued every product ({queued})", queued >= N)
    status = conn.execute("SELECT vector_column, pending FROM clip_auto_embed_status ORDER BY vector_column").fetchall()
    check("clip_auto_embed_status shows both columns, each with its own pending rows",
          [r[0] for r in status] == ["image_embedding", "image_embedding_v2"], status)
    record = conn.execute("SELECT vector_column, model FROM clip_vector_columns ORDER BY vector_column").fetchall()
    check("each column is recorded with its model", record == [("image_embedding", "default"),
                                                               ("image_embedding_v2", NEW)], record)

    # 2. Watch it: the status view's pending count of the new column goes to zero.
    seen = []

    def v2_done():
        pending = one(conn, "SELECT pending FROM clip_auto_embed_status WHERE vector_column = 'image_embedding_v2'")
        seen.append(pending)
        return one(conn, "SELECT count(*) FROM products WHERE image_embedding_v2 IS NULL") == 0 and pending == 0
    took = wait_until("the new column", v2_done, 300)
    check(f"the new column filled in the background ({took and round(took, 1)} s; pending seen "
          f"{max(seen) if seen else None} -> {seen[-1] if seen else None})", took is not None)

    # 3. Meanwhile new and changed products got both vectors, each from its own model.
    writer.stop.set()
    writer.join()
    ids = writer.added + writer.changed
    took = wait_until("both vectors of new and changed products", lambda: one(
        conn, "SELECT count(*) FROM products WHERE id = ANY(%s) AND (image_embedding IS NULL OR image_embedding_v2 IS NULL)",
        (ids,)) == 0, 120)
    check(f"{len(writer.added)} new and {len(set(writer.changed))} changed products got both vectors", took is not None)
    probe = writer.changed[-1] if writer.changed else writer.added[-1]
    photo_url = one(conn, "SELECT image_url FROM products WHERE id = %s", (probe,))
    old_vec = vec(one(conn, "SELECT image_embedding::text FROM products WHERE id = %s", (probe,)))
    new_vec = vec(one(conn, "SELECT image_embedding_v2::text FROM products WHERE id = %s", (probe,)))
    want_old = vec(one(conn, "SELECT clip_embed_url(%s, 'default')::text", (photo_url,)))
    want_new = vec(one(conn, "SELECT clip_embed_url(%s, %s)::text", (photo_url, NEW)))
    check("a changed product's two vectors are its new photo's, each by its own model",
          float(old_vec @ want_old) > 0.9999 and float(new_vec @ want_new) > 0.9999)
    check("model_version still describes the old column during the move",
          one(conn, "SELECT count(*) FROM products WHERE model_version IS DISTINCT FROM %s", (old_version,)) == 0,
          one(conn, "SELECT array_agg(DISTINCT model_version) FROM products"))
    check("searching the old column with the new model is refused (42804)",
          sqlstate(conn, "SELECT id FROM products ORDER BY image_embedding <=> clip_embed_text('cup', %s) LIMIT 5", (NEW,))
          == "42804")

    # 4. Switch the search to the new column (one query changes); stop and drop the old one.
    searcher.must_have = set(one(conn, "SELECT array_agg(id) FROM products WHERE image_embedding_v2 IS NOT NULL"))
    searcher.target = ("image_embedding_v2", NEW)
    time.sleep(1.5)
    check("clip_auto_embed_stop(table, old column) stops the old column only",
          one(conn, "SELECT clip_auto_embed_stop('products', 'image_embedding')") is True
          and [r[0] for r in conn.execute("SELECT vector_column FROM clip_auto_embed_status").fetchall()]
          == ["image_embedding_v2"])
    conn.execute("SELECT clip_forget_vector_column('products', 'image_embedding')")
    conn.execute("ALTER TABLE products DROP COLUMN image_embedding")
    conn.execute("INSERT INTO products (id, name, image_url) VALUES (5000, 'after the move', %s)", (url(5000),))
    took = wait_until("a product added after the move", lambda: one(
        conn, "SELECT image_embedding_v2 IS NOT NULL FROM products WHERE id = 5000"), 60)
    check("after the move a new product gets the new vector, and model_version names the new model",
          took is not None and (one(conn, "SELECT model_version FROM products WHERE id = 5000") or "").startswith(NEW.split("-")[0]),
          one(conn, "SELECT model_version FROM products WHERE id = 5000"))
    time.sleep(1)
    searcher.stop.set()
    searcher.join()
    elapsed = time.monotonic() - started
    check(f"no search failed and no product went missing: {searcher.searches} searches over the {elapsed:.0f} s "
          f"move, {searcher.failures} failed, {searcher.missing} incomplete",
          searcher.searches > 10 and searcher.failures == 0 and searcher.missing == 0, searcher.errors[:3])
    conn.execute("SELECT clip_auto_embed_stop('products')")
    conn.close()
    admin.execute(f"DROP DATABASE {DB} WITH (FORCE)")
    checklist.finish("model move")


def sqlstate(conn, query, params=None):
    try:
        conn.execute(query, params)
        return "ok"
    except psycopg.Error as e:
        return e.sqlstate


if __name__ == "__main__":
    main()
