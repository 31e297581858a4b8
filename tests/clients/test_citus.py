"""Client test of pg_clip on a Citus cluster (a coordinator and 2 workers on this machine; scripts/test_citus.sh
starts them), with the model's RANDOM WEIGHTS (meaningless vectors, real compute):
  1. set-up as a user does it: CREATE EXTENSION citus on each node, the workers added, CREATE EXTENSION pg_clip
     CASCADE on the coordinator reaches the workers; clip_cluster_model_info() shows every node's model;
  2. backfill: CALL clip_backfill on a distributed table (4 shards) embeds every row on the node that holds it
     (per-node inference counts: the coordinator's 0), the failure readable on the coordinator, progress in
     clip_backfill_progress; the vectors equal the single-server ones; a reference table works as a local one;
  3. search: the design card's query on the distributed table (4 and 32 shards) runs the model once, on the
     coordinator, and returns the ids and distances of the same query on a single-server table with the same
     rows; by words too; hnsw.ef_search reaches the shards' queries (SET LOCAL with
     citus.propagate_set_commands = local, and ALTER DATABASE ... SET);
  4. faults: a worker stopped in the middle of a backfill: the call ends with an error naming it, the other
     node's rows are done; the node back, a new CALL finishes, every row embedded exactly once; a node without
     pg_clip is named in clip_cluster_model_info().

usage: test_citus.py COORDINATOR_PORT INPUTS_DIR WORKER2_PG_CTL WORKER2_OPTIONS
"""
import os
import re
import shlex
import subprocess
import sys
import threading
import time

import psycopg

import checklist
from checklist import check

port, inputs, worker2_pg_ctl, worker2_options = sys.argv[1:5]
port = int(port)
worker_ports = [port + 1, port + 2]
base = os.environ.get("PG_CLIP_TEST_HTTP", "http://127.0.0.1:28856").rstrip("/")
DB = "pg_clip_citus"
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "camera.png", "rocket.jpg", "motorcycle_left.png",
          "brick.png", "coins.png", "ihc.png", "moon.png", "hubble_deep_field.jpg", "retina.jpg"]


def connect(node_port, db=DB):
    conn = psycopg.connect(f"host=localhost port={node_port} user=postgres dbname={db}", autocommit=True)
    conn.execute("SET client_min_messages = warning")
    conn.execute("SET citus.override_table_visibility = off")  # the tests look at the shards themselves
    return conn


def one(conn, sql, params=None):
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def node_inferences(coordinator):
    """Each node's inference count since it started, by port, as the coordinator sees it."""
    rows = coordinator.execute("SELECT node, ok, node_inferences FROM clip_cluster_model_info()").fetchall()
    return {int(node.rsplit(":", 1)[1]): n for node, ok, n in rows if ok}


def delta(after, before):
    return {p: after.get(p, 0) - before.get(p, 0) for p in sorted(set(after) | set(before))}


def set_up():
    for p in [port] + worker_ports:
        admin = connect(p, "postgres")
        admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DB}")
        # The image host of the tests is on 127.0.0.1 (set here: Citus refuses ALTER DATABASE on a worker).
        admin.execute(f"ALTER DATABASE {DB} SET pg_clip.allowed_private_networks = '127.0.0.1/32'")
        admin.close()
        conn = connect(p)
        conn.execute("CREATE EXTENSION citus")
        conn.close()
    c = connect(port)
    c.execute("SELECT citus_set_coordinator_host('localhost', %s)", (port,))
    for p in worker_ports:
        c.execute("SELECT citus_add_node('localhost', %s)", (p,))
    c.execute("CREATE EXTENSION pg_clip CASCADE")
    versions = {p: one(connect(p), "SELECT extversion FROM pg_extension WHERE extname = 'pg_clip'") for p in worker_ports}
    check("CREATE EXTENSION pg_clip CASCADE on the coordinator reaches both workers",
          all(v == one(c, "SELECT extversion FROM pg_extension WHERE extname = 'pg_clip'") for v in versions.values()),
          versions)
    info = c.execute("SELECT node, ok, error, model_name, dimensions, random_weights FROM clip_cluster_model_info()").fetchall()
    check("clip_cluster_model_info(): every node answers, with the same model", len(info) == 3 and all(r[1] for r in info)
          and len({(r[3], r[4]) for r in info}) == 1, info)
    print(f"     ({len(info)} nodes, model {info[0][3]}, random weights: {info[0][5]})")
    return c


def make_table(c, name, shard_count=None, reference=False):
    c.execute(f"DROP TABLE IF EXISTS {name}")
    c.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, image_url text, emb vector(512), model_version text)")
    if reference:
        c.execute("SELECT create_reference_table(%s)", (name,))
    elif shard_count:
        c.execute("SELECT create_distributed_table(%s, 'id', shard_count => %s)", (name, shard_count))


def fill(c, name, copies=1):
    rows = []
    for k in range(copies):
        for i, photo in enumerate(PHOTOS):
            rows.append((k * 100 + i + 1, f"{base}/img/{photo}"))
    rows.append((999, f"{base}/status/404"))
    with c.cursor() as cur:
        cur.executemany(f"INSERT INTO {name} (id, image_url) VALUES (%s, %s)", rows)
    return len(rows)


def backfill(c):
    make_table(c, "photos", shard_count=4)
    n = fill(c, "photos")
    before = node_inferences(c)
    notices = []
    c.add_notice_handler(lambda d: notices.append(d.message_primary))
    c.execute("SET client_min_messages = notice")
    started = time.monotonic()
    c.execute("CALL clip_backfill('photos', url_column => 'image_url', vector_column => 'emb')")
    took = time.monotonic() - started
    c.execute("SET client_min_messages = warning")
    used = delta(node_inferences(c), before)
    print(f"     (backfill of {n} rows on 4 shards: {took:.1f} s; inferences per node {used})")
    check("distributed backfill: every row with a photo embedded",
          one(c, "SELECT count(*) FROM photos WHERE emb IS NOT NULL") == n - 1)
    check("... the coordinator ran no inference, the workers ran one per photo",
          used.get(port) == 0 and sum(used[p] for p in worker_ports) == n - 1 and all(used[p] > 0 for p in worker_ports),
          used)
    check("... model_version written on the nodes",
          one(c, "SELECT count(DISTINCT model_version) FROM photos WHERE emb IS NOT NULL") == 1)
    failure = c.execute("SELECT relation::text, row_key, http_status, permanent FROM clip_backfill_failures "
                        "WHERE relation = 'photos'::regclass").fetchall()
    check("... the 404 recorded on the coordinator under the table's name", failure == [("photos", "999", 404, True)],
          c.execute("SELECT row_key, sqlstate, error FROM clip_backfill_failures LIMIT 3").fetchall())
    run = c.execute("SELECT state, done, failed, remaining FROM clip_backfill_progress WHERE relation = 'photos'::regclass "
                    "ORDER BY run_id DESC LIMIT 1").fetchone()
    check("... clip_backfill_progress on the coordinator: the run finished with its counts",
          run == ("finished", n - 1, 1, 0), run)
    check("... progress NOTICEs from the coordinator", any("distributed" in m for m in notices), notices)

    # The same rows on a single server (the coordinator's own local table): the same vectors.
    make_table(c, "photos_local")
    fill(c, "photos_local")
    c.execute("CALL clip_backfill('photos_local', url_column => 'image_url', vector_column => 'emb')")
    same = one(c, "SELECT count(*) FROM photos d JOIN photos_local l USING (id) WHERE d.emb = l.emb")
    check("... the vectors equal the single-server backfill's", same == n - 1, same)

    again = node_inferences(c)
    c.execute("CALL clip_backfill('photos', url_column => 'image_url', vector_column => 'emb')")
    check("a second CALL finds nothing to do (no inference anywhere)", sum(delta(node_inferences(c), again).values()) == 0)

    make_table(c, "photos_reference", reference=True)
    fill(c, "photos_reference")
    c.execute("CALL clip_backfill('photos_reference', url_column => 'image_url', vector_column => 'emb')")
    embedded = one(c, "SELECT count(*) FROM photos_reference WHERE emb IS NOT NULL")
    check("a reference table is embedded as a local one", embedded == n - 1, embedded)


def search(c):
    c.execute("CREATE INDEX ON photos USING hnsw (emb vector_cosine_ops)")
    c.execute("CREATE INDEX ON photos_local USING hnsw (emb vector_cosine_ops)")
    c.execute("DISCARD ALL")
    # Every search infers (no backend cache): one inference per query is the planner's folding, not a cache hit.
    c.execute("SET pg_clip.embedding_cache_size = 0")
    query = "SELECT id, emb <=> clip_embed_bytes(%(p)s) AS d FROM {} ORDER BY emb <=> clip_embed_bytes(%(p)s) LIMIT 5"
    for shards in (4, 32):
        if shards == 32:
            make_table(c, "photos32", shard_count=32)
            c.execute("INSERT INTO photos32 SELECT * FROM photos")
            c.execute("CREATE INDEX ON photos32 USING hnsw (emb vector_cosine_ops)")
        table = "photos" if shards == 4 else "photos32"
        equal, counts, took = True, [], []
        for photo in ("coffee.png", "rocket.jpg", "brick.png"):
            data = open(os.path.join(inputs, photo), "rb").read()
            before_nodes = node_inferences(c)
            before = one(c, "SELECT inferences + cache_hits FROM clip_model_info()")
            started = time.monotonic()
            got = c.execute(query.format(table), {"p": data}).fetchall()
            took.append((time.monotonic() - started) * 1000)
            mine = one(c, "SELECT inferences + cache_hits FROM clip_model_info()") - before
            nodes = delta(node_inferences(c), before_nodes)
            counts.append((mine, nodes))
            want = c.execute(query.format("photos_local"), {"p": data}).fetchall()
            equal = equal and [r[0] for r in got] == [r[0] for r in want] and \
                all(abs(a[1] - b[1]) < 1e-9 for a, b in zip(got, want))
        check(f"{shards} shards: photo search returns the single-server ids and distances", equal)
        check(f"... one inference per search, in the session's own backend; none on the workers",
              all(mine == 1 and all(v == 0 for p, v in nodes.items() if p != port) for mine, nodes in counts), counts)
        print(f"     ({shards} shards: {', '.join(f'{t:.0f}' for t in took)} ms per search)")
    words = "SELECT id FROM {} ORDER BY emb <=> clip_embed_text(%s) LIMIT 5"
    before_nodes = node_inferences(c)
    got = [r[0] for r in c.execute(words.format("photos"), ("a cup of coffee",)).fetchall()]
    want = [r[0] for r in c.execute(words.format("photos_local"), ("a cup of coffee",)).fetchall()]
    check("search by words: the single-server ids, no inference on the workers",
          got == want and all(v == 0 for p, v in delta(node_inferences(c), before_nodes).items() if p != port), (got, want))

    # ef_search must reach the shards' queries: with 1, each of the 4 shards returns its one nearest row.
    data = open(os.path.join(inputs, "coffee.png"), "rb").read()
    full = len(c.execute(query.format("photos").replace("LIMIT 5", "LIMIT 10"), {"p": data}).fetchall())
    with c.transaction():
        c.execute("SET LOCAL citus.propagate_set_commands = 'local'")
        c.execute("SET LOCAL hnsw.ef_search = 1")
        c.execute("SET LOCAL enable_seqscan = off")
        limited = len(c.execute(query.format("photos").replace("LIMIT 5", "LIMIT 10"), {"p": data}).fetchall())
    check("SET LOCAL hnsw.ef_search (citus.propagate_set_commands = local) reaches each shard's index scan",
          full == 10 and limited == 4, (full, limited))
    # An application role's setting: Citus propagates ALTER ROLE ... IN DATABASE ... SET to every node for a role
    # it knows (one made on the coordinator; not the bootstrap superuser), and the shards' queries run as it.
    c.execute("DROP ROLE IF EXISTS photo_search")
    c.execute("CREATE ROLE photo_search LOGIN")
    c.execute("GRANT SELECT ON photos TO photo_search")
    c.execute(f"ALTER ROLE photo_search IN DATABASE {DB} SET hnsw.ef_search = 1")
    c.execute(f"ALTER ROLE photo_search IN DATABASE {DB} SET enable_seqscan = off")
    app = psycopg.connect(f"host=localhost port={port} user=photo_search dbname={DB}", autocommit=True)
    by_role = len(app.execute(query.format("photos").replace("LIMIT 5", "LIMIT 10"), {"p": data}).fetchall())
    app.close()
    check("ALTER ROLE <app> IN DATABASE ... SET hnsw.ef_search on the coordinator reaches the shards' queries",
          by_role == 4, by_role)


def wait(condition, timeout):
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return True
        time.sleep(0.2)
    return False


def shard_rows(p, table):
    """The node's clip_auto_embed_tables rows for shards of `table`."""
    w = connect(p)
    n = one(w, "SELECT count(*) FROM clip_auto_embed_tables WHERE relation::text ~ %s", (rf"(^|\.){table}_[0-9]+$",))
    w.close()
    return n


def auto_embed(c):
    make_table(c, "photos_auto", shard_count=4)
    rows = [(i + 1, f"{base}/img/{photo}") for i, photo in enumerate(PHOTOS[:4])]
    with c.cursor() as cur:
        cur.executemany("INSERT INTO photos_auto (id, image_url) VALUES (%s, %s)", rows)
    before = node_inferences(c)
    pending = one(c, "SELECT clip_auto_embed('photos_auto', 'image_url', 'emb')")
    check("clip_auto_embed on a distributed table: accepted, the rows already there counted as pending", pending == 4, pending)
    check("... pg_clip's triggers and partial index on every shard (Citus put them there)", all(
        one(connect(p), "SELECT count(*) FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid "
                        "WHERE t.tgname LIKE 'zz_clip_auto_embed%%' AND r.relname ~ %s", (r"^photos_auto_[0-9]+$",)) == 4
        for p in worker_ports))
    check("... each node's worker serves the shards it holds (2 and 2)",
          wait(lambda: [shard_rows(p, "photos_auto") for p in worker_ports] == [2, 2], 30),
          [shard_rows(p, "photos_auto") for p in worker_ports])
    check("... the rows there before are embedded by the nodes' workers",
          wait(lambda: one(c, "SELECT count(*) FROM photos_auto WHERE emb IS NOT NULL") == 4, 60))
    with c.cursor() as cur:
        cur.executemany("INSERT INTO photos_auto (id, image_url) VALUES (%s, %s)",
                        [(i + 1, f"{base}/img/{photo}") for i, photo in enumerate(PHOTOS) if i >= 4])
    check("new rows are embedded automatically",
          wait(lambda: one(c, "SELECT count(*) FROM photos_auto WHERE emb IS NOT NULL") == len(PHOTOS), 60))
    c.execute("UPDATE photos_auto SET image_url = %s WHERE id = 1", (f"{base}/img/moon.png",))
    check("a changed URL: the old vector cleared in the statement, the new photo's embedded",
          wait(lambda: one(c, "SELECT a.emb = l.emb FROM photos_auto a JOIN photos_local l ON l.id = 10 WHERE a.id = 1"), 60))
    used = delta(node_inferences(c), before)
    check("... every inference on the workers, none on the coordinator", used.get(port) == 0 and
          sum(used[p] for p in worker_ports) == len(PHOTOS) + 1, used)
    status = c.execute("SELECT pending, failed, worker_state FROM clip_auto_embed_status "
                       "WHERE relation = 'photos_auto'::regclass").fetchone()
    check("clip_auto_embed_status on the coordinator: the whole table, each node's worker",
          status is not None and status[0] == 0 and all(f"localhost:{p} 2 shards, worker" in status[2] for p in worker_ports),
          status)
    print(f"     (status: {status})")
    # Pause on the coordinator pauses every node's shards; a row written meanwhile waits, then is embedded.
    paused = one(c, "SELECT clip_auto_embed_pause('photos_auto')")
    on_nodes = [one(connect(p), "SELECT count(*) FILTER (WHERE paused) || '/' || count(*) FROM clip_auto_embed_tables "
                                "WHERE relation::text ~ '^photos_auto_[0-9]+$'") for p in worker_ports]
    c.execute("INSERT INTO photos_auto (id, image_url) VALUES (50, %s)", (f"{base}/img/coins.png",))
    waited = not wait(lambda: one(c, "SELECT emb IS NOT NULL FROM photos_auto WHERE id = 50"), 6)
    c.execute("SELECT clip_auto_embed_pause('photos_auto', false)")
    resumed = wait(lambda: one(c, "SELECT emb IS NOT NULL FROM photos_auto WHERE id = 50"), 60)
    check("clip_auto_embed_pause on the coordinator pauses every node's shards; resumed, the row waiting is embedded",
          paused is True and on_nodes == ["2/2", "2/2"] and waited and resumed, (paused, on_nodes, waited, resumed))

    # A shard moved while its rows are pending: each embedded exactly once, by whichever node holds it when.
    shard, source = c.execute(
        "SELECT s.shardid, n.nodeport FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid) "
        "JOIN pg_dist_node n USING (groupid) WHERE s.logicalrelid = 'photos_auto'::regclass ORDER BY s.shardid LIMIT 1").fetchone()
    target = worker_ports[1] if source == worker_ports[0] else worker_ports[0]
    ids = [r[0] for r in c.execute("SELECT id FROM generate_series(100, 400) id "
                                   "WHERE get_shard_id_for_distribution_column('photos_auto', id) = %s LIMIT 6",
                                   (shard,)).fetchall()]
    before = node_inferences(c)
    with c.cursor() as cur:
        cur.executemany("INSERT INTO photos_auto (id, image_url) VALUES (%s, %s)",
                        [(k, f"{base}/delay/1500/{PHOTOS[i]}") for i, k in enumerate(ids)])
    started = time.monotonic()
    c.execute("SELECT citus_move_shard_placement(%s, 'localhost', %s, 'localhost', %s)", (shard, source, target))
    moved = time.monotonic() - started
    check(f"citus_move_shard_placement while its rows are pending ({moved:.1f} s): the rows embedded afterwards",
          wait(lambda: one(c, "SELECT count(*) FROM photos_auto WHERE id = ANY(%s) AND emb IS NOT NULL", (ids,)) == len(ids), 90))
    used = delta(node_inferences(c), before)
    check("... each exactly once (one inference per row over both nodes, none on the coordinator)",
          used.get(port) == 0 and sum(used[p] for p in worker_ports) == len(ids), used)
    same = one(c, "SELECT count(*) FROM photos_auto a JOIN photos_local l ON l.image_url = replace(a.image_url, '/delay/1500/', '/img/') "
                  "WHERE a.id = ANY(%s) AND a.emb = l.emb", (ids,))
    check("... with the right vectors", same == len(ids), same)
    check("... the target node's worker serves the moved shard", wait(lambda: shard_rows(target, "photos_auto") == 3, 30),
          [shard_rows(p, "photos_auto") for p in worker_ports])
    c.execute("INSERT INTO photos_auto (id, image_url) VALUES (%s, %s)", (ids[-1] + 1000, f"{base}/img/rocket.jpg"))
    check("... and a row written there afterwards is embedded (by the shard's new node)",
          wait(lambda: one(c, "SELECT emb IS NOT NULL FROM photos_auto WHERE id = %s", (ids[-1] + 1000,)), 60))

    check("clip_auto_embed_stop on the coordinator: true", one(c, "SELECT clip_auto_embed_stop('photos_auto')") is True)
    check("... no trigger left on any shard, and no node serves a shard of it", wait(lambda: all(
        one(connect(p), "SELECT count(*) FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid "
                        "WHERE t.tgname LIKE 'zz_clip_auto_embed%%' AND r.relname ~ %s", (r"^photos_auto_[0-9]+$",)) == 0
        and shard_rows(p, "photos_auto") == 0 for p in worker_ports), 30),
        [shard_rows(p, "photos_auto") for p in worker_ports])


def pg_ctl(action):
    command = shlex.split(worker2_pg_ctl) + ["-w", "-m", "immediate"] + (["-o", worker2_options] if action == "start" else []) + [action]
    if action == "start":
        command.remove("-m"), command.remove("immediate")
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def faults(c):
    make_table(c, "photos_faults", shard_count=4)
    n = fill(c, "photos_faults", copies=3)
    before = node_inferences(c)
    error = {}

    def run():
        conn = connect(port)
        try:
            conn.execute("CALL clip_backfill('photos_faults', url_column => 'image_url', vector_column => 'emb', "
                         "batch_size => 4)")
        except psycopg.Error as e:
            error["e"] = e
        conn.close()

    thread = threading.Thread(target=run)
    thread.start()
    # Stop worker 2 once it has embedded some of its rows.
    deadline = time.monotonic() + 120
    w2 = connect(worker_ports[1])
    while time.monotonic() < deadline and (one(w2, "SELECT clip_node_inferences()") or 0) - before[worker_ports[1]] < 3:
        time.sleep(0.1)
    w2.close()
    pg_ctl("stop")
    thread.join(300)
    e = error.get("e")
    check("a worker stopped mid-backfill: the CALL ends with an error naming it (SQLSTATE 08006)",
          e is not None and e.sqlstate == "08006" and f"localhost:{worker_ports[1]}" in str(e), repr(e))
    info = {r[0]: (r[1], r[2]) for r in c.execute("SELECT node, ok, error FROM clip_cluster_model_info()").fetchall()}
    down = info.get(f"localhost:{worker_ports[1]}")
    check("... clip_cluster_model_info() names the node that does not answer", down is not None and not down[0], info)
    pg_ctl("start")
    c.execute("CALL clip_backfill('photos_faults', url_column => 'image_url', vector_column => 'emb')")
    used = delta(node_inferences(c), before)
    check("... the node back, a new CALL finishes: every row with a photo embedded",
          one(c, "SELECT count(*) FROM photos_faults WHERE emb IS NOT NULL") == n - 1)
    # Exactly once: the nodes' own run records count the rows each batch wrote and committed (a batch cut off
    # by the stop wrote nothing); over both runs they add up to the rows, and the vectors are a single server's.
    written = 0
    for p in worker_ports:
        w = connect(p)
        written += one(w, "SELECT coalesce(sum(done), 0) FROM clip_backfill_runs WHERE relation::text LIKE '%photos_faults%'")
        w.close()
    same = one(c, "SELECT count(*) FROM photos_faults f JOIN photos_local l ON l.id = f.id % 100 WHERE f.emb = l.emb")
    check("... each row written exactly once (the nodes' batches wrote n - 1 rows in all), the coordinator ran no "
          "inference, the vectors equal a single server's", written == n - 1 and used.get(port) == 0 and same == n - 1,
          (written, used, same))
    print(f"     (inferences per node over the interrupted run and its resumption: {used}; rows written {written})")


def owners(c):
    """An application owner that is no superuser, with clip_grant_backfill run once on the coordinator: its
    distributed tables embedded by CALL and automatically on the nodes; another owner sees and changes none of
    its bookkeeping; a role without the grant is refused."""
    for role in ("shop_owner", "other_owner", "no_grant"):
        c.execute(f"DROP ROLE IF EXISTS {role}")
        c.execute(f"CREATE ROLE {role} LOGIN")  # Citus makes the role on every node
    c.execute("CREATE SCHEMA shop AUTHORIZATION shop_owner")
    c.execute("CREATE SCHEMA other AUTHORIZATION other_owner")
    c.execute("SELECT clip_grant_backfill('shop_owner')")
    c.execute("SELECT clip_grant_backfill('other_owner')")
    granted = all(one(connect(p), "SELECT has_function_privilege('shop_owner', 'clip_embed_urls(text[], integer, text[])', "
                                  "'EXECUTE') AND has_function_privilege('shop_owner', 'clip_auto_embed_discover()', 'EXECUTE')")
                  for p in worker_ports)
    check("clip_grant_backfill on the coordinator grants on every node", granted)

    owner = psycopg.connect(f"host=localhost port={port} user=shop_owner dbname={DB}", autocommit=True)
    owner.execute("SET client_min_messages = warning")
    owner.execute("CREATE TABLE shop.items (id int PRIMARY KEY, image_url text, emb vector(512), model_version text)")
    owner.execute("SELECT create_distributed_table('shop.items', 'id', shard_count => 4)")
    with owner.cursor() as cur:
        cur.executemany("INSERT INTO shop.items (id, image_url) VALUES (%s, %s)",
                        [(i + 1, f"{base}/img/{p}") for i, p in enumerate(PHOTOS[:6])] + [(99, f"{base}/status/404")])
    before = node_inferences(c)
    owner.execute("CALL clip_backfill('shop.items', url_column => 'image_url', vector_column => 'emb')")
    used = delta(node_inferences(c), before)
    check("an owner without superuser: CALL clip_backfill of its distributed table, on the nodes",
          one(owner, "SELECT count(*) FROM shop.items WHERE emb IS NOT NULL") == 6 and used.get(port) == 0, used)
    check("... its progress and its failure readable by it on the coordinator",
          one(owner, "SELECT state FROM clip_backfill_progress WHERE relation = 'shop.items'::regclass "
                     "ORDER BY run_id DESC LIMIT 1") == "finished"
          and one(owner, "SELECT count(*) FROM clip_backfill_failures WHERE relation = 'shop.items'::regclass") == 1)
    owner.execute("CREATE TABLE shop.live (id int PRIMARY KEY, image_url text, emb vector(512))")
    owner.execute("SELECT create_distributed_table('shop.live', 'id', shard_count => 4)")
    owner.execute("SELECT clip_auto_embed('shop.live', 'image_url', 'emb')")
    with owner.cursor() as cur:
        cur.executemany("INSERT INTO shop.live (id, image_url) VALUES (%s, %s)",
                        [(i + 1, f"{base}/img/{p}") for i, p in enumerate(PHOTOS[:4])])
    check("... its automatic embedding served by the nodes' workers",
          wait(lambda: one(owner, "SELECT count(*) FROM shop.live WHERE emb IS NOT NULL") == 4, 60))
    status = owner.execute("SELECT pending, worker_state FROM clip_auto_embed_status WHERE relation = 'shop.live'::regclass").fetchone()
    shards = sum(int(n) for n in re.findall(r"localhost:[0-9]+ ([0-9]+) shards?, worker", status[1] if status else ""))
    check("... and its status, from every node (its 4 shards)", status is not None and status[0] == 0 and shards == 4, status)

    other = psycopg.connect(f"host=localhost port={port} user=other_owner dbname={DB}", autocommit=True)
    seen = (one(other, "SELECT count(*) FROM clip_backfill_failures"), one(other, "SELECT count(*) FROM clip_backfill_progress"),
            one(other, "SELECT count(*) FROM clip_auto_embed_status"))
    check("another owner sees none of it (failures, progress, status)", seen == (0, 0, 0), seen)
    refused = []
    for statement in ("SELECT clip_auto_embed_stop('shop.live')", "SELECT clip_auto_embed_pause('shop.live')",
                      "CALL clip_backfill('shop.items', url_column => 'image_url', vector_column => 'emb', retry_failed => true)"):
        try:
            other.execute(statement)
            refused.append(None)
        except psycopg.Error as e:
            refused.append(e.sqlstate)
    check("... and may not stop, pause or backfill it (42501)", refused == ["42501"] * 3, refused)
    other.close()
    nobody = psycopg.connect(f"host=localhost port={port} user=no_grant dbname={DB}", autocommit=True)
    try:
        nobody.execute("CALL clip_backfill('shop.items', url_column => 'image_url', vector_column => 'emb')")
        state = None
    except psycopg.Error as e:
        state = e.sqlstate
    nobody.close()
    check("a role without the grant is refused (42501)", state == "42501", state)
    owner.execute("SELECT clip_auto_embed_stop('shop.live')")
    owner.close()


def node_restart(c):
    """Automatic embedding across a node's crash: rows pending on worker 2's shards when it stops (immediate
    mode, as a crash), each written exactly once after it starts again (a column counts the writes)."""
    make_table(c, "photos_restart", shard_count=4)
    c.execute("ALTER TABLE photos_restart ADD COLUMN writes int NOT NULL DEFAULT 0")
    c.execute("""CREATE FUNCTION count_writes() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN NEW.writes := OLD.writes + 1; RETURN NEW; END $$""")
    c.execute("SET citus.enable_unsafe_triggers = on")  # the trigger changes its own row only
    c.execute("CREATE TRIGGER count_writes BEFORE UPDATE OF emb ON photos_restart FOR EACH ROW "
              "WHEN (OLD.emb IS NULL AND NEW.emb IS NOT NULL) EXECUTE FUNCTION count_writes()")
    c.execute("RESET citus.enable_unsafe_triggers")
    c.execute("SELECT clip_auto_embed('photos_restart', 'image_url', 'emb')")
    wait(lambda: [shard_rows(p, "photos_restart") for p in worker_ports] == [2, 2], 30)
    ids = [r[0] for r in c.execute(
        "SELECT id FROM generate_series(1, 400) id JOIN pg_dist_shard s ON s.shardid = get_shard_id_for_distribution_column("
        "'photos_restart', id) JOIN pg_dist_placement p USING (shardid) JOIN pg_dist_node n USING (groupid) "
        "WHERE n.nodeport = %s ORDER BY id LIMIT 12", (worker_ports[1],)).fetchall()]
    with c.cursor() as cur:
        cur.executemany("INSERT INTO photos_restart (id, image_url) VALUES (%s, %s)",
                        [(k, f"{base}/delay/700/{PHOTOS[i % len(PHOTOS)]}") for i, k in enumerate(ids)])
    w2 = connect(worker_ports[1])
    started = one(w2, "SELECT clip_node_inferences()") or 0
    wait(lambda: (one(w2, "SELECT clip_node_inferences()") or 0) > started, 60)
    inferred = one(w2, "SELECT clip_node_inferences()") - started
    w2.close()
    pg_ctl("stop")
    pg_ctl("start")
    check(f"a node crashed with rows pending on its shards ({inferred} of {len(ids)} inferred before): after its "
          "restart its worker embeds the rest", wait(lambda: one(
              c, "SELECT count(*) FROM photos_restart WHERE emb IS NOT NULL") == len(ids), 120))
    writes = c.execute("SELECT writes, count(*) FROM photos_restart GROUP BY 1 ORDER BY 1").fetchall()
    check("... each row written exactly once", writes == [(1, len(ids))], writes)
    same = one(c, "SELECT count(*) FROM photos_restart a JOIN photos_local l "
                  "ON l.image_url = regexp_replace(a.image_url, '/delay/700/', '/img/') WHERE a.emb = l.emb")
    check("... with the right vectors", same == len(ids), same)
    c.execute("SELECT clip_auto_embed_stop('photos_restart')")


def main():
    c = set_up()
    backfill(c)
    search(c)
    auto_embed(c)
    owners(c)
    faults(c)
    node_restart(c)
    checklist.finish("citus")


main()
