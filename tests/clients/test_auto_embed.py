"""Client test of automatic embedding (clip_auto_embed and its background worker) on a real cluster that
preloads pg_clip, through psycopg as an application would write: rows are inserted and changed, and the
worker must make their vectors appear by itself, exactly once each, through restarts, faults and a
concurrent CALL clip_backfill. Every wait is bounded; timings are printed (they are not pass criteria, the
machine is shared: see scripts/bench_auto_embed.sh for the figures).

Run by scripts/test.sh after the other client tests, with tests/http/server.py serving at $PG_CLIP_TEST_HTTP
(default http://127.0.0.1:28836). It restarts the cluster (pg_ctl restart -m fast) and, last, kills its
postmaster to check that the worker follows it, then starts the cluster again.

usage: test_auto_embed.py CONNINFO PG_CTL_COMMAND SERVER_OPTIONS
  CONNINFO        host=... port=... user=... (no dbname: the test makes its own databases)
  PG_CTL_COMMAND  how to run pg_ctl for the cluster, with its -D and -l (the server log, which the test reads)
  SERVER_OPTIONS  the server's options, for pg_ctl start -o after the postmaster was killed
"""
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import psycopg

import checklist
from checklist import check

conninfo, pg_ctl, server_options = sys.argv[1], shlex.split(sys.argv[2]), sys.argv[3]
server_log = pg_ctl[pg_ctl.index("-l") + 1]  # the cluster's log, where a failing worker would show
base = os.environ.get("PG_CLIP_TEST_HTTP", "http://127.0.0.1:28836").rstrip("/")
tag = f"ae{os.getpid()}"  # URLs and flaky keys unique to this run
DB, DB2 = "pg_clip_auto", "pg_clip_auto2"
timings = {}


def connect(db=DB, autocommit=True):
    conn = psycopg.connect(f"{conninfo} dbname={db}", autocommit=autocommit)
    conn.execute("SET client_min_messages = error")
    conn.execute("SET pg_clip.allowed_private_networks = '127.0.0.1/32'")
    return conn


def one(conn, query, params=None):
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def wait_until(what, condition, timeout):
    """Polls condition() every 0.1 s until it is true; returns the seconds it took, or None on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if condition():
                return time.monotonic() - started
        except psycopg.OperationalError:
            pass  # the server is restarting
        time.sleep(0.1)
    print(f"     (gave up waiting for {what} after {timeout} s)")
    return None


def url(name, key):
    return f"{base}/img/{name}?{tag}-{key}"


def http_json(path):
    with urllib.request.urlopen(base + path, timeout=10) as r:
        return json.loads(r.read())


def server_requests():
    counts = http_json("/stats")["requests"]
    return sum(n for route, n in counts.items() if route not in ("stats", "count", "reset"))


def worker_pid(conn, db=DB):
    return one(conn, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_clip auto-embed' AND datname = %s", (db,))


def missing(conn, ids):
    return one(conn, "SELECT count(*) FROM products WHERE id = ANY(%s) AND image_embedding IS NULL", (list(ids),))


def write_counts(conn, ids):
    """How many times each row's vector was written (the writes table fills from a trigger)."""
    rows = conn.execute("SELECT id, count(*) FROM embed_writes WHERE id = ANY(%s) GROUP BY id", (list(ids),)).fetchall()
    counts = dict(rows)
    return [counts.get(i, 0) for i in ids]


def insert_rows(conn, ids, name="chelsea.png", path=None):
    with conn.transaction():
        for i in ids:
            conn.execute("INSERT INTO products (id, name, image_url) VALUES (%s, %s, %s)",
                         (i, f"product {i}", path(i) if path else url(name, i)))


def make_database(admin, db):
    admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {db}")
    admin.execute(f"ALTER DATABASE {db} SET pg_clip.allowed_private_networks = '127.0.0.1/32'")
    with connect(db) as conn:
        conn.execute("CREATE EXTENSION pg_clip CASCADE")
        conn.execute("""CREATE TABLE products (id int PRIMARY KEY, name text, image_url text,
                                               image_embedding vector(512), model_version text)""")
        # Every write of a vector, counted: "embedded exactly once" is one row here per product.
        conn.execute("CREATE TABLE embed_writes (id int, at timestamptz DEFAULT clock_timestamp())")
        # Schema-qualified: the worker writes as the table's owner with search_path = pg_catalog, pg_temp.
        conn.execute("""CREATE FUNCTION count_write() RETURNS trigger LANGUAGE plpgsql AS $$
                        BEGIN INSERT INTO public.embed_writes (id) VALUES (NEW.id); RETURN NULL; END $$""")
        conn.execute("""CREATE TRIGGER count_write AFTER UPDATE OF image_embedding ON products FOR EACH ROW
                        WHEN (NEW.image_embedding IS NOT NULL) EXECUTE FUNCTION count_write()""")
        one(conn, "SELECT clip_auto_embed('products', 'image_url', 'image_embedding')")


def process_alive(pid):
    """A process that exited but was not reaped yet (a zombie, the postmaster being gone) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def restart_cluster():
    started = time.monotonic()
    subprocess.run(pg_ctl + ["-m", "fast", "-w", "restart"], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def main():
    admin = psycopg.connect(f"{conninfo} dbname=postgres", autocommit=True)
    # The worker's own settings (SIGHUP context: postgresql.auto.conf and a reload reach it).
    admin.execute("ALTER SYSTEM SET pg_clip.auto_embed_retry_delay = '500ms'")
    admin.execute("ALTER SYSTEM SET pg_clip.auto_embed_naptime = '3s'")
    admin.execute("SELECT pg_reload_conf()")
    make_database(admin, DB)
    conn = connect()
    server_started = one(conn, "SELECT pg_postmaster_start_time()")

    # Warm-up: the first row also makes the worker load (and, on a fresh cluster, prepare) the model.
    insert_rows(conn, [1])
    took = wait_until("the first vector", lambda: missing(conn, [1]) == 0, 180)
    check("a new row is embedded by the worker (model load included)", took is not None)
    check("its vector equals clip_embed_url of its URL",
          one(conn, "SELECT image_embedding = clip_embed_url(image_url) FROM products WHERE id = 1"))
    check("model_version is written", one(conn, "SELECT model_version LIKE 'clip-ViT-B-32%' FROM products WHERE id = 1"))

    # One row, warm: committed -> searchable.
    lags = []
    for i in range(2, 7):
        insert_rows(conn, [i], name="coffee.png")
        lag = wait_until("a single row", lambda: missing(conn, [i]) == 0, 30)
        if lag is not None:
            lags.append(lag)
    check("single inserts are embedded, each within 30 s", len(lags) == 5, lags)
    timings["single insert, commit to vector (s), median of 5"] = sorted(lags)[len(lags) // 2] if lags else None

    # 500 rows in one transaction.
    ids = list(range(1000, 1500))
    insert_rows(conn, ids, name="astronaut.jpg")
    took = wait_until("500 rows", lambda: missing(conn, ids) == 0, 400)
    check("500 rows inserted in one transaction are all embedded", took is not None)
    timings["500 rows in one transaction, drain (s)"] = took
    check("each of the 500 written exactly once", set(write_counts(conn, ids)) == {1})

    # A changed URL: the old vector is gone at commit, the new photo's arrives.
    conn.execute("UPDATE products SET image_url = %s WHERE id = 2", (url("chelsea.png", "changed"),))
    check("the old photo's vector is gone right after the commit",
          one(conn, "SELECT image_embedding IS NULL FROM products WHERE id = 2"))
    took = wait_until("the new photo's vector", lambda: missing(conn, [2]) == 0, 30)
    check("the new photo's vector arrives and equals clip_embed_url of the new URL",
          took is not None and one(conn, "SELECT image_embedding = clip_embed_url(image_url) FROM products WHERE id = 2"))

    # Changed twice in quick succession, the first photo still downloading (3 s late): the newest wins.
    before = write_counts(conn, [3])[0]
    slow = f"{base}/delay/3000/chelsea.png?{tag}-slow"
    conn.execute("UPDATE products SET image_url = %s WHERE id = 3", (slow,))
    busy = wait_until("the worker on the slow photo",
                      lambda: one(conn, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_clip auto-embed' "
                                        "AND query LIKE 'embedding%%'") > 0, 10)
    conn.execute("UPDATE products SET image_url = %s WHERE id = 3", (url("coffee.png", "newest"),))
    wait_until("the newest photo", lambda: missing(conn, [3]) == 0 and
               one(conn, "SELECT count(*) FROM clip_auto_embed_queue WHERE row_key = '3'") == 0, 30)
    check("changed twice while downloading: the row ends with the newest photo's vector",
          busy is not None and one(conn, "SELECT image_embedding = clip_embed_url(%s) FROM products WHERE id = 3",
                                   (url("coffee.png", "newest"),)))
    check("... and the slow, outdated photo was never written", write_counts(conn, [3])[0] - before == 1,
          write_counts(conn, [3])[0] - before)

    # An unrelated UPDATE of 1,000 rows re-embeds nothing.
    with conn.transaction():
        conn.execute("""INSERT INTO products (id, name, image_url, image_embedding, model_version)
                        SELECT i, 'prefilled', %s, p.image_embedding, p.model_version
                        FROM generate_series(5000, 5999) i, (SELECT * FROM products WHERE id = 1) p""",
                     (url("chelsea.png", "prefilled"),))
    writes = one(conn, "SELECT count(*) FROM embed_writes")
    requests = server_requests()
    conn.execute("UPDATE products SET name = name || ' (updated)' WHERE id BETWEEN 5000 AND 5999")
    conn.execute("UPDATE products SET image_url = image_url WHERE id BETWEEN 5000 AND 5999")
    time.sleep(3)
    check("an unrelated UPDATE of 1,000 rows queues nothing", one(conn, "SELECT count(*) FROM clip_auto_embed_queue") == 0)
    check("... writes no vector", one(conn, "SELECT count(*) FROM embed_writes") == writes)
    check("... and fetches nothing", server_requests() == requests)

    # Failures: a 404 and an HTML page land in clip_backfill_failures with their reasons; a 503 is retried.
    flaky = f"{base}/flaky/{tag}/4/coffee.png"
    with conn.transaction():
        conn.execute("INSERT INTO products (id, image_url) VALUES (7001, %s), (7002, %s), (7003, %s)",
                     (f"{base}/status/404", f"{base}/html", flaky))
    wait_until("the failures", lambda: one(conn, "SELECT count(*) FROM clip_backfill_failures WHERE row_key IN ('7001', '7002')") == 2, 30)
    failures = {r[0]: r[1:] for r in conn.execute(
        "SELECT row_key, sqlstate, http_status, permanent, error FROM clip_backfill_failures ORDER BY 1").fetchall()}
    check("a 404 is recorded: 38000, HTTP 404, permanent",
          failures.get("7001", ())[:3] == ("38000", 404, True), failures.get("7001"))
    check("an HTML page is recorded: 22P03, says it was HTML",
          failures.get("7002", ("",))[0] == "22P03" and "HTML" in failures.get("7002", ("", 0, 0, ""))[3], failures.get("7002"))
    took = wait_until("the 503 row", lambda: missing(conn, [7003]) == 0, 30)
    attempts = int(urllib.request.urlopen(f"{base}/count/{tag}", timeout=5).read())
    check("a 503 is retried with backoff and then succeeds", took is not None, attempts)
    check("... with its failure record gone", one(conn, "SELECT count(*) FROM clip_backfill_failures WHERE row_key = '7003'") == 0)
    check("the failed rows are not retried (nothing queued)", one(conn, "SELECT count(*) FROM clip_auto_embed_queue") == 0)

    # A user's UPDATE that writes URL and vector together still works, and is left alone.
    before = write_counts(conn, [4])[0]
    conn.execute("UPDATE products SET image_url = %s, image_embedding = clip_embed_url(%s) WHERE id = 4",
                 (url("astronaut.jpg", "manual"), url("astronaut.jpg", "manual")))
    time.sleep(1.5)
    check("a manual UPDATE ... clip_embed_url(...) keeps its vector and queues nothing",
          one(conn, "SELECT image_embedding = clip_embed_url(image_url) FROM products WHERE id = 4")
          and write_counts(conn, [4])[0] - before == 1)

    # Rows loaded with the triggers off are found by the sweep (every 3 s here).
    conn.execute("SET session_replication_role = replica")
    insert_rows(conn, range(8001, 8006), name="coffee.png")
    conn.execute("RESET session_replication_role")
    took = wait_until("the swept rows", lambda: missing(conn, range(8001, 8006)) == 0, 30)
    check("rows loaded with the triggers off are found by the sweep", took is not None)

    # SIGTERM stops the worker promptly, even in the middle of a batch of slow downloads; rows inserted
    # while it is gone are embedded once it is back (the postmaster restarts it, or the next commit does).
    slow_ids = list(range(8101, 8121))
    insert_rows(conn, slow_ids, path=lambda i: f"{base}/delay/5000/chelsea.png?{tag}-{i}")
    wait_until("a slow batch", lambda: one(conn, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                                                 "'pg_clip auto-embed' AND query LIKE 'embedding%%'") > 0, 10)
    pid = worker_pid(conn)
    started = time.monotonic()
    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    gone = wait_until("the terminated worker", lambda: one(conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) == 0, 10)
    timings["SIGTERM mid-batch to worker gone (s)"] = gone
    check("SIGTERM ends the worker within 1 s, mid-batch", gone is not None and gone <= 1.0, gone)
    insert_rows(conn, range(8201, 8206), name="coffee.png")
    took = wait_until("rows after the restart", lambda: missing(conn, slow_ids + list(range(8201, 8206))) == 0, 60)
    check("the batch cut short and rows inserted meanwhile are embedded, each once",
          took is not None and set(write_counts(conn, slow_ids + list(range(8201, 8206)))) == {1})
    check("a new worker serves the database", worker_pid(conn) not in (None, pid))

    # Faults inside a batch: an ERROR and a Rust panic are logged, shown, and survived; no server restart.
    pid = worker_pid(conn)
    for fault, expected in (("error", "fault injected"), ("panic", "internal error")):
        admin.execute(f"ALTER SYSTEM SET pg_clip.debug_auto_embed_fault = '{fault}'")
        admin.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)
        fid = 9000 if fault == "error" else 9001
        insert_rows(conn, [fid], name="coffee.png")
        shown = wait_until(f"the {fault}", lambda: (one(conn, "SELECT last_error FROM clip_auto_embed_status") or "").find(expected) >= 0, 30)
        check(f"a{'n' if fault == 'error' else ''} {fault} in a batch shows in clip_auto_embed_status.last_error", shown is not None,
              one(conn, "SELECT last_error FROM clip_auto_embed_status"))
    admin.execute("ALTER SYSTEM RESET pg_clip.debug_auto_embed_fault")
    admin.execute("SELECT pg_reload_conf()")
    took = wait_until("rows after the faults", lambda: missing(conn, [9000, 9001]) == 0, 60)
    check("... and once the fault is gone the rows are embedded", took is not None)
    check("the worker survived both faults (same process)", worker_pid(conn) == pid, (pid, worker_pid(conn)))
    check("the server did not restart", one(conn, "SELECT pg_postmaster_start_time()") == server_started)

    # A trigger of the table that raises for one row fails its batch; the batch is retried row by row and
    # only that row fails, with the trigger's message.
    conn.execute("""CREATE FUNCTION refuse_9105() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN IF NEW.id = 9105 THEN RAISE EXCEPTION 'product 9105 may not have a photo'; END IF;
                    RETURN NEW; END $$""")
    conn.execute("""CREATE TRIGGER refuse_9105 BEFORE UPDATE OF image_embedding ON products FOR EACH ROW
                    WHEN (NEW.image_embedding IS NOT NULL) EXECUTE FUNCTION refuse_9105()""")
    poison = list(range(9100, 9110))
    insert_rows(conn, poison, name="chelsea.png")
    wait_until("the poisoned batch", lambda: missing(conn, poison) == 1
               and one(conn, "SELECT count(*) FROM clip_backfill_failures WHERE row_key = '9105'") == 1, 60)
    failure = conn.execute("SELECT sqlstate, permanent, error FROM clip_backfill_failures WHERE row_key = '9105'").fetchone()
    check("a row whose own trigger raises fails alone; the rest of its batch is embedded",
          missing(conn, poison) == 1 and failure is not None and failure[0] == "P0001" and "may not have a photo" in failure[2],
          failure)
    conn.execute("DROP TRIGGER refuse_9105 ON products")

    # A model change: rows of another model_version are re-embedded in the background; their old vectors
    # serve until each is replaced.
    conn.execute("UPDATE products SET model_version = 'old-model' WHERE id BETWEEN 1000 AND 1019")
    check("clip_auto_embed_requeue queues the rows of another model",
          one(conn, "SELECT clip_auto_embed_requeue('products')") == 20)
    check("... which keep their vectors meanwhile", missing(conn, range(1000, 1020)) == 0)
    took = wait_until("the re-embeds", lambda: one(conn, "SELECT count(*) FROM products WHERE model_version = 'old-model'") == 0, 60)
    check("... and are re-embedded by the worker", took is not None)

    # CALL clip_backfill on the same table at the same time as the worker: no row embedded twice.
    one(conn, "SELECT clip_auto_embed_pause('products')")
    both = list(range(10000, 10200))
    insert_rows(conn, both, path=lambda i: f"{base}/delay/100/coffee.png?{tag}-both-{i}")
    one(conn, "SELECT clip_auto_embed_pause('products', false)")
    call_error = []

    def backfill():
        try:
            with connect() as c:
                c.execute("CALL clip_backfill('products', url_column => 'image_url', vector_column => 'image_embedding')")
        except psycopg.Error as e:
            call_error.append(e)

    caller = threading.Thread(target=backfill)
    caller.start()
    caller.join(300)
    took = wait_until("the shared rows", lambda: missing(conn, both) == 0, 120)
    check("CALL clip_backfill alongside the worker finishes without error or deadlock",
          not caller.is_alive() and not call_error, call_error)
    counts = write_counts(conn, both)
    check("... every row embedded exactly once", took is not None and set(counts) == {1},
          {c: counts.count(c) for c in set(counts)})
    backfill_done = one(conn, "SELECT done FROM clip_backfill_progress ORDER BY run_id DESC LIMIT 1")
    print(f"     (of the 200 rows, CALL clip_backfill embedded {backfill_done}, the worker the rest)")

    # Two databases at once; stopping leaves no trigger and no worker behind.
    make_database(admin, DB2)
    conn2 = connect(DB2)
    insert_rows(conn, range(11000, 11020), name="coffee.png")
    insert_rows(conn2, range(1, 21), name="chelsea.png")
    ok1 = wait_until("database 1", lambda: missing(conn, range(11000, 11020)) == 0, 60)
    ok2 = wait_until("database 2", lambda: missing(conn2, range(1, 21)) == 0, 60)
    pids = (worker_pid(conn, DB), worker_pid(conn, DB2))
    check("two databases are served at once, each by its own worker",
          ok1 is not None and ok2 is not None and None not in pids and pids[0] != pids[1], pids)
    check("clip_auto_embed_stop returns true", one(conn2, "SELECT clip_auto_embed_stop('products')") is True)
    check("... and leaves no trigger", one(conn2, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'products'::regclass "
                                              "AND tgname LIKE '%%clip_auto_embed%%'") == 0)
    gone = wait_until("the second worker", lambda: worker_pid(conn, DB2) is None, 15)
    check("... and no worker", gone is not None)
    check("the first database's worker is unaffected", worker_pid(conn, DB) == pids[0])
    # A database dropped under its worker: the worker is not started again (it would fail to connect every few
    # seconds, holding a background worker slot each time).
    one(conn2, "SELECT clip_auto_embed('products', 'image_url', 'image_embedding')")
    wait_until("the second worker again", lambda: worker_pid(conn, DB2) is not None, 15)
    oid2 = one(conn, "SELECT oid FROM pg_database WHERE datname = %s", (DB2,))
    conn2.close()
    log_size = os.path.getsize(server_log)
    admin.execute(f"DROP DATABASE {DB2} WITH (FORCE)")
    time.sleep(12)
    with open(server_log, errors="replace") as f:
        f.seek(log_size)
        retries = f.read().count(f"database {oid2} does not exist")
    check("a worker whose database was dropped is not started again", retries == 0, retries)

    # pg_ctl restart -m fast in the middle of a 300-row drain: afterwards every row embedded exactly once.
    drain = list(range(20000, 20300))
    insert_rows(conn, drain, path=lambda i: f"{base}/delay/200/astronaut.jpg?{tag}-drain-{i}")
    wait_until("a third of the drain", lambda: missing(conn, drain) <= 200, 120)
    done_before = 300 - missing(conn, drain)
    conn.close()
    timings["pg_ctl restart -m fast mid-drain (s)"] = restart_cluster()
    conn = connect()
    took = wait_until("the drain after the restart", lambda: missing(conn, drain) == 0, 300)
    counts = write_counts(conn, drain)
    check(f"restart mid-drain ({done_before}/300 done before): every row embedded afterwards", took is not None)
    check("... each exactly once", set(counts) == {1}, {c: counts.count(c) for c in set(counts)})
    check("the launcher brought the worker back after the restart", worker_pid(conn) is not None)

    # Postmaster death: the worker does not outlive it (a new postmaster could not start while it did).
    pid = worker_pid(conn)
    postmaster = one(conn, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_clip launcher'")
    postmaster = int(open(f"/proc/{postmaster}/stat").read().split()[3]) if postmaster else None
    conn.close()
    admin.close()
    if postmaster:
        os.kill(postmaster, signal.SIGKILL)
        gone = wait_until("the orphaned worker", lambda: not process_alive(pid), 10)
        timings["postmaster killed to worker gone (s)"] = gone
        check("when the postmaster dies, the worker exits (within 1 s)", gone is not None and gone <= 1.0, gone)
        # The rest of the cluster's processes follow the postmaster out; start again once they have.
        for _ in range(20):
            if subprocess.run(pg_ctl + ["-w", "-o", server_options, "start"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0:
                break
            time.sleep(0.5)
    else:
        check("found the postmaster", False)
    admin = psycopg.connect(f"{conninfo} dbname=postgres", autocommit=True)
    for setting in ("auto_embed_retry_delay", "auto_embed_naptime"):
        admin.execute(f"ALTER SYSTEM RESET pg_clip.{setting}")
    admin.execute("SELECT pg_reload_conf()")
    for db in (DB, DB2):
        admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")

    for name, value in timings.items():
        print(f"     {name}: {'-' if value is None else f'{value:.2f}'}")
    checklist.finish("auto-embed")


if __name__ == "__main__":
    main()
