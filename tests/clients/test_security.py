"""Client test of pg_clip's privilege boundaries, played by an attacker who holds only what an application owner
gets from clip_grant_backfill (or less), on a real cluster that preloads pg_clip, with the auto-embed worker
(which connects as the bootstrap superuser) doing its work.

Each attack plants code that, wherever it runs, records who ran it and tries `ALTER ROLE ... SUPERUSER` for
the attacker (mallory.evil). The verdicts: the code ran as its owner or not at all; nobody became superuser;
no table or record of another role was touched. The attacks, one per class of code a user controls:
  * a domain's CHECK on the key column (the worker cast queued keys to it as the superuser, in 0.2.0);
  * an operator on the search path, set by the writer of a row (the URL trigger deleted the old failure record
    as the bootstrap superuser with a statement parsed under the writer's search_path, in 0.2.0), and operators
    and functions on a database's search_path, set by the database's owner (which the worker's session takes);
  * a cast from the key's type to text; a trigger, and a deferred constraint trigger (which would run at
    COMMIT, after the switch back); a generated column and a default; an index expression; a row-level
    security policy (FORCE ROW LEVEL SECURITY); and a superuser's CALL clip_backfill on the attacker's table.
Then a second owner is denied every function and every row of the first owner's bookkeeping, a role without
the grant sees nothing, and the two smaller defects and DROP DATABASE with a worker connected.

Run by scripts/test.sh after the other client tests, with tests/http/server.py serving at $PG_CLIP_TEST_HTTP.

usage: test_security.py CONNINFO      (no dbname: the test makes its own databases)
"""
import os
import sys
import time

import psycopg

import checklist
from checklist import check

conninfo = sys.argv[1]
base = os.environ.get("PG_CLIP_TEST_HTTP", "http://127.0.0.1:28836").rstrip("/")
DB, DB_OWNED = "pg_clip_security", "pg_clip_security_mallory"
GOOD = f"{base}/img/chelsea.png"
NOT_FOUND = f"{base}/status/404"
ROLES = ("mallory", "eve", "writer", "nobody")


def connect(db=DB, user="postgres", autocommit=True):
    conn = psycopg.connect(f"{conninfo} dbname={db} user={user}", autocommit=autocommit)
    conn.execute("SET client_min_messages = error")
    return conn


def one(conn, query, params=None):
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def wait_until(what, condition, timeout):
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if condition():
                return time.monotonic() - started
        except psycopg.OperationalError:
            pass
        time.sleep(0.1)
    print(f"     (gave up waiting for {what} after {timeout} s)")
    return None


def sqlstate_of(conn, query, params=None):
    """Runs query; its SQLSTATE if it fails, else 'ok'."""
    try:
        conn.execute(query, params)
        return "ok"
    except psycopg.Error as e:
        return e.sqlstate


def superusers(admin):
    return [r[0] for r in admin.execute(
        "SELECT rolname FROM pg_roles WHERE rolsuper AND rolname = ANY(%s)", (list(ROLES),)).fetchall()]


# The attacker's payload: records who runs it and whether that role is a superuser, and tries to make
# mallory a superuser. As the superuser it would succeed; as mallory it fails (and is recorded as failed).
EVIL = """
CREATE TABLE mallory.evidence (attack text, ran_as name, ran_as_superuser boolean, escalated boolean,
                               session_of name DEFAULT session_user, process text,
                               at timestamptz DEFAULT clock_timestamp());
GRANT INSERT, SELECT ON mallory.evidence TO PUBLIC;
CREATE FUNCTION mallory.evil(attack text) RETURNS boolean LANGUAGE plpgsql AS $f$
DECLARE escalated boolean := false;
BEGIN
    BEGIN
        EXECUTE 'ALTER ROLE mallory SUPERUSER';
        escalated := true;
    EXCEPTION WHEN OTHERS THEN
        escalated := false;
    END;
    INSERT INTO mallory.evidence (attack, ran_as, ran_as_superuser, escalated, process)
    VALUES (attack, current_user, (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), escalated,
            (SELECT backend_type FROM pg_catalog.pg_stat_activity WHERE pid = pg_catalog.pg_backend_pid()));
    RETURN true;
END $f$;
GRANT EXECUTE ON FUNCTION mallory.evil(text) TO PUBLIC;
"""


def evidence(conn, attack):
    """What ran in sessions other than mallory's own (the worker's, a superuser's, a writer's)."""
    return conn.execute("SELECT ran_as, ran_as_superuser, escalated, session_of, process FROM mallory.evidence "
                        "WHERE attack = %s AND session_of <> 'mallory'", (attack,)).fetchall()


def verdict(conn, attack, must_run=True):
    """The attack's code, where another session ran it, ran as mallory (the table's owner) and escalated nothing;
    with must_run=False it may also not have run at all."""
    rows = evidence(conn, attack)
    as_owner = all(r[:3] == ("mallory", False, False) for r in rows)
    label = "ran as the table's owner" if must_run else "ran as the owner or not at all"
    check(f"{attack}: {label}, nobody became superuser", as_owner and (rows or not must_run),
          f"evidence {rows}")


def setup(admin):
    admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    admin.execute(f"DROP DATABASE IF EXISTS {DB_OWNED} WITH (FORCE)")
    for role in ROLES:
        admin.execute(f"DROP ROLE IF EXISTS {role}")
        admin.execute(f"CREATE ROLE {role} LOGIN")
    admin.execute(f"CREATE DATABASE {DB}")
    # The image host is on 127.0.0.1: the database's fetch policy lets every session (and the worker) reach it.
    admin.execute(f"ALTER DATABASE {DB} SET pg_clip.allowed_private_networks = '127.0.0.1/32'")
    with connect() as conn:
        conn.execute("CREATE EXTENSION pg_clip CASCADE")
        conn.execute("SELECT clip_grant_backfill('mallory'), clip_grant_backfill('eve')")
        conn.execute("CREATE SCHEMA mallory AUTHORIZATION mallory")
        conn.execute("CREATE SCHEMA eve AUTHORIZATION eve")
        conn.execute("CREATE SCHEMA writer AUTHORIZATION writer")
        conn.execute("GRANT USAGE ON SCHEMA mallory TO PUBLIC")
    with connect(user="mallory") as conn:
        conn.execute(EVIL)


def table(conn, name, key_type="int", extra="", key_values=(1, 2), before=()):
    """A table of mallory's with rows whose photos exist, embedded automatically once `before` has run."""
    conn.execute(f"""CREATE TABLE mallory.{name} (id {key_type} PRIMARY KEY, url text, v vector(512),
                                                   model_version text {extra})""")
    for i, k in enumerate(key_values):
        conn.execute(f"INSERT INTO mallory.{name} (id, url) VALUES (%s, %s)", (k, f"{GOOD}?{name}-{i}"))
    for statement in before:
        conn.execute(statement)
    conn.execute(f"SELECT clip_auto_embed('mallory.{name}', 'url', 'v')")


def embedded(conn, name):
    return one(conn, f"SELECT count(*) FROM mallory.{name} WHERE v IS NOT NULL")


def attacks_through_the_worker(admin):
    mallory = connect(user="mallory")
    # 1. A domain on the key column whose CHECK runs mallory's code (0.2.0: run by the worker as superuser).
    mallory.execute("CREATE DOMAIN mallory.sku AS int CHECK (mallory.evil('domain CHECK on the key'))")
    table(mallory, "by_domain", key_type="mallory.sku")
    # 2. A cast from the key's type to text (an enum of mallory's: the worker reads keys as text).
    mallory.execute("CREATE TYPE mallory.code AS ENUM ('a', 'b')")
    mallory.execute("""CREATE FUNCTION mallory.code_text(c mallory.code) RETURNS text LANGUAGE plpgsql AS
                       $f$ BEGIN PERFORM mallory.evil('cast of the key to text'); RETURN format('%s', c); END $f$""")
    mallory.execute("CREATE CAST (mallory.code AS text) WITH FUNCTION mallory.code_text(mallory.code)")
    table(mallory, "by_cast", key_type="mallory.code", key_values=("a", "b"))
    # 3. A trigger of the table (runs when the worker writes the vector).
    mallory.execute("""CREATE FUNCTION mallory.on_write() RETURNS trigger LANGUAGE plpgsql AS
                       $f$ BEGIN PERFORM mallory.evil('trigger'); RETURN NEW; END $f$""")
    table(mallory, "by_trigger", before=[
        "CREATE TRIGGER t BEFORE UPDATE ON mallory.by_trigger FOR EACH ROW EXECUTE FUNCTION mallory.on_write()"])
    # 4. A deferred constraint trigger: it would fire at COMMIT, after the worker switched back to itself.
    mallory.execute("""CREATE FUNCTION mallory.at_commit() RETURNS trigger LANGUAGE plpgsql AS
                       $f$ BEGIN PERFORM mallory.evil('deferred constraint trigger'); RETURN NULL; END $f$""")
    table(mallory, "by_deferred", before=[
        """CREATE CONSTRAINT TRIGGER d AFTER UPDATE ON mallory.by_deferred DEFERRABLE INITIALLY DEFERRED
           FOR EACH ROW EXECUTE FUNCTION mallory.at_commit()"""])
    # 5. A generated column (evaluated when the row is written) and a default (never, on UPDATE).
    mallory.execute("""CREATE FUNCTION mallory.evil_text(t text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS
                       $f$ BEGIN PERFORM mallory.evil('generated column'); RETURN t; END $f$""")
    mallory.execute("""CREATE FUNCTION mallory.evil_default() RETURNS text LANGUAGE plpgsql AS
                       $f$ BEGIN PERFORM mallory.evil('default'); RETURN 'x'; END $f$""")
    table(mallory, "by_generated", extra=", g text GENERATED ALWAYS AS (mallory.evil_text(model_version)) STORED, "
                                         "d text DEFAULT mallory.evil_default()")
    # 6. An index expression over the vector (evaluated when the worker writes it).
    mallory.execute("""CREATE FUNCTION mallory.evil_index(v vector) RETURNS int LANGUAGE plpgsql IMMUTABLE AS
                       $f$ BEGIN PERFORM mallory.evil('index expression'); RETURN 1; END $f$""")
    table(mallory, "by_index", before=["CREATE INDEX ON mallory.by_index (mallory.evil_index(v))"])
    # 7. A row-level security policy the table's owner is subject to too.
    table(mallory, "by_policy", before=[
        "ALTER TABLE mallory.by_policy ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE mallory.by_policy FORCE ROW LEVEL SECURITY",
        "CREATE POLICY p ON mallory.by_policy USING (mallory.evil('row-level security policy'))"])

    # 8. Not an attack: a trigger that names a table without its schema, which mallory's own sessions find
    # ("$user" is on their search_path), fails under the restricted one, and the table's last_error says why.
    mallory.execute("CREATE TABLE mallory.audit (id int)")
    mallory.execute("""CREATE FUNCTION mallory.audit_write() RETURNS trigger LANGUAGE plpgsql AS
                       $f$ BEGIN INSERT INTO audit VALUES (NEW.id); RETURN NEW; END $f$""")
    table(mallory, "by_unqualified", before=[
        "CREATE TRIGGER a BEFORE UPDATE ON mallory.by_unqualified FOR EACH ROW EXECUTE FUNCTION mallory.audit_write()"])

    done = {name: wait_until(f"{name} embedded", lambda name=name: embedded(admin, name) == 2, 90)
            for name in ("by_domain", "by_cast", "by_trigger", "by_generated", "by_index", "by_policy")}
    for name, took in done.items():
        check(f"the worker embedded mallory.{name} (2 rows)", took is not None)
    verdict(admin, "domain CHECK on the key")
    verdict(admin, "cast of the key to text")
    verdict(admin, "trigger")
    verdict(admin, "generated column")
    verdict(admin, "default", must_run=False)
    verdict(admin, "index expression")
    verdict(admin, "row-level security policy")
    # The deferred trigger is refused inside the security-restricted operation: never run, the table waits.
    refused = wait_until("the deferred trigger's refusal", lambda: "deferred trigger" in (one(
        admin, "SELECT last_error FROM clip_auto_embed_status WHERE relation = 'mallory.by_deferred'::regclass") or ""), 30)
    check("deferred constraint trigger: refused in the security-restricted operation (last_error says so)",
          refused is not None)
    verdict(admin, "deferred constraint trigger", must_run=False)
    hinted = wait_until("the unqualified trigger's error", lambda: "search_path" in (one(
        admin, "SELECT last_error FROM clip_auto_embed_status WHERE relation = 'mallory.by_unqualified'::regclass")
        or ""), 30)
    check("a trigger naming a table without its schema: last_error gives 42P01 and says why (search_path)",
          hinted is not None and "42P01" in one(admin, "SELECT last_error FROM clip_auto_embed_status "
                                                       "WHERE relation = 'mallory.by_unqualified'::regclass"))
    check("... and its rows were not written", embedded(admin, "by_deferred") == 0)
    mallory.close()


def attack_through_the_writers_search_path(admin):
    """0.2.0's second escalation: a writer's operator, found through the writer's search_path by the URL trigger's
    statement run as the bootstrap superuser."""
    mallory = connect(user="mallory")
    mallory.execute("""CREATE TABLE mallory.shop (id int PRIMARY KEY, url text, v vector(512))""")
    mallory.execute("INSERT INTO mallory.shop VALUES (1, %s)", (NOT_FOUND + "?shop",))
    mallory.execute("SELECT clip_auto_embed('mallory.shop', 'url', 'v')")
    mallory.execute("GRANT SELECT, UPDATE ON mallory.shop TO writer")
    recorded = wait_until("the 404 recorded", lambda: one(
        admin, "SELECT count(*) FROM clip_backfill_failures WHERE relation = 'mallory.shop'::regclass") == 1, 60)
    check("the 404 is recorded as a permanent failure", recorded is not None)
    writer = connect(user="writer")
    writer.execute("""CREATE FUNCTION writer.hijack(a regclass, b regclass) RETURNS boolean LANGUAGE plpgsql AS
                      $f$ BEGIN PERFORM mallory.evil('operator on the writer''s search_path');
                                RETURN a::oid = b::oid; END $f$""")
    writer.execute("CREATE OPERATOR writer.= (LEFTARG = regclass, RIGHTARG = regclass, FUNCTION = writer.hijack)")
    writer.execute("""CREATE FUNCTION writer.hijack_text(a text, b text) RETURNS boolean LANGUAGE plpgsql AS
                      $f$ BEGIN PERFORM mallory.evil('operator on the writer''s search_path');
                                RETURN a OPERATOR(pg_catalog.=) b; END $f$""")
    writer.execute("CREATE OPERATOR writer.= (LEFTARG = text, RIGHTARG = text, FUNCTION = writer.hijack_text)")
    writer.execute("SET search_path = writer, public, pg_catalog")
    writer.execute("UPDATE mallory.shop SET url = %s WHERE id = 1", (GOOD + "?shop",))
    took = wait_until("the new photo embedded", lambda: one(admin, "SELECT v IS NOT NULL FROM mallory.shop"), 60)
    check("a writer's new URL is embedded although its old URL failed permanently", took is not None)
    verdict(admin, "operator on the writer's search_path", must_run=False)
    check("the old URL's failure record is forgotten", one(
        admin, "SELECT count(*) FROM clip_backfill_failures WHERE relation = 'mallory.shop'::regclass") == 0)
    writer.close()
    mallory.close()


def attack_through_the_databases_search_path(admin):
    """A database's owner chooses the search_path every session of it starts with, the worker's included."""
    admin.execute(f"CREATE DATABASE {DB_OWNED} OWNER mallory")
    admin.execute(f"ALTER DATABASE {DB_OWNED} SET pg_clip.allowed_private_networks = '127.0.0.1/32'")
    with connect(DB_OWNED) as conn:
        conn.execute("CREATE EXTENSION pg_clip CASCADE")
        conn.execute("SELECT clip_grant_backfill('mallory')")
    mallory = connect(DB_OWNED, user="mallory")
    mallory.execute("CREATE SCHEMA mallory")
    mallory.execute(EVIL)
    # Operators and functions that win over pg_catalog's on a search_path that puts mallory's schema first.
    for left, right in (("regclass", "regclass"), ("text", "text"), ("oid", "oid"), ("bigint", "bigint"),
                        ("integer", "integer")):
        fn = f"mallory.eq_{left}_{right}"
        mallory.execute(f"""CREATE FUNCTION {fn}(a {left}, b {right}) RETURNS boolean LANGUAGE plpgsql AS
                            $f$ BEGIN PERFORM mallory.evil('database search_path'); RETURN a::text = b::text; END $f$""")
        mallory.execute(f"CREATE OPERATOR mallory.= (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = {fn})")
    for name in ("now", "clock_timestamp"):
        mallory.execute(f"""CREATE FUNCTION mallory.{name}() RETURNS timestamptz LANGUAGE plpgsql AS
                            $f$ BEGIN PERFORM mallory.evil('database search_path'); RETURN pg_catalog.now(); END $f$""")
    mallory.execute(f"ALTER DATABASE {DB_OWNED} SET search_path = mallory, public, pg_catalog")
    mallory.close()
    mallory = connect(DB_OWNED, user="mallory")
    table(mallory, "products")
    took = wait_until("embedded", lambda: embedded(mallory, "products") == 2, 90)
    check("the worker embedded a table in a database whose owner set its search_path", took is not None)
    verdict(mallory, "database search_path", must_run=False)
    with connect(DB_OWNED) as conn:
        check("... and the worker ran none of the owner's operators or functions", one(
            conn, "SELECT count(*) FROM mallory.evidence WHERE process = 'pg_clip auto-embed'") == 0)
    mallory.close()


def superuser_backfill(admin):
    """A superuser's CALL clip_backfill on mallory's table reads and writes it as mallory."""
    mallory = connect(user="mallory")
    mallory.execute("CREATE DOMAIN mallory.sku2 AS int CHECK (mallory.evil('superuser CALL clip_backfill'))")
    mallory.execute("CREATE TABLE mallory.catalogue (id mallory.sku2 PRIMARY KEY, url text, v vector(512))")
    mallory.execute("INSERT INTO mallory.catalogue VALUES (1, %s), (2, %s)", (GOOD + "?c1", NOT_FOUND + "?c2"))
    admin_db = connect()
    admin_db.execute("CALL clip_backfill('mallory.catalogue', 'url', 'v')")
    check("a superuser's CALL clip_backfill embedded mallory's table",
          one(admin_db, "SELECT count(*) FROM mallory.catalogue WHERE v IS NOT NULL") == 1)
    verdict(admin_db, "superuser CALL clip_backfill")
    admin_db.close()
    mallory.close()


def second_owner(admin):
    """eve holds the same grant as mallory: none of mallory's tables or records is hers to see or change."""
    eve = connect(user="eve")
    for query in ("SELECT clip_auto_embed_pause('mallory.shop')",
                  "SELECT clip_auto_embed_pause('mallory.shop', false)",
                  "SELECT clip_auto_embed_retry('mallory.shop')",
                  "SELECT clip_auto_embed_requeue('mallory.by_trigger')",
                  "SELECT clip_auto_embed_stop('mallory.shop')",
                  "SELECT clip_auto_embed_sweep('mallory.shop')",
                  "SELECT clip_auto_embed_drop_triggers('mallory.shop')",
                  "SELECT clip_auto_embed('mallory.shop', 'url', 'v')",
                  "CALL clip_backfill('mallory.catalogue', 'url', 'v')",
                  "SELECT * FROM clip_backfill_apply('mallory.shop', 'url', 'v', 'id', ARRAY['1'], ARRAY['x'])",
                  "SELECT * FROM clip_backfill_row_states('mallory.shop', 'url', 'v', 'id', ARRAY['1'], NULL)",
                  "SELECT * FROM clip_backfill_pending_rows('mallory.shop', 'url', 'v', 'id', NULL, 10)",
                  "SELECT clip_backfill_forget_stale('mallory.shop', 'url', 'v', 'id')"):
        state = sqlstate_of(eve, query)
        check(f"eve: {query.split('(')[0].replace('SELECT ', '').replace('* FROM ', '')} on mallory's table "
              f"refused (42501)", state == "42501", state)
    for relation in ("clip_backfill_failures", "clip_backfill_runs", "clip_auto_embed_tables", "clip_auto_embed_queue",
                     "clip_auto_embed_log", "clip_backfill_progress", "clip_auto_embed_status"):
        seen = one(eve, f"SELECT count(*) FROM {relation}")
        total = one(admin, f"SELECT count(*) FROM {relation}")
        check(f"eve sees no row of {relation} (a superuser sees {total})", seen == 0 and total > 0, seen)
    for query in ("UPDATE clip_auto_embed_tables SET paused = true",
                  "DELETE FROM clip_backfill_failures",
                  "DELETE FROM clip_auto_embed_queue",
                  "UPDATE clip_backfill_runs SET state = 'finished'"):
        changed = eve.execute(query).rowcount
        check(f"eve: {query} changes nothing of mallory's", changed == 0, changed)
    for query in ("INSERT INTO clip_auto_embed_queue (relation, row_key) VALUES ('mallory.shop', '1')",
                  "INSERT INTO clip_backfill_failures (relation, row_key, sqlstate, error, permanent) "
                  "VALUES ('mallory.shop', '9', '38000', 'x', true)",
                  "INSERT INTO clip_auto_embed_tables (relation, url_column, vector_column, key_column) "
                  "VALUES ('mallory.catalogue', 'url', 'v', 'id')"):
        state = sqlstate_of(eve, query)
        check(f"eve may not write a record of mallory's table ({query.split('(')[0].strip()})", state == "42501", state)
    # Her own table works as before.
    eve.execute("CREATE TABLE eve.mine (id int PRIMARY KEY, url text, v vector(512))")
    eve.execute("INSERT INTO eve.mine VALUES (1, %s)", (NOT_FOUND + "?eve",))
    eve.execute("CALL clip_backfill('eve.mine', 'url', 'v')")
    check("eve backfills her own table and sees her own failure record",
          one(eve, "SELECT count(*) FROM clip_backfill_failures") == 1)
    check("... and pauses her own auto-embedding", sqlstate_of(eve, "SELECT clip_auto_embed('eve.mine', 'url', 'v'), "
                                                                     "clip_auto_embed_pause('eve.mine')") == "ok")
    eve.close()
    nobody = connect(user="nobody")
    for relation in ("clip_backfill_failures", "clip_auto_embed_queue", "clip_auto_embed_tables",
                     "clip_backfill_progress", "clip_auto_embed_status"):
        state = sqlstate_of(nobody, f"SELECT count(*) FROM {relation}")
        check(f"a role without the grant may not read {relation} (42501)", state == "42501", state)
    nobody.close()


def smaller_defects(admin):
    mallory = connect(user="mallory")
    # An UPDATE that writes URL and vector together used to keep the old permanent failure, so that a later
    # cleared vector was never embedded again.
    mallory.execute("CREATE TABLE mallory.both (id int PRIMARY KEY, url text, v vector(512))")
    mallory.execute("INSERT INTO mallory.both VALUES (1, %s), (2, %s)", (NOT_FOUND + "?both1", NOT_FOUND + "?both2"))
    mallory.execute("SELECT clip_auto_embed('mallory.both', 'url', 'v')")
    wait_until("both 404s recorded", lambda: one(
        admin, "SELECT count(*) FROM clip_backfill_failures WHERE relation = 'mallory.both'::regclass") == 2, 60)
    mallory.execute("UPDATE mallory.both SET url = %s, v = clip_embed_url(%s) WHERE id = 1",
                    (GOOD + "?both1", GOOD + "?both1"))
    with mallory.transaction():
        mallory.execute("UPDATE mallory.both SET v = NULL WHERE id = 1")
        mallory.execute("SELECT clip_auto_embed_wake(false)")  # a cleared vector alone wakes nobody (naptime would)
    took = wait_until("the cleared vector embedded again",
                      lambda: one(admin, "SELECT v IS NOT NULL FROM mallory.both WHERE id = 1"), 60)
    check("URL and vector written together, then the vector cleared: the row is embedded again", took is not None)
    # A deleted row's failure record goes.
    with mallory.transaction():
        mallory.execute("DELETE FROM mallory.both WHERE id = 2")
        mallory.execute("SELECT clip_auto_embed_wake(false)")
    took = wait_until("the deleted row's failure record gone", lambda: one(
        admin, "SELECT count(*) FROM clip_backfill_failures WHERE relation = 'mallory.both'::regclass") == 0, 60)
    check("a deleted row's failure record goes at the worker's next look", took is not None)
    mallory.close()


def drop_database(admin):
    for db in ("pg_clip_security_drop",):
        admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {db}")
        with connect(db) as conn:
            conn.execute("CREATE EXTENSION pg_clip CASCADE")
            conn.execute("CREATE TABLE t (id int PRIMARY KEY, url text, v vector(512))")
            conn.execute("SELECT clip_auto_embed('t', 'url', 'v')")
        worker = lambda: one(admin, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_clip auto-embed' "
                                    "AND datname = %s", (db,))
        check("a worker serves the database to drop", wait_until("its worker", lambda: worker() is not None, 20) is not None)
        # Another session holds the database: the DROP fails as PostgreSQL says; the worker comes back after it.
        other = connect(db)
        state = sqlstate_of(admin, f"DROP DATABASE {db}")
        check("DROP DATABASE with another session connected fails as always (55006)", state == "55006", state)
        came_back = wait_until("the worker back", lambda: worker() is not None, 30)
        check("... and the worker comes back after the failed DROP", came_back is not None, came_back)
        other.close()
        started = time.monotonic()
        state = sqlstate_of(admin, f"DROP DATABASE {db}")
        took = time.monotonic() - started
        check(f"a plain DROP DATABASE succeeds while the worker serves it ({took:.2f} s)", state == "ok", state)
        time.sleep(7)  # past the hold: the launcher would have restarted a worker by now
        alive = one(admin, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_clip auto-embed' "
                           "AND datid NOT IN (SELECT oid FROM pg_database)")
        check("no worker comes back for the dropped database", alive == 0, alive)


def main():
    admin = psycopg.connect(f"{conninfo} dbname=postgres user=postgres", autocommit=True)
    admin.execute("ALTER SYSTEM SET pg_clip.auto_embed_naptime = '2s'")
    admin.execute("ALTER SYSTEM SET pg_clip.auto_embed_retry_delay = '500ms'")
    admin.execute("SELECT pg_reload_conf()")
    setup(admin)
    db_admin = connect()
    attacks_through_the_worker(db_admin)
    attack_through_the_writers_search_path(db_admin)
    attack_through_the_databases_search_path(admin)
    superuser_backfill(db_admin)
    second_owner(db_admin)
    smaller_defects(db_admin)
    check("nobody became superuser", superusers(admin) == [], superusers(admin))
    db_admin.close()
    drop_database(admin)
    for db in (DB, DB_OWNED):
        admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    for role in ROLES:
        admin.execute(f"DROP ROLE IF EXISTS {role}")
    for setting in ("auto_embed_naptime", "auto_embed_retry_delay"):
        admin.execute(f"ALTER SYSTEM RESET pg_clip.{setting}")
    admin.execute("SELECT pg_reload_conf()")
    checklist.finish("security")


if __name__ == "__main__":
    main()
