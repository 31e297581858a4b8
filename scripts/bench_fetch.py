"""URL backfill benchmark: how close embedding photos fetched over HTTP comes to embedding bytes already at hand.
Run by scripts/bench_fetch.sh, which starts the server and tests/http/server.py.

Every method sees the same catalogue: URL i is photo i % P; one URL in 30 (i % 30 == 7) fails by design, in
turn a 404, a stall (never answers) and a truncated file, as a real bucket has dead links, hung hosts and
half-uploaded objects. images/s counts embedded images only: a failed row is not progress.
  (a) the compute ceiling: clip_embed_bytes over the photos' bytes in a table, one backend (and all cores);
  (b) the obvious SQL: UPDATE ... = (SELECT ... FROM clip_try_embed_url(image_url)), one URL at a time;
  (c) clip_embed_urls over arrays of CHUNK URLs (fetches overlap, inference stays in the backend);
  (d) CALL clip_backfill, the procedure meant for this job.
Checks (PASS/FAIL, exit 1 on FAIL): no good row lost (every i % 30 != 7 has a vector), every failed row carries a
reason (sqlstate + error), and the reason is the injected fault's (404 -> 38000/404, stall -> 08006,
truncated -> 22P03).

usage: bench_fetch.py DSN BASE_URL [--threads N] [--urls N] [--update-rows N] [--chunk N] [--batch-size N] [--concurrency N] PHOTO...
"""
import argparse
import json
import os
import threading
import time
import urllib.request

import psycopg
from psycopg import sql

ap = argparse.ArgumentParser()
ap.add_argument("dsn")
ap.add_argument("base", help="the HTTP server, e.g. http://127.0.0.1:28837")
ap.add_argument("--urls", type=int, default=2000, help="rows for clip_embed_urls and clip_backfill")
ap.add_argument("--update-rows", type=int, default=120, help="rows for the serial UPDATE")
ap.add_argument("--chunk", type=int, default=256, help="URLs per clip_embed_urls call")
ap.add_argument("--batch-size", type=int, help="clip_backfill's batch_size (default: its own)")
ap.add_argument("--concurrency", type=int, help="clip_backfill's concurrency (default: pg_clip.fetch_concurrency)")
ap.add_argument("--latency-ms", type=float, default=200, help="the server's latency (for the report)")
ap.add_argument("--threads", type=int, default=1, help="pg_clip.intra_op_threads for every method, the ceiling included")
ap.add_argument("--ceiling-backends", type=int, default=os.cpu_count() or 1, help="backends for the all-cores ceiling")
ap.add_argument("photos", nargs="+")
args = ap.parse_args()

OLD_PIPELINE = 0.6  # img/s of the pipeline clip_backfill replaces
GOAL_CEILING, GOAL_SPEEDUP = 0.85, 25
# Bounded time for a stalled URL: 2 s per attempt, one retry. Said in the output: figures depend on it.
SETTINGS = {"pg_clip.allow_private_addresses": "on", "pg_clip.fetch_timeout": "2s", "pg_clip.fetch_retries": "1",
            "pg_clip.embedding_cache_size": "0", "pg_clip.intra_op_threads": str(args.threads)}
KINDS = {0: ("404", "38000", 404), 1: ("stall", "08006", None), 2: ("truncated", "22P03", None)}
photos = [open(p, "rb").read() for p in args.photos]
P = len(photos)


def url(i):
    return f"{args.base}/photos/{i}.jpg"


def bad(i):
    return i % 30 == 7


def connect(notices=None):
    conn = psycopg.connect(args.dsn, autocommit=True)
    conn.execute("SET client_min_messages = " + ("notice" if notices is not None else "error"))
    if notices is not None:
        conn.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized or d.severity, d.message_primary)))
    for name, value in SETTINGS.items():
        conn.execute(f"SET {name} = '{value}'")
    conn.execute("SELECT clip_embed_bytes(%s)", (photos[0],))  # load the model: cold start is not measured
    return conn


def fill(conn, table, columns, n):
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(table), sql.SQL(columns)))
    with conn.cursor().copy(sql.SQL("COPY {} (product_id, image_url) FROM STDIN").format(sql.Identifier(table))) as copy:
        for i in range(n):
            copy.write_row((i, url(i)))
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))


with urllib.request.urlopen(f"{args.base}/photos/manifest.json", timeout=10) as r:
    served = json.loads(r.read())["count"]
assert served == P, f"the server has {served} photos, this run {P}"

conn = connect()
conn.execute("DROP TABLE IF EXISTS photos")
conn.execute("CREATE TABLE photos (n int PRIMARY KEY, b bytea)")
with conn.cursor().copy("COPY photos (n, b) FROM STDIN WITH (FORMAT BINARY)") as copy:
    copy.set_types(["int4", "bytea"])
    for n, b in enumerate(photos):
        copy.write_row((n, b))
results = []  # (method, rows, good, failed, seconds)
checks = []   # (ok, text)
print(f"URL backfill benchmark on {os.cpu_count()} cores: {P} photos, server latency {args.latency_ms:g} ms per response, "
      f"1 URL in 30 fails (404 / stall / truncated)")
print("settings for every method: " + ", ".join(f"{k} = {v}" for k, v in SETTINGS.items())
      + "\n  (fetch_timeout 2s + 1 retry: a stalled URL costs bounded time; cache off: every call runs the model)")

# (a) The ceiling: decode + inference alone, in one backend, then in every core's backend at once.
t0 = time.perf_counter()
good = conn.execute("SELECT count(clip_embed_bytes(b)) FROM photos").fetchone()[0]
results.append(("(a) ceiling: clip_embed_bytes, 1 backend", P, good, P - good, time.perf_counter() - t0))
ceiling = good / results[-1][4]
K = args.ceiling_backends
if K > 1:
    conns = [connect() for _ in range(K)]
    barrier, counts = threading.Barrier(K + 1), [0] * K

    def part(k):
        barrier.wait()
        counts[k] = conns[k].execute("SELECT count(clip_embed_bytes(b)) FROM photos WHERE n %% %s = %s", (K, k)).fetchone()[0]

    threads = [threading.Thread(target=part, args=(k,)) for k in range(K)]
    [t.start() for t in threads]
    barrier.wait()
    t0 = time.perf_counter()
    [t.join() for t in threads]
    results.append((f"    all cores: {K} backends at once", P, sum(counts), P - sum(counts), time.perf_counter() - t0))
    [c.close() for c in conns]


def verify(method, outcome):
    """outcome: {i: (has_vector, sqlstate, error, http_status)} for every row the method saw."""
    lost = [i for i, o in outcome.items() if not bad(i) and not o[0]]
    failed = [i for i, o in outcome.items() if not o[0]]
    no_reason = [i for i in failed if not (outcome[i][1] and outcome[i][2])]
    wrong = []
    for i in failed:
        if bad(i):
            kind, state, status = KINDS[(i // 30) % 3]
            if outcome[i][1] != state or (status is not None and outcome[i][3] != status):
                wrong.append((i, kind, outcome[i][1], outcome[i][3], (outcome[i][2] or "")[:80]))
    unexpected = [i for i, o in outcome.items() if bad(i) and o[0]]
    n_good = sum(1 for i in outcome if not bad(i))
    checks.append((not lost, f"{method}: no good row lost ({n_good - len(lost)}/{n_good} have a vector)"
                   + (f"; lost e.g. {[(i, outcome[i][1], (outcome[i][2] or '')[:80]) for i in lost[:3]]}" if lost else "")))
    checks.append((not no_reason and not unexpected,
                   f"{method}: every failed row carries a reason ({len(failed) - len(no_reason)}/{len(failed)} with sqlstate + error)"
                   + (f"; without: {no_reason[:5]}" if no_reason else "")
                   + (f"; broken URLs that got a vector: {unexpected[:5]}" if unexpected else "")))
    checks.append((not wrong, f"{method}: each failure names its injected fault (404 -> 38000/404, stall -> 08006, "
                   f"truncated -> 22P03)" + (f"; not so: {wrong[:3]}" if wrong else "")))
    return len(outcome) - len(failed), len(failed)


# (b) The obvious UPDATE: one URL after another, each paying the full latency.
conn = connect()
n = args.update_rows
fill(conn, "fetch_update", "product_id int PRIMARY KEY, image_url text, image_embedding vector(512), "
     "embed_sqlstate text, embed_error text, http_status int", n)
t0 = time.perf_counter()
conn.execute("""UPDATE fetch_update SET (image_embedding, embed_sqlstate, embed_error, http_status) =
                  (SELECT embedding, sqlstate, error, http_status FROM clip_try_embed_url(image_url))""")
seconds = time.perf_counter() - t0
outcome = {r[0]: r[1:] for r in conn.execute(
    "SELECT product_id, image_embedding IS NOT NULL, embed_sqlstate, embed_error, http_status FROM fetch_update")}
results.append(("(b) UPDATE ... clip_try_embed_url", n, *verify("UPDATE", outcome), seconds))
conn.close()

# (c) clip_embed_urls, CHUNK URLs per call.
conn = connect()
n = args.urls
fill(conn, "fetch_urls", "product_id int PRIMARY KEY, image_url text", n)
outcome, bad_shape = {}, []
t0 = time.perf_counter()
for start in range(0, n, args.chunk):
    end = min(n, start + args.chunk)
    rows = conn.execute("""SELECT ord, embedding IS NOT NULL, sqlstate, error, http_status FROM clip_embed_urls(
                             array(SELECT image_url FROM fetch_urls WHERE product_id >= %s AND product_id < %s
                                   ORDER BY product_id))""", (start, end)).fetchall()
    if sorted(r[0] for r in rows) != list(range(1, end - start + 1)):
        bad_shape.append((start, len(rows)))
    for r in rows:
        outcome[start + r[0] - 1] = r[1:]
seconds = time.perf_counter() - t0
checks.append((not bad_shape, f"clip_embed_urls: one row per element, ord 1..n"
               + (f"; not so for chunks (start, rows): {bad_shape[:3]}" if bad_shape else "")))
results.append((f"(c) clip_embed_urls, {args.chunk} per call", n, *verify("clip_embed_urls", outcome), seconds))
conn.close()

# (d) CALL clip_backfill on a fresh table.
notices = []
conn = connect(notices)
conn.execute("DELETE FROM clip_backfill_failures WHERE relation = to_regclass('image_embeddings')")
fill(conn, "image_embeddings", "product_id int PRIMARY KEY, image_url text, image_embedding vector(512), model_version text", n)
options = sql.SQL("").join(sql.SQL(", {} => {}").format(sql.Identifier(k), sql.Literal(v))
                           for k, v in (("batch_size", args.batch_size), ("concurrency", args.concurrency)) if v is not None)
call = sql.SQL("CALL clip_backfill('image_embeddings', url_column => 'image_url', vector_column => 'image_embedding'{})").format(options)
t0 = time.perf_counter()
conn.execute(call)
seconds = time.perf_counter() - t0
failures = {int(r[0]): r[1:] for r in conn.execute(
    """SELECT row_key, sqlstate, error, http_status FROM clip_backfill_failures
        WHERE relation = 'image_embeddings'::regclass""")}
outcome = {}
for i, has in conn.execute("SELECT product_id, image_embedding IS NOT NULL FROM image_embeddings"):
    outcome[i] = (True, None, None, None) if has else (False, *failures.get(i, (None, None, None)))
results.append(("(d) CALL clip_backfill", n, *verify("clip_backfill", outcome), seconds))
progress = [m for s, m in notices if s == "NOTICE"]
try:
    view = conn.execute("""SELECT done, failed, remaining, images_per_second FROM clip_backfill_progress
                            WHERE relation = 'image_embeddings'::regclass ORDER BY started_at DESC LIMIT 1""").fetchone()
    view = view and "done {}, failed {}, remaining {}, {} images/s".format(*view)
except psycopg.Error as e:
    view = f"not readable: {e.sqlstate} {e}"
conn.close()

print(f"\n{'method':40} {'rows':>6} {'good':>6} {'failed':>6} {'seconds':>8} {'images/s':>9} {'% of ceiling':>13} "
      f"{'x over 0.6 img/s':>17}")
for method, rows, good, failed, seconds in results:
    rate = good / seconds
    print(f"{method:40} {rows:6d} {good:6d} {failed:6d} {seconds:8.1f} {rate:9.2f} {100 * rate / ceiling:12.0f}% "
          f"{rate / OLD_PIPELINE:16.1f}x")
print("images/s counts embedded images only; % of ceiling is against (a) with 1 backend (intra_op_threads as set).")
if progress:
    print(f"clip_backfill said {len(progress)} NOTICE line(s); the last: {progress[-1]}")
print(f"clip_backfill_progress after the run: {view}")

backfill = results[-1][2] / results[-1][4]
print("\ngoals (same run):")
for name, value, goal, ok in [
        ("clip_backfill / ceiling (1 backend)", f"{100 * backfill / ceiling:.0f}%", f">= {100 * GOAL_CEILING:.0f}%",
         backfill >= GOAL_CEILING * ceiling),
        (f"clip_backfill / {OLD_PIPELINE} img/s (the old pipeline)", f"{backfill / OLD_PIPELINE:.1f}x", f">= {GOAL_SPEEDUP}x",
         backfill >= GOAL_SPEEDUP * OLD_PIPELINE)]:
    print(f"  {name:52} {value:>8}   goal {goal:<8} {'met' if ok else 'NOT MET'}")
if K > 1:
    print(f"  {'for reference: clip_backfill / all-cores ceiling':52} {100 * backfill / (results[1][2] / results[1][4]):7.0f}%")

print("\ncorrectness:")
for ok, text in checks:
    print(f"  {'PASS' if ok else 'FAIL'} {text}")
raise SystemExit(0 if all(ok for ok, _ in checks) else 1)
