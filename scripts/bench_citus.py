"""Citus benchmark: the same rows on one node and on a Citus cluster (a coordinator and 2 workers on this
machine), side by side in one run. Run by scripts/bench_citus.sh, which starts the cluster and the photo server.

  backfill: CALL clip_backfill of ROWS photo URLs into a plain table on the coordinator (one node) and into a
            distributed table of 4 shards (the cluster): images/s, each node's inferences (its share of the work),
            and each node's CPU seconds (the postmaster's and its children's, from /proc: this machine runs all
            three nodes). Run twice on the cluster, with ROWS and 2 x ROWS, to show that what the coordinator
            does (no download, no inference; one round trip per node per step) does not grow with the rows the
            way the nodes' work does.
  search:   photo search (the design card's query) on 4 and 32 shards beside the plain table with the same
            rows: median latency, inferences per search on the coordinator and on the workers.
  projection: from the per-node figures, the throughput of N worker nodes of this machine's kind, and where
            the coordinator's share would bind.

The three nodes share this machine's 2 cores, so the cluster cannot be faster here than one node: the speed-up
itself cannot be shown, only each node's share and the coordinator's cost per row.

usage: bench_citus.py COORDINATOR_PORT BASE_URL ROWS PHOTO_COUNT
"""
import os
import statistics
import sys
import time

import psycopg

port, base, rows, photo_count = int(sys.argv[1]), sys.argv[2].rstrip("/"), int(sys.argv[3]), int(sys.argv[4])
worker_ports = [port + 1, port + 2]
DB = "pg_clip_bench_citus"
TICK = os.sysconf("SC_CLK_TCK")


def connect(node_port, db=DB):
    conn = psycopg.connect(f"host=localhost port={node_port} user=postgres dbname={db}", autocommit=True)
    conn.execute("SET client_min_messages = warning")
    return conn


def one(conn, sql, params=None):
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def node_cpu_seconds(node_port):
    """CPU seconds of a node (its postmaster, the children it has reaped, and the children alive now)."""
    pid = postmaster_pid(node_port)
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    total = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    for child in open(f"/proc/{pid}/task/{pid}/children").read().split():
        try:
            cf = open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()
            total += int(cf[11]) + int(cf[12])
        except FileNotFoundError:
            pass
    return total / TICK


pids = {}


def postmaster_pid(node_port):
    if node_port not in pids:
        with connect(node_port, "postgres") as c:
            data = one(c, "SHOW data_directory")
        pids[node_port] = int(open(os.path.join(data, "postmaster.pid")).readline())
    return pids[node_port]


def session_cpu_seconds(c):
    """CPU seconds of this session's backend (the CALL, and the connections to the nodes it opens)."""
    pid = one(c, "SELECT pg_backend_pid()")
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def node_inferences(c):
    rows_ = c.execute("SELECT node, ok, node_inferences FROM clip_cluster_model_info()").fetchall()
    return {int(node.rsplit(":", 1)[1]): n for node, ok, n in rows_ if ok}


def set_up():
    for p in [port] + worker_ports:
        admin = connect(p, "postgres")
        admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DB}")
        admin.execute(f"ALTER DATABASE {DB} SET pg_clip.allowed_private_networks = '127.0.0.1/32'")
        # Every photo inferred, not answered from a backend's cache (the catalogue repeats at 2 x ROWS).
        admin.execute(f"ALTER DATABASE {DB} SET pg_clip.embedding_cache_size = 0")
        admin.close()
        conn = connect(p)
        conn.execute("CREATE EXTENSION citus")
        conn.close()
    c = connect(port)
    c.execute("SELECT citus_set_coordinator_host('localhost', %s)", (port,))
    for p in worker_ports:
        c.execute("SELECT citus_add_node('localhost', %s)", (p,))
    c.execute("CREATE EXTENSION pg_clip CASCADE")
    return c


def make_table(c, name, n, shard_count=None):
    c.execute(f"DROP TABLE IF EXISTS {name}")
    c.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, image_url text, emb vector(512), model_version text)")
    if shard_count:
        c.execute("SELECT create_distributed_table(%s, 'id', shard_count => %s)", (name, shard_count))
    # Each row a photo of the catalogue (the server cycles them), each URL distinct; the numbers the server
    # fails on purpose (i % 30 == 7: a 404, a stall or a truncated file) are skipped, so that both sides
    # measure embedding, not timeouts.
    numbers = (i for i in range(10**9) if i % 30 != 7)
    with c.cursor().copy(f"COPY {name} (id, image_url) FROM STDIN") as copy:
        for row_id, i in zip(range(1, n + 1), numbers):
            copy.write_row((row_id, f"{base}/photos/{i}.jpg"))


def backfill(c, name, n, shard_count=None):
    make_table(c, name, n, shard_count)
    nodes = [port] + worker_ports
    inf0, cpu0 = node_inferences(c), {p: node_cpu_seconds(p) for p in nodes}
    session0 = session_cpu_seconds(c)
    started = time.monotonic()
    c.execute("CALL clip_backfill(%s, url_column => 'image_url', vector_column => 'emb')", (name,))
    took = time.monotonic() - started
    session = session_cpu_seconds(c) - session0
    inf1, cpu1 = node_inferences(c), {p: node_cpu_seconds(p) for p in nodes}
    done = one(c, f"SELECT count(*) FROM {name} WHERE emb IS NOT NULL")
    return {"rows": n, "done": done, "seconds": took, "per_s": done / took, "session_cpu": session,
            "inferences": {p: inf1.get(p, 0) - inf0.get(p, 0) for p in nodes},
            "cpu": {p: cpu1[p] - cpu0[p] for p in nodes}}


def show_backfill(label, r):
    inf = r["inferences"]
    total = sum(inf.values()) or 1
    shares = ", ".join(f"{'coordinator' if p == port else 'worker ' + str(worker_ports.index(p) + 1)} "
                       f"{inf[p]} ({100 * inf[p] / total:.0f}%), {r['cpu'][p]:.1f} s CPU" for p in inf)
    print(f"  {label:<34} {r['done']:>6} of {r['rows']:<6} {r['seconds']:7.1f} s {r['per_s']:7.2f} images/s   {shares}")


def search(c, photos):
    query = "SELECT id FROM {} ORDER BY emb <=> clip_embed_bytes(%s) LIMIT 50"
    results = {}
    # The server's default cache (16 inputs per backend), as users have it: on one server the ORDER BY
    # expression is evaluated by the index scan and again by the projection, and the cache answers the second.
    # Each table starts with an empty cache (clip_unload_model), so no photo is answered from another table's
    # search; the warm-up photo is not one of the measured ones.
    c.execute("SET pg_clip.embedding_cache_size = 16")
    warm, photos = photos[0], photos[1:]
    for table in ("one_node", "sharded_4", "sharded_32"):
        c.execute("SELECT clip_unload_model()")
        c.execute(query.format(table), (warm,)).fetchall()  # warm: the model, the connections to the shards
        times, mine, theirs = [], [], []
        for data in photos:
            inf0 = node_inferences(c)
            own0 = one(c, "SELECT inferences FROM clip_model_info()")
            started = time.monotonic()
            c.execute(query.format(table), (data,)).fetchall()
            times.append((time.monotonic() - started) * 1000)
            mine.append(one(c, "SELECT inferences FROM clip_model_info()") - own0)
            inf1 = node_inferences(c)
            theirs.append(sum(inf1.get(p, 0) - inf0.get(p, 0) for p in worker_ports))
        results[table] = (statistics.median(times), statistics.mean(mine), statistics.mean(theirs))
    return results


def main():
    c = set_up()
    print(f"Citus {one(c, 'SELECT extversion FROM pg_extension WHERE extname = %s', ('citus',))}, "
          f"pg_clip {one(c, 'SELECT extversion FROM pg_extension WHERE extname = %s', ('pg_clip',))}, "
          f"model {one(c, 'SELECT model_name FROM clip_model_info()')} "
          f"(random weights: {one(c, 'SELECT random_weights FROM clip_model_info()')}), "
          f"{os.cpu_count()} cores shared by the three nodes")
    print(f"\nbackfill (CALL clip_backfill, {photo_count} photos cycled, no failing URL)")
    single = backfill(c, "one_node", rows)
    show_backfill("one node (plain table)", single)
    cluster = backfill(c, "sharded_4", rows, shard_count=4)
    show_backfill("Citus, 4 shards on 2 workers", cluster)
    double = backfill(c, "sharded_4_double", 2 * rows, shard_count=4)
    show_backfill("Citus, 4 shards, twice the rows", double)

    # The CALL's own backend on the coordinator: what the backfill costs it (its steps, the round trips to the
    # nodes, the progress and failure records). The coordinator node's total also holds its background
    # processes (Citus's maintenance daemon, the checkpointer), which grow with wall time, not with rows.
    coordinator_per_row = [r["session_cpu"] / max(r["done"], 1) for r in (cluster, double)]
    node_per_row = sum(single["cpu"].values()) / max(single["done"], 1)
    print(f"\n  the CALL's backend on the coordinator: {cluster['session_cpu']:.2f} s CPU for {rows} rows, "
          f"{double['session_cpu']:.2f} s for {2 * rows} rows ({1000 * coordinator_per_row[0]:.2f} and "
          f"{1000 * coordinator_per_row[1]:.2f} ms per row; coordinator inferences: {cluster['inferences'][port]} "
          f"and {double['inferences'][port]})")
    print(f"  the coordinator node in all (its background processes included): {cluster['cpu'][port]:.2f} s and "
          f"{double['cpu'][port]:.2f} s; the workers: {sum(cluster['cpu'][p] for p in worker_ports):.1f} s and "
          f"{sum(double['cpu'][p] for p in worker_ports):.1f} s; one node's CPU per row (download, decode, "
          f"inference, write): {1000 * node_per_row:.1f} ms")

    # Projection: a worker node of this machine's kind embeds as one node does alone (its own cores); N of them
    # N times that, until the coordinator's CPU per row takes a whole core.
    one_node_rate = single["per_s"]
    ceiling = 1 / max(coordinator_per_row[1], 1 / TICK / max(double["done"], 1))
    print(f"\n  projected backfill throughput of N worker nodes like this machine ({os.cpu_count()} cores each), "
          f"from one node's {one_node_rate:.2f} images/s and the coordinator's "
          f"{1000 * coordinator_per_row[1]:.2f} ms CPU per row (ceiling {ceiling:,.0f} images/s):")
    for n in (1, 2, 4, 8, 16, 32):
        print(f"    N = {n:>2}: {min(n * one_node_rate, ceiling):8.1f} images/s"
              f"   ({n * one_node_rate * 3600:,.0f} per hour)")

    print("\nsearch (ORDER BY emb <=> clip_embed_bytes($1) LIMIT 50, HNSW; median of "
          f"{min(photo_count, 11) - 1} photos, warm, each photo searched once per table)")
    c.execute("CREATE TABLE sharded_32 (LIKE sharded_4)")
    c.execute("SELECT create_distributed_table('sharded_32', 'id', shard_count => 32)")
    c.execute("INSERT INTO sharded_32 SELECT * FROM sharded_4")
    for table in ("one_node", "sharded_4", "sharded_32"):
        c.execute(f"CREATE INDEX ON {table} USING hnsw (emb vector_cosine_ops)")
    photos = [open(p, "rb").read() for p in sys.stdin.read().split("\n") if p][:11]
    results = search(c, photos)
    names = {"one_node": "one node (plain table)", "sharded_4": "Citus, 4 shards", "sharded_32": "Citus, 32 shards"}
    for table, (ms, mine, theirs) in results.items():
        print(f"  {names[table]:<24} {ms:7.1f} ms   inferences per search: {mine:.1f} on the coordinator, "
              f"{theirs:.1f} on the workers   ({ms / results['one_node'][0]:.2f}x one node)")


if __name__ == "__main__":
    main()
