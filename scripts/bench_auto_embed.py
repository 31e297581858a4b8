"""Automatic embedding benchmark. Run by scripts/bench_auto_embed.sh, which starts the cluster (pg_clip
preloaded) and the photo server (tests/http/server.py: URL /photos/i.jpg is photo i % P, each answer
LATENCY_MS late, one URL in 30, i % 30 == 7, failing by design).

  lag    LAG_ROWS single-row inserts, one every INTERVAL s: seconds from the insert's commit to its vector,
         p50/p95/max, from timestamps the server takes (clock_timestamp() at insert, and in a trigger when the
         vector is written). Reference, same run: one warm clip_embed_url (a fetch and an inference).
         Goal: p95 <= 1 s + that reference.
  burst  BURST rows in one transaction: images/s until the last good row has its vector. Reference, same run:
         CALL clip_backfill on a copy of the same rows. Goal: >= 90 % of its images/s.
  write  pgbench (4 clients, WRITE_SECONDS each run, off/on alternated, median of 3): single-row inserts,
         100-row inserts, UPDATEs of another column, and UPDATEs that set the URL to itself; a table with
         automatic embedding on (its worker paused, so that only the triggers' and the partial index's cost
         counts) beside the same table without it; and, less noisy, one session inserting 100,000 rows in one
         statement (median of 3, microseconds per row). Goal: <= 10 % slower.
  idle   the worker's (and the launcher's) CPU time over IDLE_SECONDS with nothing to do. Goal: ~0.

usage: bench_auto_embed.py DSN BASE_URL --pgbench PATH --out DIR [options] PHOTO...
"""
import argparse
import os
import re
import statistics
import subprocess
import time
import urllib.request

import psycopg

ap = argparse.ArgumentParser()
ap.add_argument("dsn")
ap.add_argument("base")
ap.add_argument("--pgbench", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--latency-ms", type=float, default=200)
ap.add_argument("--lag-rows", type=int, default=200)
ap.add_argument("--interval", type=float, default=0.5)
ap.add_argument("--burst", type=int, default=2000)
ap.add_argument("--write-seconds", type=int, default=15)
ap.add_argument("--idle-seconds", type=int, default=60)
ap.add_argument("photos", nargs="+")
args = ap.parse_args()

# The same settings for the worker (database level: it reads them when it connects) and the sessions.
SETTINGS = {"pg_clip.allow_private_addresses": "on", "pg_clip.fetch_timeout": "2s", "pg_clip.fetch_retries": "1",
            "pg_clip.embedding_cache_size": "0", "pg_clip.intra_op_threads": str(args.threads)}
TABLE = """(id bigserial PRIMARY KEY, name text, image_url text, image_embedding vector(512), model_version text,
           inserted_at timestamptz DEFAULT clock_timestamp(), embedded_at timestamptz)"""
CLK_TCK = os.sysconf("SC_CLK_TCK")


def connect():
    conn = psycopg.connect(args.dsn, autocommit=True)
    conn.execute("SET client_min_messages = error")
    return conn


def one(conn, query, params=None):
    return conn.execute(query, params).fetchone()[0]


def url(i):
    return f"{args.base}/photos/{i}.jpg"


def good(i):
    return i % 30 != 7


def make_table(conn, name, auto):
    conn.execute(f"DROP TABLE IF EXISTS {name}")
    conn.execute(f"CREATE TABLE {name} {TABLE}")
    # When each vector arrived, stamped by the server as it is written.
    conn.execute(f"""CREATE TRIGGER stamp BEFORE UPDATE OF image_embedding ON {name} FOR EACH ROW
                     WHEN (NEW.image_embedding IS NOT NULL) EXECUTE FUNCTION stamp_embedded()""")
    if auto:
        one(conn, f"SELECT clip_auto_embed('{name}', 'image_url', 'image_embedding')")


def wait_for(conn, query, timeout, params=None):
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if one(conn, query, params):
            return True
        time.sleep(0.1)
    return False


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wakeups(pid):
    with open(f"/proc/{pid}/status") as f:
        return sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)


def pgbench(script, seconds):
    path = os.path.join(args.out, "pgbench.sql")
    with open(path, "w") as f:
        f.write(script)
    dsn = dict(item.split("=", 1) for item in args.dsn.split())
    result = subprocess.run([args.pgbench, "-n", "-M", "prepared", "-c", "4", "-j", "2", "-T", str(seconds), "-f", path,
                             "-h", dsn["host"], "-p", dsn["port"], "-U", dsn["user"], dsn["dbname"]],
                            capture_output=True, text=True, check=True)
    return float(re.search(r"tps = ([0-9.]+) \(without initial connection time\)", result.stdout).group(1))


def main():
    admin = connect()
    for name, value in SETTINGS.items():
        admin.execute(f"ALTER DATABASE {one(admin, 'SELECT current_database()')} SET {name} = '{value}'")
    conn = connect()  # a new session: it has the database's settings
    conn.execute("""CREATE FUNCTION stamp_embedded() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN NEW.embedded_at := clock_timestamp(); RETURN NEW; END $$""")
    photos = [open(p, "rb").read() for p in args.photos]
    with urllib.request.urlopen(f"{args.base}/photos/manifest.json", timeout=10):
        pass
    print(f"{len(photos)} photos, {args.latency_ms:.0f} ms server latency, intra_op_threads {args.threads}, "
          f"fetch_timeout 2s, 1 retry, embedding cache off")

    # References in this run: one inference, and one fetch + inference (distinct URLs: nothing cached).
    conn.execute("SELECT clip_embed_bytes(%s)", (photos[0],))
    inference = []
    for p in photos[:10]:
        t = time.perf_counter()
        conn.execute("SELECT clip_embed_bytes(%s)", (p,))
        inference.append(time.perf_counter() - t)
    fetch = []
    for i in [i for i in range(50_000, 50_040) if good(i)][:10]:
        t = time.perf_counter()
        conn.execute("SELECT clip_embed_url(%s)", (url(i),))
        fetch.append(time.perf_counter() - t)
    ref_inference, ref_url = statistics.median(inference), statistics.median(fetch)

    # Lag. The worker is warmed up first (its first batch loads the model).
    make_table(conn, "lag", auto=True)
    conn.execute("INSERT INTO lag (image_url) VALUES (%s)", (url(0),))
    wait_for(conn, "SELECT embedded_at IS NOT NULL FROM lag WHERE id = 1", 300)
    ids = [i for i in range(1, 10 * args.lag_rows) if good(i)][:args.lag_rows]
    started = time.monotonic()
    for n, i in enumerate(ids):
        time.sleep(max(0.0, started + n * args.interval - time.monotonic()))
        conn.execute("INSERT INTO lag (image_url) VALUES (%s)", (url(i),))
    wait_for(conn, "SELECT count(*) = 0 FROM lag WHERE embedded_at IS NULL", 120)
    lags = [r[0] for r in conn.execute("SELECT extract(epoch FROM embedded_at - inserted_at)::float8 FROM lag "
                                       "WHERE id > 1 AND embedded_at IS NOT NULL").fetchall()]
    missing = len(ids) - len(lags)

    # Idle: nothing queued, nothing failing; the worker should sleep on its latch.
    worker = one(conn, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_clip auto-embed' AND datname = current_database()")
    launcher = one(conn, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_clip launcher'")
    before = [(cpu_seconds(p), wakeups(p)) for p in (worker, launcher)]
    time.sleep(args.idle_seconds)
    after = [(cpu_seconds(p), wakeups(p)) for p in (worker, launcher)]
    idle = [(a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before)]

    # Burst, and CALL clip_backfill on the same rows.
    make_table(conn, "burst", auto=True)
    make_table(conn, "backfill", auto=False)
    burst = list(range(100_000, 100_000 + args.burst))
    goods = sum(good(i) for i in burst)
    with conn.transaction():
        with conn.cursor().copy("COPY burst (image_url) FROM STDIN") as copy:
            for i in burst:
                copy.write_row((url(i),))
    committed = one(conn, "SELECT clock_timestamp()")
    wait_for(conn, "SELECT count(*) >= %s FROM burst WHERE embedded_at IS NOT NULL", 3600, (goods,))
    last = one(conn, "SELECT max(embedded_at) FROM burst")
    auto_done = one(conn, "SELECT count(*) FROM burst WHERE embedded_at IS NOT NULL")
    auto_rate = auto_done / (last - committed).total_seconds()
    with conn.cursor().copy("COPY backfill (image_url) FROM STDIN") as copy:
        for i in burst:
            copy.write_row((url(i),))
    t = time.perf_counter()
    conn.execute("CALL clip_backfill('backfill', url_column => 'image_url', vector_column => 'image_embedding')")
    call_seconds = time.perf_counter() - t
    call_done = one(conn, "SELECT count(*) FROM backfill WHERE embedded_at IS NOT NULL")
    call_rate = call_done / call_seconds
    one(conn, "SELECT clip_auto_embed_stop('burst')")
    one(conn, "SELECT clip_auto_embed_stop('lag')")

    # The write path: the same statements on a table with automatic embedding on (worker paused) and off.
    write = {}
    scripts = {
        "INSERT, 1 row per transaction": "\\set r random(1, 1000000)\n"
            "INSERT INTO {t} (name, image_url) VALUES ('product', 'http://img.example/photos/' || :r || '.jpg');\n",
        "INSERT, 100 rows per statement": "\\set r random(1, 1000000)\n"
            "INSERT INTO {t} (name, image_url) SELECT 'product', 'http://img.example/photos/' || :r || '-' || g || '.jpg' "
            "FROM generate_series(1, 100) g;\n",
        "UPDATE another column": "\\set id random(1, 20000)\nUPDATE {t} SET name = 'renamed ' || :id WHERE id = :id;\n",
        "UPDATE the URL to itself": "\\set id random(1, 20000)\nUPDATE {t} SET image_url = image_url WHERE id = :id;\n",
    }
    for name in ("w_off", "w_on"):
        conn.execute(f"DROP TABLE IF EXISTS {name}")
        conn.execute(f"CREATE TABLE {name} {TABLE}")
        conn.execute(f"""INSERT INTO {name} (name, image_url, image_embedding)
                         SELECT 'product', 'http://img.example/photos/' || g || '.jpg', NULL FROM generate_series(1, 20000) g""")
    one(conn, "SELECT clip_auto_embed('w_on', 'image_url', 'image_embedding')")
    one(conn, "SELECT clip_auto_embed_pause('w_on')")
    conn.execute("VACUUM ANALYZE w_off, w_on")
    for label, script in scripts.items():
        runs = {"w_off": [], "w_on": []}
        for _ in range(3):
            for table in ("w_off", "w_on"):
                runs[table].append(pgbench(script.format(t=table), args.write_seconds))
        write[label] = (statistics.median(runs["w_off"]), statistics.median(runs["w_on"]))
    bulk = {"w_off": [], "w_on": []}
    for _ in range(3):
        for table in ("w_off", "w_on"):
            t = time.perf_counter()
            conn.execute(f"INSERT INTO {table} (name, image_url) SELECT 'product', 'http://img.example/bulk/' || g "
                         f"FROM generate_series(1, 100000) g")
            bulk[table].append((time.perf_counter() - t) / 100_000 * 1e6)
    bulk_us = (statistics.median(bulk["w_off"]), statistics.median(bulk["w_on"]))
    one(conn, "SELECT clip_auto_embed_stop('w_on')")

    # Report.
    goal_p95 = 1.0 + ref_url
    print()
    print(f"lag: {len(lags)} single-row inserts, one every {args.interval} s (commit to vector, seconds)")
    print(f"  p50 {pct(lags, 0.5):.2f}   p95 {pct(lags, 0.95):.2f}   max {max(lags):.2f}   (not embedded: {missing})")
    print(f"  reference, same run: clip_embed_url (fetch + inference) {ref_url:.3f} s, clip_embed_bytes {ref_inference:.3f} s")
    print(f"  goal p95 <= 1 s + {ref_url:.3f} = {goal_p95:.2f} s: {'met' if pct(lags, 0.95) <= goal_p95 else 'NOT met'}")
    print()
    print(f"burst: {args.burst} rows in one transaction ({goods} good URLs, {args.burst - goods} failing by design)")
    print(f"  automatic (worker):   {auto_done} embedded in {(last - committed).total_seconds():.1f} s = {auto_rate:.1f} images/s")
    print(f"  CALL clip_backfill:   {call_done} embedded in {call_seconds:.1f} s = {call_rate:.1f} images/s")
    print(f"  ratio {auto_rate / call_rate:.2f}; goal >= 0.90: {'met' if auto_rate >= 0.9 * call_rate else 'NOT met'}")
    print()
    print(f"write path: pgbench, 4 clients, {args.write_seconds} s per run, median of 3 (transactions/s)")
    print(f"  {'statement':32} {'auto-embed off':>15} {'on (paused)':>12} {'slower by':>10}")
    for label, (off, on) in write.items():
        print(f"  {label:32} {off:15.0f} {on:12.0f} {100 * (1 - on / off):9.1f}%")
    print(f"  {'INSERT 100,000 rows, 1 session (µs/row)':32} {bulk_us[0]:15.2f} {bulk_us[1]:12.2f} "
          f"{100 * (bulk_us[1] / bulk_us[0] - 1):9.1f}%")
    worst = max([100 * (1 - on / off) for off, on in write.values()] + [100 * (bulk_us[1] / bulk_us[0] - 1)])
    print(f"  goal <= 10 % slower: {'met' if worst <= 10 else 'NOT met'} (worst {worst:.1f} %)")
    print()
    print(f"idle: {args.idle_seconds} s with nothing to do")
    for who, (cpu, switches) in zip(("worker", "launcher"), idle):
        print(f"  {who:9} CPU {cpu:.2f} s ({100 * cpu / args.idle_seconds:.2f} %), {switches} context switches")
    print(f"  goal ~0: {'met' if idle[0][0] <= 0.05 * args.idle_seconds / 60 else 'NOT met'}")


if __name__ == "__main__":
    main()
