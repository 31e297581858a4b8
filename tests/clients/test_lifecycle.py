"""Client test of pg_clip's life in a real installation, on the major the cluster runs:
  1. upgrades: CREATE EXTENSION pg_clip VERSION '0.1.0' (and again '0.2.0'), data in clip_backfill_failures and clip_backfill_runs,
     ALTER EXTENSION pg_clip UPDATE; the data stays, and the upgraded schema equals a fresh CREATE EXTENSION's
     (pg_dump --schema-only --binary-upgrade, which also prints the extension's own objects, compared with the
     OIDs taken out);
  2. a dump restored with pg_restore into a new database: the vectors, the ivfflat index, the failure records,
     the automatic-embedding setting and the database's pg_clip settings come back, searches answer the same,
     and the worker serves the restored database;
  3. a streaming standby made with pg_basebackup -R: it answers the photo search with its own model load
     (the prepared weights shared there too), the same rows as the primary, and runs no auto-embed worker.
Run by scripts/test.sh with tests/http/server.py serving at $PG_CLIP_TEST_HTTP.

usage: test_lifecycle.py CONNINFO PG_BIN AS_POSTGRES REPLICA_DIR REPLICA_PORT REPLICA_OPTIONS INPUTS_DIR
  AS_POSTGRES      command prefix that runs a server-side program as the postgres user ("" if already it)
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import psycopg

import checklist
from checklist import check

conninfo, pg_bin, as_postgres, replica_dir, replica_port, replica_options, inputs = sys.argv[1:8]
as_postgres = shlex.split(as_postgres)
base = os.environ.get("PG_CLIP_TEST_HTTP", "http://127.0.0.1:28836").rstrip("/")
params = dict(item.split("=", 1) for item in conninfo.split())
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "camera.png", "rocket.jpg", "motorcycle_left.png",
          "brick.png", "grass.png", "gravel.png", "moon.png", "color.png", "retina.jpg"]


def connect(db, host=None, port=None):
    conn = psycopg.connect(f"host={host or params['host']} port={port or params['port']} user={params['user']} dbname={db}",
                           autocommit=True)
    conn.execute("SET client_min_messages = error")
    conn.execute("SET pg_clip.allowed_private_networks = '127.0.0.1/32'")
    return conn


def one(conn, query, args=None):
    row = conn.execute(query, args).fetchone()
    return row[0] if row else None


def run(*command, **kw):
    return subprocess.run(list(command), check=True, capture_output=True, text=True, **kw)


def pg(program, *args):
    return run(*as_postgres, f"{pg_bin}/{program}", *args)


def recreate(admin, db):
    admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {db}")
    # The auto-embed worker fetches with the database's settings: the test image host is on the loopback.
    admin.execute(f"ALTER DATABASE {db} SET pg_clip.allowed_private_networks = '127.0.0.1/32'")


def catalogue(conn, table="products"):
    """A small catalogue: photos embedded from their bytes, an ivfflat index."""
    conn.execute(f"""CREATE TABLE {table} (id int PRIMARY KEY, image_url text, image_embedding vector(512),
                                           model_version text)""")
    for i, name in enumerate(PHOTOS, 1):
        path = os.path.join(inputs, name)
        if os.path.exists(path):
            conn.execute(f"INSERT INTO {table} VALUES (%s, %s, clip_embed_bytes(pg_read_binary_file(%s)), 'bytes')",
                         (i, f"{base}/img/{name}", path))
    conn.execute(f"CREATE INDEX ON {table} USING ivfflat (image_embedding vector_cosine_ops) WITH (lists = 2)")
    conn.execute(f"ANALYZE {table}")


def search(conn, table="products"):
    """The design's query, for the coffee photo: (id, distance) of the 5 nearest."""
    photo = open(os.path.join(inputs, "coffee.png"), "rb").read()
    conn.execute("SET ivfflat.probes = 2")
    rows = conn.execute(f"SELECT id, image_embedding <=> clip_embed_bytes(%s) FROM {table} "
                        f"ORDER BY image_embedding <=> clip_embed_bytes(%s) LIMIT 5", (photo, photo)).fetchall()
    return [(i, round(d, 5)) for i, d in rows]


def schema_dump(db):
    """pg_dump --schema-only --binary-upgrade: with --binary-upgrade, pg_dump prints every object of the extension
    too (a plain dump has only CREATE EXTENSION). OIDs, which differ between two databases, are taken out."""
    text = pg("pg_dump", "--schema-only", "--binary-upgrade", "-h", params["host"], "-p", params["port"],
              "-U", params["user"], db).stdout
    lines = []
    for line in text.splitlines():
        # (setval: a sequence's position is data, e.g. the backfill run the upgraded database made.)
        if "binary_upgrade_set_next" in line or line.startswith("-- Dumped") or line.startswith("\\restrict") \
                or line.startswith("\\unrestrict") or line.startswith("SELECT pg_catalog.setval("):
            continue
        # OIDs and transaction ids differ between any two databases; the rest must not.
        line = re.sub(r"'\{[0-9,]+\}'", "'{<oids>}'", line)
        line = re.sub(r"relfrozenxid = '\d+', relminmxid = '\d+'", "relfrozenxid = '<xid>', relminmxid = '<mxid>'", line)
        line = re.sub(r"WHERE oid = '\d+'", "WHERE oid = '<oid>'", line)
        lines.append(line)
    return lines


def upgrade(admin, previous):
    versions = [r[0] for r in admin.execute(
        "SELECT version FROM pg_available_extension_versions WHERE name = 'pg_clip' ORDER BY version").fetchall()]
    default = one(admin, "SELECT default_version FROM pg_available_extensions WHERE name = 'pg_clip'")
    check(f"the earlier release {previous} is installable beside {default}", previous in versions and default != previous,
          versions)
    recreate(admin, "lc_upgrade")
    conn = connect("lc_upgrade")
    conn.execute(f"CREATE EXTENSION pg_clip VERSION '{previous}' CASCADE")
    conn.execute("CREATE TABLE shop (id int PRIMARY KEY, image_url text, image_embedding vector(512), model_version text)")
    conn.execute("INSERT INTO shop VALUES (1, %s), (2, %s), (3, %s)",
                 (f"{base}/img/coffee.png", f"{base}/status/404", f"{base}/img/chelsea.png"))
    conn.execute("CALL clip_backfill('shop', url_column => 'image_url', vector_column => 'image_embedding')")
    failures = conn.execute("SELECT relation::text, row_key, sqlstate, http_status, permanent, attempts, error "
                            "FROM clip_backfill_failures ORDER BY 1, 2").fetchall()
    runs = conn.execute("SELECT run_id, relation::text, state, total, done, failed FROM clip_backfill_runs ORDER BY 1").fetchall()
    vectors = conn.execute("SELECT id, image_embedding::text FROM shop ORDER BY id").fetchall()
    check(f"at {previous}: a backfill fills clip_backfill_failures and clip_backfill_runs", len(failures) == 1 and len(runs) == 1,
          (failures, runs))
    started = time.monotonic()
    conn.execute("ALTER EXTENSION pg_clip UPDATE")
    print(f"     (ALTER EXTENSION pg_clip UPDATE took {time.monotonic() - started:.2f} s)")
    check(f"ALTER EXTENSION pg_clip UPDATE from {previous} reaches {default}",
          one(conn, "SELECT extversion FROM pg_extension WHERE extname = 'pg_clip'") == default)
    check("... with the failure records kept", conn.execute(
        "SELECT relation::text, row_key, sqlstate, http_status, permanent, attempts, error FROM clip_backfill_failures "
        "ORDER BY 1, 2").fetchall() == failures)
    check("... the run history kept", conn.execute(
        "SELECT run_id, relation::text, state, total, done, failed FROM clip_backfill_runs ORDER BY 1").fetchall() == runs)
    check("... and the vectors untouched", conn.execute("SELECT id, image_embedding::text FROM shop ORDER BY id").fetchall() == vectors)

    recreate(admin, "lc_fresh")
    fresh = connect("lc_fresh")
    fresh.execute("CREATE EXTENSION pg_clip CASCADE")
    fresh.execute("CREATE TABLE shop (id int PRIMARY KEY, image_url text, image_embedding vector(512), model_version text)")
    upgraded, installed = schema_dump("lc_upgrade"), schema_dump("lc_fresh")
    differences = [line for line in __import__("difflib").unified_diff(installed, upgraded, "fresh", "upgraded", lineterm="", n=1)]
    check("the upgraded schema equals a fresh CREATE EXTENSION's (pg_dump --schema-only --binary-upgrade)",
          not differences and len(upgraded) > 100, "\n" + "\n".join(differences[:60]))

    # The upgraded extension works: the new procedure, and automatic embedding.
    conn.execute("INSERT INTO shop VALUES (4, %s)", (f"{base}/img/astronaut.png",))
    conn.execute("CALL clip_backfill('shop', url_column => 'image_url', vector_column => 'image_embedding')")
    check("after the upgrade, CALL clip_backfill embeds a new row",
          one(conn, "SELECT image_embedding IS NOT NULL FROM shop WHERE id = 4"))
    conn.execute("SELECT clip_auto_embed('shop', 'image_url', 'image_embedding')")
    conn.execute("INSERT INTO shop VALUES (5, %s)", (f"{base}/img/camera.png",))
    check("... and automatic embedding works", wait(lambda: one(conn, "SELECT image_embedding IS NOT NULL FROM shop WHERE id = 5"), 60))
    conn.close()
    fresh.close()
    for db in ("lc_upgrade", "lc_fresh"):
        admin.execute(f"DROP DATABASE {db} WITH (FORCE)")


def wait(condition, timeout):
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return True
        time.sleep(0.1)
    return False


def dump_restore(admin, workdir):
    db = "lc_dump"
    recreate(admin, db)
    admin.execute(f"ALTER DATABASE {db} SET pg_clip.exif_orientation = off")
    conn = connect(db)
    conn.execute("CREATE EXTENSION pg_clip CASCADE")
    catalogue(conn)
    conn.execute("INSERT INTO products (id, image_url) VALUES (100, %s)", (f"{base}/status/404",))
    conn.execute("CALL clip_backfill('products', url_column => 'image_url', vector_column => 'image_embedding')")
    conn.execute("SELECT clip_auto_embed('products', 'image_url', 'image_embedding')")
    before = {
        "vectors": conn.execute("SELECT id, image_embedding::text FROM products ORDER BY id").fetchall(),
        "search": search(conn),
        "failures": conn.execute("SELECT row_key, sqlstate, http_status, permanent FROM clip_backfill_failures").fetchall(),
        "auto": conn.execute("SELECT relation::text, url_column, vector_column, key_column FROM clip_auto_embed_tables").fetchall(),
        "settings": one(conn, "SELECT setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                              "WHERE d.datname = current_database() AND s.setrole = 0"),
    }
    conn.close()
    archive = os.path.join(workdir, "lc_dump.dump")
    # --create: the archive carries the database and its settings (ALTER DATABASE ... SET).
    pg("pg_dump", "-Fc", "--create", "-h", params["host"], "-p", params["port"], "-U", params["user"], "-f", archive, db)
    admin.execute(f"DROP DATABASE {db} WITH (FORCE)")
    started = time.monotonic()
    pg("pg_restore", "--create", "--exit-on-error", "-h", params["host"], "-p", params["port"], "-U", params["user"],
       "-d", "postgres", archive)
    print(f"     (pg_restore took {time.monotonic() - started:.2f} s)")
    conn = connect(db)
    check("restored: the vectors", conn.execute("SELECT id, image_embedding::text FROM products ORDER BY id").fetchall()
          == before["vectors"])
    check("... the ivfflat index", one(conn, "SELECT count(*) FROM pg_indexes WHERE tablename = 'products' "
                                             "AND indexdef LIKE '%%ivfflat%%'") == 1)
    check("... the failure records", conn.execute(
        "SELECT row_key, sqlstate, http_status, permanent FROM clip_backfill_failures").fetchall() == before["failures"])
    check("... the automatic-embedding setting and its triggers", conn.execute(
        "SELECT relation::text, url_column, vector_column, key_column FROM clip_auto_embed_tables").fetchall() == before["auto"]
          and one(conn, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'products'::regclass AND tgname LIKE 'zz_clip%%'") == 2)
    check("... the database's pg_clip settings", one(
        conn, "SELECT setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
              "WHERE d.datname = current_database() AND s.setrole = 0") == before["settings"], before["settings"])
    check("... and the search answers the same", search(conn) == before["search"], (search(conn), before["search"]))
    conn.execute("INSERT INTO products (id, image_url) VALUES (200, %s)", (f"{base}/img/small.png",))
    check("the restored database's worker embeds a new row",
          wait(lambda: one(conn, "SELECT image_embedding IS NOT NULL FROM products WHERE id = 200"), 60))
    conn.close()
    admin.execute(f"DROP DATABASE {db} WITH (FORCE)")


def replica(admin):
    db = "lc_replica"
    recreate(admin, db)
    conn = connect(db)
    conn.execute("CREATE EXTENSION pg_clip CASCADE")
    catalogue(conn)
    primary = search(conn)
    shutil.rmtree(replica_dir, ignore_errors=True)
    os.makedirs(os.path.dirname(replica_dir), exist_ok=True)
    started = time.monotonic()
    pg("pg_basebackup", "-h", params["host"], "-p", params["port"], "-U", params["user"], "-D", replica_dir, "-R",
       "-X", "stream", "-c", "fast")
    print(f"     (pg_basebackup took {time.monotonic() - started:.1f} s)")
    pg("pg_ctl", "-D", replica_dir, "-l", replica_dir + ".log", "-w", "-o", replica_options, "start")
    try:
        standby = connect(db, host=replica_options.split("-k ")[1].split()[0], port=replica_port)
        check("the standby is in recovery", one(standby, "SELECT pg_is_in_recovery()") is True)
        conn.execute("INSERT INTO products (id, image_url, image_embedding) SELECT 99, 'x', image_embedding FROM products WHERE id = 1")
        check("... and streams from the primary", wait(lambda: one(standby, "SELECT count(*) FROM products WHERE id = 99") == 1, 30))
        conn.execute("DELETE FROM products WHERE id = 99")
        wait(lambda: one(standby, "SELECT count(*) FROM products WHERE id = 99") == 0, 30)
        answer = search(standby)
        info = standby.execute("SELECT load_mode, loaded FROM clip_model_info()").fetchone()
        check("the standby answers the photo search with the primary's rows and distances", answer == primary, (answer, primary))
        check(f"... with its own model load, weights shared (load_mode {info[0]})", info[1] and info[0] in ("shared", "prepared"), info)
        check("no auto-embed launcher or worker runs on the standby",
              one(standby, "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'pg_clip%%'") == 0)
        try:
            standby.execute("SELECT clip_auto_embed('products', 'image_url', 'image_embedding')")
            check("clip_auto_embed is refused on the standby", False)
        except psycopg.Error as e:
            check("clip_auto_embed is refused on the standby (read-only transaction)", e.sqlstate == "25006", e.sqlstate)
        standby.close()
    finally:
        pg("pg_ctl", "-D", replica_dir, "-m", "fast", "-w", "stop")
        shutil.rmtree(replica_dir, ignore_errors=True)
    conn.close()
    admin.execute(f"DROP DATABASE {db} WITH (FORCE)")


def main():
    admin = psycopg.connect(f"{conninfo} dbname=postgres", autocommit=True)
    workdir = os.path.dirname(replica_dir)
    for previous in ("0.1.0", "0.2.0"):
        upgrade(admin, previous)
    dump_restore(admin, workdir)
    replica(admin)
    checklist.finish("lifecycle")


if __name__ == "__main__":
    main()
