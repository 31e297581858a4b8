"""Client test of clip_backfill and of cancelling downloads, through psycopg as an application would use them: a
backfill killed mid-run keeps its committed batches and a new CALL finishes the job without embedding any row
twice; failures are recorded with their reason and not retried unless asked; statement_timeout and a client's
cancel stop stalled downloads promptly; caller-supplied identifiers are checked, and quoted names work.
Run by scripts/test.sh after pg_regress, with tests/http/server.py already serving at $PG_CLIP_TEST_HTTP
(default http://127.0.0.1:28836). The images are whichever of the usual test inputs the server has under /img/,
so the test does not depend on the server's --root.

usage: test_backfill.py DSN
"""
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
from psycopg import errors, sql

import checklist

dsn = sys.argv[1]
base = os.environ.get("PG_CLIP_TEST_HTTP", "http://127.0.0.1:28836").rstrip("/")
root = Path(__file__).resolve().parents[2]
tag = f"bt{os.getpid()}"  # flaky keys unique to this run: a server that was not reset still counts from zero
from checklist import check


def finish():
    checklist.finish("backfill")


def http(path):
    """(status, body) of a GET on the test server; (None, error) if it cannot be reached."""
    try:
        with urllib.request.urlopen(base + path, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return None, str(e)


def server_requests():
    """Requests the server has answered, control routes aside: proves a CALL fetched nothing."""
    counts = json.loads(http("/stats")[1])["requests"]
    return sum(n for route, n in counts.items() if route not in ("stats", "count", "reset"))


def open_downloads():
    """Connections the server still holds for slow routes: a cancelled download must close its socket."""
    held = json.loads(http("/stats")[1])["open"]
    return {k: v for k, v in held.items() if v}


def connect(notices=None):
    conn = psycopg.connect(dsn, autocommit=True)  # autocommit: CALL must be at top level to COMMIT its batches
    conn.execute("SET client_min_messages = " + ("notice" if notices is not None else "error"))
    if notices is not None:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary) if d.severity_nonlocalized == "NOTICE" else None)
    conn.execute("SET pg_clip.allow_private_addresses = on")  # the server is on the loopback
    return conn


def call(conn, table, url_column, vector_column, **options):
    """CALL clip_backfill with the names as literals: a plain statement, as psql would send it."""
    extra = sql.SQL("").join(sql.SQL(", {} => {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in options.items())
    conn.execute(sql.SQL("CALL clip_backfill({}, url_column => {}, vector_column => {}{})").format(
        sql.Literal(table), sql.Literal(url_column), sql.Literal(vector_column), extra))


def error_of(conn, statement):
    try:
        conn.execute(statement)
        return None
    except psycopg.Error as e:
        return e


status, body = http("/reset")
if status != 200:
    check(f"the test HTTP server answers at {base}", False, body)
    finish()

# The images: the usual test inputs (scripts/test.sh serves tests/pg_regress/make_inputs.py's) or the fixtures.
candidates = ["astronaut.jpg", "coffee.png", "chelsea.png", "small.png", "upright.png", "one_pixel.png", "small.gif"]
candidates += sorted(p.name for p in (root / "tests/fixtures").glob("*") if p.suffix in (".png", ".jpg")
                     and ".expected" not in p.name)
images = {}
for name in candidates:
    status, body = http(f"/img/{name}")
    if status == 200 and len(images) < 7:
        images[name] = body
check("the server has test images under /img/", len(images) >= 3, f"found {list(images)} at {base}/img/")
if len(images) < 3:
    finish()
names = list(images)
truncatable = next((n for n in names if n.endswith(".jpg")), names[0])

setup = connect()
setup.execute("CREATE EXTENSION IF NOT EXISTS pg_clip CASCADE")
for table in ("backfill_test", '"Odd Table"', "backfill_nopk"):
    setup.execute("DELETE FROM clip_backfill_failures WHERE relation = to_regclass(%s)", (table,))
    setup.execute(f"DROP TABLE IF EXISTS {table}")
setup.execute("DROP TABLE IF EXISTS backfill_test_refs")
setup.execute("CREATE TABLE backfill_test_refs (image text PRIMARY KEY, v vector(512))")
for name, data in images.items():
    setup.execute("INSERT INTO backfill_test_refs VALUES (%s, clip_embed_bytes(%s))", (name, data))

# ~150 rows: most good, some that must fail (each with its expected reason), flaky ones that succeed on a retry,
# rows without a URL. The failures are spread so that both the killed run and the resumed one meet some.
setup.execute("""CREATE TABLE backfill_test (
    id int PRIMARY KEY, image_url text, image_embedding vector(512), model_version text,
    embed_count int NOT NULL DEFAULT 0, kind text NOT NULL, image text)""")
# Counts every UPDATE that writes a vector, even an identical one: a row embedded twice shows 2.
setup.execute("""CREATE OR REPLACE FUNCTION backfill_test_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.image_embedding IS NOT NULL THEN NEW.embed_count := OLD.embed_count + 1; END IF;
  RETURN NEW;
END $$""")
setup.execute("""CREATE TRIGGER backfill_test_count BEFORE UPDATE OF image_embedding ON backfill_test
                 FOR EACH ROW EXECUTE FUNCTION backfill_test_count()""")
EXPECT = {"404": ("38000", 404), "html": ("22P03", None), "truncated": ("22P03", None)}
rows = []
for i in range(1, 151):
    image = names[i % len(names)]
    if i % 20 == 3:
        rows.append((i, f"{base}/status/404?row={i}", "404", None))
    elif i % 20 == 8:
        rows.append((i, f"{base}/html?row={i}", "html", None))
    elif i % 20 == 13:
        rows.append((i, f"{base}/truncated/{truncatable}?row={i}", "truncated", None))
    elif i % 25 == 17:
        rows.append((i, f"{base}/flaky/{tag}-{i}/1/{image}", "flaky", image))
    elif i % 30 == 0:
        rows.append((i, None, "null", None))
    else:
        rows.append((i, f"{base}/img/{image}?row={i}", "good", image))
with setup.cursor() as cur:
    cur.executemany("INSERT INTO backfill_test (id, image_url, kind, image) VALUES (%s, %s, %s, %s)", rows)
kinds = {i: kind for i, _, kind, _ in rows}
good = sorted(i for i, k in kinds.items() if k in ("good", "flaky"))
bad = sorted(i for i, k in kinds.items() if k in EXPECT)
print(f"backfill_test: {len(rows)} rows ({len(good)} good of which {sum(k == 'flaky' for k in kinds.values())} flaky, "
      f"{len(bad)} failing, {sum(k == 'null' for k in kinds.values())} without URL); images {names}")

# 1. A backfill killed mid-run: committed batches stay.
first = connect()
first_pid = first.execute("SELECT pg_backend_pid()").fetchone()[0]
outcome = {}


def run_first():
    try:
        call(first, "backfill_test", "image_url", "image_embedding", batch_size=10)
        outcome["finished"] = True
    except psycopg.Error as e:
        outcome["error"] = e


worker = threading.Thread(target=run_first)
worker.start()
seen, deadline = 0, time.time() + 180
while worker.is_alive() and time.time() < deadline:
    row = setup.execute("""SELECT done FROM clip_backfill_progress WHERE pid = %s AND relation = 'backfill_test'::regclass
                            ORDER BY run_id DESC LIMIT 1""", (first_pid,)).fetchone()
    seen = row[0] if row else 0
    if seen >= 30:
        break
    time.sleep(0.05)
check("clip_backfill_progress shows the running CALL's progress from another session", seen >= 30,
      f"done = {seen}, CALL {'still running' if worker.is_alive() else 'ended: %s' % outcome}")
setup.execute("SELECT pg_terminate_backend(%s, 10000)", (first_pid,))
worker.join(60)
check("the killed CALL's client gets an error", not worker.is_alive() and "error" in outcome, outcome)
embedded = setup.execute("SELECT count(*) FROM backfill_test WHERE image_embedding IS NOT NULL").fetchone()[0]
check("the killed run's committed batches stayed, the rest is still to do", seen <= embedded < len(good),
      f"{embedded} rows embedded, progress had shown {seen} done, {len(good)} good rows")
state = setup.execute("SELECT state FROM clip_backfill_progress WHERE pid = %s AND relation = 'backfill_test'::regclass "
                      "ORDER BY run_id DESC LIMIT 1", (first_pid,)).fetchone()
check("the killed run shows as interrupted", state and state[0] == "interrupted", state)

# 2. CALL again, to the end.
notices = []
second = connect(notices)
error = error_of(second, sql.SQL("CALL clip_backfill('backfill_test', url_column => 'image_url', "
                                 "vector_column => 'image_embedding', batch_size => 10)"))
check("a new CALL resumes and completes", error is None, error and f"{error.sqlstate}: {error}")
check("it reports progress in NOTICE lines", any("clip_backfill" in n for n in notices), notices[-3:])
state = {r[0]: r[1:] for r in setup.execute(
    "SELECT id, image_embedding IS NOT NULL, embed_count, model_version FROM backfill_test")}
missing = [i for i in good if not state[i][0]]
check("every good row has a vector (flaky ones after a retry)", not missing, f"without a vector: {missing}")
twice = [(i, state[i][1]) for i in good if state[i][1] != 1]
check("every good row was embedded exactly once across both runs", not twice, f"(id, embed_count): {twice}")
wrong = setup.execute("""SELECT t.id, t.image, t.image_embedding <=> r.v FROM backfill_test t JOIN backfill_test_refs r
                          ON r.image = t.image WHERE t.image_embedding IS NOT NULL
                         AND (t.image_embedding <=> r.v) > 1e-4""").fetchall()
check("each row got its own photo's vector (the vector of the bytes the server sends)", not wrong, wrong[:5])
versions = {state[i][2] for i in good}
model_version = setup.execute("SELECT model_version FROM clip_model_info()").fetchone()[0]
check("model_version is set on every embedded row, to the model in force", len(versions) == 1
      and None not in versions and model_version in next(iter(versions)), f"{versions} (model {model_version})")
stray = [i for i, (has, count, version) in state.items() if i not in good and (has or count or version)]
check("rows that fail or have no URL get no vector and no model_version", not stray, stray)
flaky_counts = {i: http(f"/count/{tag}-{i}")[1].decode().strip() for i, k in kinds.items() if k == "flaky"}
check("flaky URLs were fetched again after their 503", all(int(c) >= 2 for c in flaky_counts.values()), flaky_counts)

failures = {int(r[0]): r[1:] for r in setup.execute(
    """SELECT row_key, sqlstate, error, http_status, permanent, attempts, last_failed_at FROM clip_backfill_failures
        WHERE relation = 'backfill_test'::regclass""")}
check("clip_backfill_failures lists exactly the failing rows (not the flaky, good or URL-less ones)",
      sorted(failures) == bad, f"listed {sorted(failures)}, expected {bad}")
wrong = []
for i in bad:
    state_, status_ = EXPECT[kinds[i]]
    f = failures.get(i)
    if not f or f[0] != state_ or (status_ is not None and f[2] != status_) or not f[1] or f[3] is not True or f[4] != 1:
        wrong.append((i, kinds[i], f[:5] if f else None))
check("each failure has its reason: 404 -> 38000/404, HTML -> 22P03, truncated -> 22P03; permanent, 1 attempt",
      not wrong, wrong[:5])

# 3. Nothing left to do: a third CALL fetches nothing and changes nothing; permanent failures are not retried.
before = (server_requests(), setup.execute("SELECT sum(embed_count) FROM backfill_test").fetchone()[0], failures)
notices.clear()
error = error_of(second, "CALL clip_backfill('backfill_test', url_column => 'image_url', vector_column => 'image_embedding')")
run = setup.execute("""SELECT done, failed, state FROM clip_backfill_progress WHERE relation = 'backfill_test'::regclass
                        ORDER BY run_id DESC LIMIT 1""").fetchone()
after_failures = {int(r[0]): r[1:] for r in setup.execute(
    """SELECT row_key, sqlstate, error, http_status, permanent, attempts, last_failed_at FROM clip_backfill_failures
        WHERE relation = 'backfill_test'::regclass""")}
after = (server_requests(), setup.execute("SELECT sum(embed_count) FROM backfill_test").fetchone()[0], after_failures)
check("a third CALL processes 0 rows", error is None and run and run[0] == 0 and run[1] == 0,
      f"error {error}, last run (done, failed, state) {run}, notices {notices[-2:]}")
check("... fetches nothing and changes nothing (permanent failures are not retried)", before == after,
      f"server requests {before[0]} -> {after[0]}, embeds {before[1]} -> {after[1]}")

# 4. retry_failed => true: the failed rows are tried again, and fail again.
error = error_of(second, "CALL clip_backfill('backfill_test', url_column => 'image_url', "
                         "vector_column => 'image_embedding', retry_failed => true)")
retried = {int(r[0]): r[1:] for r in setup.execute(
    """SELECT row_key, sqlstate, attempts, permanent, last_failed_at > first_failed_at FROM clip_backfill_failures
        WHERE relation = 'backfill_test'::regclass""")}
requests = server_requests()
check("retry_failed => true tries every failed row again", error is None and sorted(retried) == bad
      and all(r[1] == 2 for r in retried.values()) and requests - after[0] >= len(bad),
      f"error {error}; attempts {sorted({r[1] for r in retried.values()})}; {requests - after[0]} requests for {len(bad)} rows")
check("... they fail again with the same reason, still permanent, still without a vector",
      all(retried[i][0] == failures[i][0] and retried[i][2] and retried[i][3] for i in bad)
      and setup.execute("SELECT count(*) FROM backfill_test WHERE kind IN ('404', 'html', 'truncated') "
                        "AND image_embedding IS NOT NULL").fetchone()[0] == 0, retried)
check("... and the good rows are not embedded again",
      setup.execute("SELECT count(*) FROM backfill_test WHERE image_embedding IS NOT NULL AND embed_count <> 1").fetchone()[0] == 0)

# 5. Cancel: statement_timeout and the client's cancel request stop downloads that would never end.
conn = connect()
conn.execute("SET pg_clip.fetch_timeout = '60s'")  # only the cancel may end these downloads
for route, what in (("/drip", "a body that drips one byte a second"), ("/stall", "a server that never answers")):
    conn.execute("SET statement_timeout = '1s'")
    t0 = time.monotonic()
    try:
        conn.execute("SELECT clip_embed_url(%s)", (base + route,))
        got = "no error"
    except errors.QueryCanceled:
        got = "QueryCanceled"
    except psycopg.Error as e:
        got = f"{type(e).__name__} {e.sqlstate}: {e}"
    elapsed = time.monotonic() - t0
    conn.execute("RESET statement_timeout")
    check(f"statement_timeout = 1s cancels {what} within 3 s", got == "QueryCanceled" and elapsed < 3,
          f"{got} after {elapsed:.1f} s")
    check("... and the session goes on", conn.execute("SELECT 1").fetchone()[0] == 1)

outcome = {}


def run_batch():
    try:
        conn.execute("SELECT count(*) FROM clip_embed_urls(%s::text[])",
                     ([f"{base}/stall?n={n}" for n in range(4)] + [base + "/drip"],))
        outcome["result"] = "no error"
    except errors.QueryCanceled:
        outcome["result"] = "QueryCanceled"
    except psycopg.Error as e:
        outcome["result"] = f"{type(e).__name__} {e.sqlstate}: {e}"
    outcome["ended"] = time.monotonic()


worker = threading.Thread(target=run_batch)
worker.start()
time.sleep(1.0)  # the downloads are in flight
running = worker.is_alive()
t0 = time.monotonic()
conn.cancel_safe()
worker.join(30)
elapsed = outcome.get("ended", float("inf")) - t0
check("conn.cancel() stops clip_embed_urls over stalled URLs within 3 s",
      running and outcome.get("result") == "QueryCanceled" and elapsed < 3,
      f"{outcome.get('result')}, {elapsed:.1f} s after the cancel (running when cancelled: {running})")
check("... and the session goes on", conn.execute("SELECT 1").fetchone()[0] == 1)
deadline = time.time() + 5
while open_downloads() and time.time() < deadline:
    time.sleep(0.1)
check("cancelled downloads close their connections", not open_downloads(), open_downloads())

# 6. Identifiers: a wrong one is a clean error naming it, never XX000; names that need quoting work.
for title, statement, needle in [
        ("a missing URL column", "CALL clip_backfill('backfill_test', url_column => 'no_such_col', "
                                 "vector_column => 'image_embedding')", "no_such_col"),
        ("a missing vector column", "CALL clip_backfill('backfill_test', url_column => 'image_url', "
                                    "vector_column => 'no_such_vec')", "no_such_vec"),
        ("a vector column that is not a vector", "CALL clip_backfill('backfill_test', url_column => 'image_url', "
                                                 "vector_column => 'image_url')", "image_url"),
        ("SQL in a column name", "CALL clip_backfill('backfill_test', url_column => 'image_url; DROP TABLE backfill_test', "
                                 "vector_column => 'image_embedding')", "DROP TABLE"),
        ("a missing table", "CALL clip_backfill('no_such_table', url_column => 'u', vector_column => 'v')", "no_such_table")]:
    e = error_of(conn, statement)
    check(f"{title} is refused with a clear error", e is not None and e.sqlstate not in (None, "XX000")
          and needle in str(e), e and f"{e.sqlstate}: {e}")
check("... and the table is still there", conn.execute("SELECT to_regclass('backfill_test') IS NOT NULL").fetchone()[0])
conn.execute("CREATE TABLE backfill_nopk (image_url text, image_embedding vector(512))")
e = error_of(conn, "CALL clip_backfill('backfill_nopk', url_column => 'image_url', vector_column => 'image_embedding')")
check("a table without a single-column primary key and no key_column is refused cleanly",
      e is not None and e.sqlstate not in (None, "XX000"), e and f"{e.sqlstate}: {e}")

conn.execute("""CREATE TABLE "Odd Table" ("Key Col" text PRIMARY KEY, "Image URL" text, "Vec" vector(512))""")
odd = [("p-1", f"{base}/img/{names[0]}"), ("p'2", f"{base}/img/{names[1]}"), ("p 3", f"{base}/img/{names[2]}"),
       ("p\"4", f"{base}/status/404")]
with conn.cursor() as cur:
    cur.executemany('INSERT INTO "Odd Table" VALUES (%s, %s)', odd)
e = error_of(conn, """CALL clip_backfill('"Odd Table"', url_column => 'Image URL', vector_column => 'Vec')""")
have = sorted(r[0] for r in conn.execute("""SELECT "Key Col" FROM "Odd Table" WHERE "Vec" IS NOT NULL"""))
odd_failures = conn.execute("""SELECT row_key, sqlstate FROM clip_backfill_failures
                                WHERE relation = '"Odd Table"'::regclass""").fetchall()
check('a table and columns whose names need quoting ("Odd Table", "Image URL", text keys with quotes) work',
      e is None and have == sorted(["p-1", "p'2", "p 3"]) and odd_failures == [('p"4', "38000")],
      f"error {e and e.sqlstate} {e}; embedded {have}; failures {odd_failures}")

finish()
