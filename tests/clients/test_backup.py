"""Client test of backups and failover with pg_clip in real use, with the tools a PostgreSQL DBA uses:

  1. A primary (pg_clip preloaded, automatic embedding on) where every tower has been prepared (the fp32 and int8
     image towers, CLIP's text tower, the multilingual tower and its int8 graph) under a model version of 240
     characters (the longest names pg_clip writes), and one tower once more into a prepared-model directory inside
     the data directory but outside the default (`pg_clip_prepared`, as 0.2.0's default was): `pg_basebackup -Ft`
     (tar, whose names stop at 99 bytes) succeeds, and the sizes with and without a cache in the backup are
     printed; the default cache (pgsql_tmp_pg_clip) is not in the backup at all.
     Each tower is prepared once, not once per version and place: the five slots take about 4 GB, and CI machines
     have less disk than a workstation. The clusters are removed when the test passes (their logs stay).
  2. pgBackRest (Debian's pgbackrest; skipped with a message on a major the installed version does not support):
     stanza, full backup while rows are pending, restore into a new data directory; the restored cluster answers
     the photo search and its worker embeds the pending rows, each exactly once.
  3. A streaming standby (pg_basebackup -R) promoted (pg_ctl promote) while rows are pending: its worker starts by
     itself and embeds them, each exactly once; the old primary, brought back as a standby with pg_rewind, runs
     no worker (nor the launcher).

Run by scripts/test.sh with tests/http/server.py serving at $PG_CLIP_TEST_HTTP.

usage: test_backup.py PG_BIN AS_POSTGRES WORKDIR FIRST_PORT
  AS_POSTGRES  the prefix that runs a command as the server's OS user ("" when not root)
  WORKDIR      a directory for the clusters, backups and repository (emptied first)
  FIRST_PORT   the primary's port; the others use the next three
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time

import psycopg

import checklist
from checklist import check

pg_bin, as_postgres, workdir, first_port = sys.argv[1], shlex.split(sys.argv[2]), sys.argv[3], int(sys.argv[4])
base = os.environ.get("PG_CLIP_TEST_HTTP", "http://127.0.0.1:28836").rstrip("/")
PRIMARY, STANDBY, RESTORED = (os.path.join(workdir, n) for n in ("primary", "standby", "restored"))
PORTS = {PRIMARY: first_port, STANDBY: first_port + 1, RESTORED: first_port + 2}
DB = "shop"
LONG_VERSION = "catalogue-ViT-B-32-finetuned-" + "x" * 211  # 240 characters, as a user's model_version may be
timings = {}


def run(*command, **kw):
    return subprocess.run(list(command), check=True, capture_output=True, text=True, **kw)


def pg(program, *args, **kw):
    return run(*as_postgres, f"{pg_bin}/{program}", *args, **kw)


def server_options(data):
    return (f"-p {PORTS[data]} -k {workdir} -c listen_addresses='' -c shared_preload_libraries=pg_clip "
            f"-c wal_level=replica -c max_wal_senders=5 -c wal_log_hints=on -c pg_clip.auto_embed_naptime=600s")


def start(data, extra=""):
    pg("pg_ctl", "-D", data, "-l", f"{data}.log", "-w", "-o", server_options(data) + extra, "start")


def stop(data, mode="fast"):
    subprocess.run([*as_postgres, f"{pg_bin}/pg_ctl", "-D", data, "-m", mode, "-w", "stop"], capture_output=True)


def connect(data, db=DB):
    conn = psycopg.connect(f"host={workdir} port={PORTS[data]} user=postgres dbname={db}", autocommit=True)
    conn.execute("SET client_min_messages = error")
    return conn


def one(conn, query, args=None):
    row = conn.execute(query, args).fetchone()
    return row[0] if row else None


def wait(condition, timeout):
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if condition():
                return time.monotonic() - started
        except psycopg.Error:
            pass
        time.sleep(0.2)
    return None


def size_mb(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total / 2**20


def workers(conn):
    return one(conn, "SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('pg_clip auto-embed', 'pg_clip launcher')")


def photo(i):
    return f"{base}/img/chelsea.png?backup-{i}"


def exactly_once(conn, ids):
    counts = dict(conn.execute("SELECT id, count(*) FROM public.embed_writes WHERE id = ANY(%s) GROUP BY id",
                               (list(ids),)).fetchall())
    return [counts.get(i, 0) for i in ids]


def add_pending(conn, ids):
    """Rows with a URL and no vector, written with the triggers off: nobody wakes the worker (whose naptime is 10
    minutes here), so they stay pending until a worker that starts looks for them."""
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        for i in ids:
            conn.execute("INSERT INTO products (id, image_url) VALUES (%s, %s)", (i, photo(i)))


def long_version_model(model_dir):
    """The installed model under a 240-character model version: links to its files, an edited manifest."""
    target = os.path.join(workdir, "long-version-model")
    os.makedirs(target)
    for name in os.listdir(model_dir):
        if name != "manifest.json":
            os.symlink(os.path.join(model_dir, name), os.path.join(target, name))
    manifest = json.load(open(os.path.join(model_dir, "manifest.json")))
    manifest["model_version"] = LONG_VERSION
    if manifest.get("text_multilingual"):
        manifest["text_multilingual"]["model_version"] = LONG_VERSION + "-multilingual"
    json.dump(manifest, open(os.path.join(target, "manifest.json"), "w"))
    os.chmod(workdir, 0o755)
    return target


def slots_in(cache):
    return [n for n in os.listdir(cache) if not n.endswith(".lock") and not n.endswith(".json")] \
        if os.path.isdir(cache) else []


def prepare_every_tower(conn, inputs):
    """Loads every tower the model has, in this session's settings: each prepares its slot (or maps it)."""
    image = open(os.path.join(inputs, "chelsea.png"), "rb").read()
    conn.execute("SELECT clip_unload_model()")
    conn.execute("SELECT clip_embed_bytes(%s)", (image,))
    conn.execute("SET pg_clip.image_precision = int8")
    conn.execute("SELECT clip_embed_bytes(%s)", (image,))
    conn.execute("RESET pg_clip.image_precision")
    conn.execute("SELECT clip_embed_text('a red backpack')")
    conn.execute("SET pg_clip.text_model = multilingual")
    conn.execute("SELECT clip_embed_text('красный рюкзак')")
    conn.execute("SET pg_clip.text_precision = int8")
    conn.execute("SELECT clip_embed_text('красный рюкзак')")
    conn.execute("RESET pg_clip.text_precision")
    conn.execute("RESET pg_clip.text_model")


def primary_with_everything_prepared(inputs):
    pg("initdb", "-D", PRIMARY, "-U", "postgres", "--auth=trust", "--no-sync")
    start(PRIMARY)
    admin = connect(PRIMARY, "postgres")
    admin.execute(f"CREATE DATABASE {DB}")
    admin.execute(f"ALTER DATABASE {DB} SET pg_clip.allowed_private_networks = '127.0.0.1/32'")
    conn = connect(PRIMARY)
    conn.execute("CREATE EXTENSION pg_clip CASCADE")
    conn.execute("""CREATE TABLE products (id int PRIMARY KEY, image_url text, image_embedding vector(512),
                                           model_version text)""")
    conn.execute("CREATE TABLE embed_writes (id int, at timestamptz DEFAULT clock_timestamp())")
    conn.execute("""CREATE FUNCTION count_write() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN INSERT INTO public.embed_writes (id) VALUES (NEW.id); RETURN NULL; END $$""")
    conn.execute("""CREATE TRIGGER count_write AFTER UPDATE OF image_embedding ON products FOR EACH ROW
                    WHEN (NEW.image_embedding IS NOT NULL) EXECUTE FUNCTION count_write()""")
    conn.execute("CREATE INDEX ON products USING hnsw (image_embedding vector_cosine_ops)")
    with conn.transaction():
        for i in range(1, 21):
            conn.execute("INSERT INTO products (id, image_url) VALUES (%s, %s)", (i, photo(i)))
    conn.execute("SELECT clip_auto_embed('products', 'image_url', 'image_embedding')")
    took = wait(lambda: one(conn, "SELECT count(*) FROM products WHERE image_embedding IS NULL") == 0, 120)
    check("the primary's worker embedded the catalogue", took is not None)

    model_dir = one(conn, "SELECT model_path FROM clip_model_info()")
    before = set(slots_in(os.path.join(PRIMARY, "pgsql_tmp_pg_clip")))
    # Every tower under a 240-character model version: the longest names pg_clip writes, in the default location.
    conn.execute("SELECT set_config('pg_clip.model_path', %s, false)", (long_version_model(model_dir),))
    prepare_every_tower(conn, inputs)
    new = set(slots_in(os.path.join(PRIMARY, "pgsql_tmp_pg_clip"))) - before
    check("every tower prepared in the default location under the long model version (5 slots)", len(new) == 5,
          sorted(new))
    # Inside the data directory but outside the default: what 0.2.0 did by default, and what a user may set.
    # One tower (the int8 image tower, the smallest) is enough to show that such a cache is backed up.
    conn.execute("SELECT set_config('pg_clip.prepared_model_dir', %s, false)", (os.path.join(PRIMARY, "pg_clip_prepared"),))
    conn.execute("SELECT clip_unload_model()")
    conn.execute("SET pg_clip.image_precision = int8")
    conn.execute("SELECT clip_embed_bytes(%s)", (open(os.path.join(inputs, "chelsea.png"), "rb").read(),))
    conn.execute("RESET pg_clip.image_precision")
    conn.execute("RESET pg_clip.model_path")
    conn.execute("RESET pg_clip.prepared_model_dir")
    check("one tower prepared in pg_clip_prepared", len(slots_in(os.path.join(PRIMARY, "pg_clip_prepared"))) == 1,
          slots_in(os.path.join(PRIMARY, "pg_clip_prepared")))
    longest = max(len(os.path.relpath(os.path.join(root, name), PRIMARY))
                  for root, dirs, files in os.walk(PRIMARY) for name in dirs + files)
    check(f"the longest path under the data directory is {longest} bytes (tar's limit: 99)", longest <= 99)
    conn.close()
    admin.close()


def base_backups():
    cache = size_mb(os.path.join(PRIMARY, "pgsql_tmp_pg_clip"))
    inside = size_mb(os.path.join(PRIMARY, "pg_clip_prepared"))
    data = size_mb(PRIMARY)
    with_cache = os.path.join(workdir, "backup-tar-with-cache")
    started = time.monotonic()
    result = subprocess.run([*as_postgres, f"{pg_bin}/pg_basebackup", "-h", workdir, "-p", str(PORTS[PRIMARY]),
                             "-U", "postgres", "-D", with_cache, "-Ft", "-X", "stream", "-c", "fast"],
                            capture_output=True, text=True)
    check("pg_basebackup -Ft (tar) succeeds after every tower was prepared, long model version included",
          result.returncode == 0, result.stderr.strip())
    if result.returncode != 0:
        return
    timings["pg_basebackup -Ft, with a cache inside the data directory (s)"] = time.monotonic() - started
    names = tarfile.open(os.path.join(with_cache, "base.tar")).getnames()
    check("the default cache (pgsql_tmp_pg_clip) is not in the backup",
          not any(n.lstrip("./").startswith("pgsql_tmp") for n in names))
    check("a cache the user put elsewhere in the data directory is (as any file there)",
          any(n.lstrip("./").startswith("pg_clip_prepared/") for n in names))
    backup_with = size_mb(with_cache)
    # Without that second cache: what a base backup is with 0.3.0's default.
    shutil.rmtree(os.path.join(PRIMARY, "pg_clip_prepared"))
    without = os.path.join(workdir, "backup-tar-default")
    pg("pg_basebackup", "-h", workdir, "-p", str(PORTS[PRIMARY]), "-U", "postgres", "-D", without, "-Ft",
       "-X", "stream", "-c", "fast")
    backup_default = size_mb(without)
    print(f"     data directory {data:.0f} MB, of which the default cache (pgsql_tmp_pg_clip) {cache:.0f} MB and a "
          f"cache inside it elsewhere {inside:.0f} MB")
    print(f"     base backup (tar, WAL streamed) with a cache where 0.2.0 kept it: {backup_with:.0f} MB; "
          f"with 0.3.0's default: {backup_default:.0f} MB "
          f"(data directory without any cache: {data - cache - inside:.0f} MB)")
    check("with the default cache, the base backup is no larger than the data directory without it (+ 64 MB of WAL)",
          backup_default <= data - cache - inside + 64, (backup_default, data - cache - inside))
    shutil.rmtree(with_cache)
    shutil.rmtree(without)


def pgbackrest_supports(major):
    """Debian bookworm's pgbackrest (2.45) knows PostgreSQL up to 16."""
    try:
        out = run("pgbackrest", "version").stdout
    except (FileNotFoundError, subprocess.CalledProcessError):
        return None, "pgbackrest is not installed"
    version = tuple(int(x) for x in out.split()[-1].split(".")[:2])
    needed = {15: (2, 39), 16: (2, 47), 17: (2, 53), 18: (2, 56)}.get(major, (99, 0))
    if version < needed:
        return None, f"pgBackRest {out.split()[-1]} does not support PostgreSQL {major} (needs {needed[0]}.{needed[1]})"
    return out.split()[-1], None


def pgbackrest(major):
    version, why = pgbackrest_supports(major)
    if version is None:
        print(f"     skipped pgBackRest: {why}")
        return
    repo = os.path.join(workdir, "pgbackrest")
    os.makedirs(repo)
    config = os.path.join(repo, "pgbackrest.conf")
    with open(config, "w") as f:
        f.write(f"[global]\nrepo1-path={repo}/repo\nlog-path={repo}/log\nlock-path={repo}/lock\n"
                f"spool-path={repo}/spool\nrepo1-retention-full=2\nstart-fast=y\nlog-level-console=warn\n\n"
                f"[pgclip]\npg1-path={PRIMARY}\npg1-socket-path={workdir}\npg1-port={PORTS[PRIMARY]}\npg1-user=postgres\n")
    if as_postgres:
        run("chown", "-R", "postgres", repo)
    bin_ = ["pgbackrest", f"--config={config}", "--stanza=pgclip"]
    admin = connect(PRIMARY, "postgres")
    admin.execute("ALTER SYSTEM SET archive_mode = on")
    admin.execute(f"ALTER SYSTEM SET archive_command = 'pgbackrest --config={config} --stanza=pgclip archive-push %p'")
    admin.close()
    stop(PRIMARY)
    start(PRIMARY)
    run(*as_postgres, *bin_, "stanza-create")
    run(*as_postgres, *bin_, "check")
    conn = connect(PRIMARY)
    pending = list(range(101, 111))
    add_pending(conn, pending)
    started = time.monotonic()
    run(*as_postgres, *bin_, "--type=full", "backup")
    timings["pgBackRest full backup (s)"] = time.monotonic() - started
    info = json.loads(run(*as_postgres, *bin_, "--output=json", "info").stdout)
    backup = info[0]["backup"][-1]
    print(f"     pgBackRest {version}: full backup of {backup['info']['size'] / 2**20:.0f} MB "
          f"(repository {backup['info']['repository']['size'] / 2**20:.0f} MB compressed); "
          f"data directory {size_mb(PRIMARY):.0f} MB, of which the cache {size_mb(os.path.join(PRIMARY, 'pgsql_tmp_pg_clip')):.0f} MB")
    check("pgBackRest's backup does not contain the cache", backup["info"]["size"] / 2**20 < size_mb(PRIMARY)
          - size_mb(os.path.join(PRIMARY, "pgsql_tmp_pg_clip")) + 64)
    expected = conn.execute("SELECT id FROM products ORDER BY image_embedding <=> "
                            "(SELECT image_embedding FROM products WHERE id = 3) LIMIT 5").fetchall()
    conn.close()
    os.makedirs(RESTORED)
    if as_postgres:
        run("chown", "postgres", RESTORED)
    os.chmod(RESTORED, 0o700)
    started = time.monotonic()
    run(*as_postgres, *bin_, f"--pg1-path={RESTORED}", "restore")
    timings["pgBackRest restore (s)"] = time.monotonic() - started
    check("the restored data directory has no cache (each node makes its own)",
          not os.path.exists(os.path.join(RESTORED, "pgsql_tmp_pg_clip")))
    start(RESTORED, " -c archive_mode=off")
    check("the restored cluster finishes recovery", wait(lambda: one(connect(RESTORED), "SELECT NOT pg_is_in_recovery()"), 120)
          is not None)
    restored = connect(RESTORED)
    got = restored.execute("SELECT id FROM products ORDER BY image_embedding <=> "
                           "(SELECT image_embedding FROM products WHERE id = 3) LIMIT 5").fetchall()
    check("the restored cluster answers the photo search as the primary did", got == expected, (got, expected))
    took = wait(lambda: one(restored, "SELECT count(*) FROM products WHERE id = ANY(%s) AND image_embedding IS NULL",
                            (pending,)) == 0, 180)
    timings["restored: pending rows embedded after start (s)"] = took
    check("its worker embeds the rows that were pending in the backup", took is not None)
    check("... each exactly once", set(exactly_once(restored, pending)) == {1}, exactly_once(restored, pending))
    restored.close()
    stop(RESTORED)
    admin = connect(PRIMARY, "postgres")
    admin.execute("ALTER SYSTEM RESET archive_mode")
    admin.execute("ALTER SYSTEM RESET archive_command")
    admin.close()
    stop(PRIMARY)
    start(PRIMARY)


def failover():
    pg("pg_basebackup", "-h", workdir, "-p", str(PORTS[PRIMARY]), "-U", "postgres", "-D", STANDBY, "-R",
       "-X", "stream", "-c", "fast")
    check("the new standby has no cache copied from the primary",
          not os.path.exists(os.path.join(STANDBY, "pgsql_tmp_pg_clip")))
    start(STANDBY)
    standby = connect(STANDBY)
    check("the standby runs no auto-embed worker and no launcher", workers(standby) == 0, workers(standby))
    check("the standby answers the photo search (its own prepared model, made on first use)", one(
        standby, "SELECT count(*) FROM (SELECT id FROM products ORDER BY image_embedding <=> "
                 "clip_embed_text('a cat') LIMIT 5) s") == 5)
    primary = connect(PRIMARY)
    pending = list(range(201, 221))
    add_pending(primary, pending)
    lsn = one(primary, "SELECT pg_current_wal_lsn()::text")
    wait(lambda: one(standby, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)), 30)
    primary.close()
    standby.close()
    stop(PRIMARY)  # the old primary goes away; the standby takes over with the rows still pending
    started = time.monotonic()
    pg("pg_ctl", "-D", STANDBY, "-w", "promote")
    promoted = connect(STANDBY)
    took = wait(lambda: one(promoted, "SELECT count(*) FROM products WHERE id = ANY(%s) AND image_embedding IS NULL",
                            (pending,)) == 0, 180)
    timings["promotion to pending rows embedded (s)"] = time.monotonic() - started if took is not None else None
    check("the promoted server's worker starts by itself and embeds the pending rows", took is not None)
    check("... each exactly once", set(exactly_once(promoted, pending)) == {1}, exactly_once(promoted, pending))
    # The old primary comes back as a standby of the new one, rewound to where the timelines split.
    started = time.monotonic()
    result = subprocess.run([*as_postgres, f"{pg_bin}/pg_rewind", "-D", PRIMARY, "--source-server",
                             f"host={workdir} port={PORTS[STANDBY]} user=postgres dbname=postgres"],
                            capture_output=True, text=True)
    check("pg_rewind brings the old primary back", result.returncode == 0, result.stderr.strip()[-300:])
    timings["pg_rewind (s)"] = time.monotonic() - started
    with open(os.path.join(PRIMARY, "postgresql.auto.conf"), "a") as f:
        f.write(f"primary_conninfo = 'host={workdir} port={PORTS[STANDBY]} user=postgres'\n")
    open(os.path.join(PRIMARY, "standby.signal"), "w").close()
    start(PRIMARY)
    old = connect(PRIMARY)
    check("the old primary now recovers as a standby", one(old, "SELECT pg_is_in_recovery()") is True)
    promoted.execute("INSERT INTO products (id, image_url) VALUES (300, %s)", (photo(300),))
    embedded = wait(lambda: one(old, "SELECT image_embedding IS NOT NULL FROM products WHERE id = 300"), 120)
    check("... follows the new primary, whose worker embeds new rows", embedded is not None)
    check("... and runs no auto-embed worker and no launcher", workers(old) == 0, workers(old))
    check("every row of the catalogue was embedded exactly once across the failover", one(
        promoted, "SELECT count(*) FROM (SELECT id FROM embed_writes GROUP BY id HAVING count(*) <> 1) s") == 0)
    old.close()
    promoted.close()


def main():
    inputs = os.environ["PG_CLIP_TEST_INPUTS"]
    for data in PORTS:
        stop(data, "immediate")
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    os.chmod(workdir, 0o755)
    if as_postgres:
        run("chown", "postgres", workdir)
    major = int(run(f"{pg_bin}/pg_config", "--version").stdout.split()[1].split(".")[0])
    try:
        primary_with_everything_prepared(inputs)
        base_backups()
        pgbackrest(major)
        failover()
    finally:
        for data in PORTS:
            stop(data)
            # The prepared models are gigabytes; the tests after this one need the disk.
            for cache in ("pgsql_tmp_pg_clip", "pg_clip_prepared"):
                shutil.rmtree(os.path.join(data, cache), ignore_errors=True)
    for name, value in timings.items():
        print(f"     {name}: {'-' if value is None else f'{value:.2f}'}")
    if checklist.failed == 0:
        for name in os.listdir(workdir):
            if not name.endswith(".log"):
                shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
    checklist.finish("backup")


if __name__ == "__main__":
    main()
