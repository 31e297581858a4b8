"""Client test of a cold start under a connection pool: many backends make their first embedding call at the same
moment, before the prepared (shared, memory-mapped) model exists. One backend must prepare it while the others
wait for it, without spinning, and then map what it made; a waiter must honour query cancel and statement_timeout;
a preparer that is terminated, or killed outright, must leave nothing that a later backend would map.

Each scenario uses a fresh, empty pg_clip.prepared_model_dir (a superuser setting) under the server's data
directory, so that its first calls are a real cold start without a new cluster; the directories are listed with
pg_ls_dir and removed at the end with COPY TO PROGRAM (all as the server's user, so the client needs no access to
the server's files). The test does not assume pg_clip is preloaded, nor that it is not.

The last scenario kills a preparing backend with SIGKILL, as the kernel's OOM killer would: Postgres then restarts
every backend of the cluster (crash recovery). It needs the test to run on the server's machine as root or as the
server's user; otherwise it is skipped and says so. PG_CLIP_TEST_CRASH=0 skips it too.

Timings are printed, not judged (the machine is shared), except the promptness of a cancel and of a
statement_timeout, which are the point. The model has RANDOM weights; only equality of vectors is checked.

usage: test_cold_start.py DSN       (a superuser; the database gets pg_clip if it lacks it)
environment: CONNECTIONS (default 8), PG_CLIP_TEST_CRASH (default 1)
"""
import io
import os
import shlex
import signal
import sys
import threading
import time

import psycopg
from psycopg import errors, sql
from PIL import Image

import checklist
from checklist import check

dsn = sys.argv[1]
N = int(os.environ.get("CONNECTIONS", "8"))
CRASH = os.environ.get("PG_CLIP_TEST_CRASH", "1") != "0"
TEXT = "a photo of a red backpack"
WAIT_LIMIT = 900  # seconds any one call may take: a debug build hashes slowly, a shared machine is slow


def make_photo():
    """A small deterministic PNG: the test needs no image files."""
    img = Image.new("RGB", (120, 90))
    img.putdata([((x * 2) % 256, (y * 3) % 256, (x * y) % 256) for y in range(90) for x in range(120)])
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


PHOTO = make_photo()


def connect(prepared_dir=None):
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("SET client_min_messages = error")  # the random-weights WARNING
    if prepared_dir is not None:
        conn.execute("SELECT set_config('pg_clip.prepared_model_dir', %s, false)", (prepared_dir,))
    return conn


def pid_of(conn):
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def server_rm(path):
    """Removes a directory as the server's user (the client may not reach the server's files)."""
    # No rows, so the server writes nothing into a pipe that rm never reads (EPIPE otherwise).
    admin.execute(sql.SQL("COPY (SELECT WHERE false) TO PROGRAM {}").format(sql.Literal("rm -rf -- " + shlex.quote(path))))


def listing(path):
    return sorted(r[0] for r in admin.execute("SELECT pg_ls_dir(%s, true, false)", (path,)))


def slots(path):
    """The prepared directories proper: not temporaries, lock files or the checksum memo."""
    return [n for n in listing(path) if not n.startswith(".tmp-") and not n.endswith(".lock") and not n.startswith("verified.")]


def lock_holder(path):
    """The pid the current preparer wrote into the slot's lock file (None before anyone announced)."""
    for name in listing(path):
        if name.endswith(".lock"):
            text = admin.execute("SELECT pg_read_file(%s, 0, 1024, true)", (f"{path}/{name}",)).fetchone()[0] or ""
            return int(text) if text.strip().isdigit() else None
    return None


def fresh_dir(name):
    path = f"{base}/{name}"
    server_rm(path)
    return path


def wait_for(condition, limit, step=0.05):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return False


class Call(threading.Thread):
    """One statement on one connection, in a thread: its value or error, when it started and how long it took."""

    def __init__(self, conn, query, params=(), barrier=None):
        super().__init__(daemon=True)
        self.conn, self.query, self.params, self.barrier = conn, query, params, barrier
        self.value = self.error = self.started = self.seconds = None

    def run(self):
        if self.barrier:
            self.barrier.wait()
        self.started = time.monotonic()
        try:
            self.value = self.conn.execute(self.query, self.params).fetchone()[0]
        except psycopg.Error as e:
            self.error = e
        self.seconds = time.monotonic() - self.started

    def finish(self):
        self.join(WAIT_LIMIT)
        return not self.is_alive()


def simultaneous(conns, query, params):
    barrier = threading.Barrier(len(conns) + 1)
    calls = [Call(c, query, params, barrier) for c in conns]
    for call in calls:
        call.start()
    barrier.wait()
    return calls, time.monotonic()


def cpu_seconds(pid):
    """utime + stime of a local process, or None if it is not a postgres process of this machine we can read."""
    try:
        if b"postgres" not in open(f"/proc/{pid}/cmdline", "rb").read():
            return None
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def sqlstate(error):
    return getattr(error, "sqlstate", None) if error is not None else None


def pool_cold_start(name, query, params, info_query):
    """N connections make their first call at once on a fresh prepared-model directory."""
    print(f"-- {name}: {N} connections, first calls at the same moment, fresh prepared-model directory")
    path = fresh_dir(name)
    conns = [connect(path) for _ in range(N)]
    pids = [pid_of(c) for c in conns]
    calls, start = simultaneous(conns, query, params)
    # While the preparer works, the waiters must sleep, not spin: their CPU time over half a second from the
    # moment the preparer announces itself (it has verified the sources, the others are waiting by then). The
    # window counts only if the preparation was still going on at its end.
    wait_for(lambda: lock_holder(path) is not None, WAIT_LIMIT, step=0.02)
    before = [cpu_seconds(p) for p in pids]
    time.sleep(0.5)
    after = [cpu_seconds(p) for p in pids]
    still_preparing = all(c.seconds is None for c in calls) and not slots(path)
    done = all(c.finish() for c in calls)
    wall = time.monotonic() - start
    check(f"{name}: all {N} first calls answered", done and all(c.error is None for c in calls),
          [str(c.error) for c in calls if c.error])
    infos = [c.execute(info_query).fetchone() for c in conns]
    modes = [i[0] for i in infos]
    preparers = [pid for pid, i in zip(pids, infos) if i[0] == "prepared"]
    check(f"{name}: exactly one backend prepared the model", len(preparers) == 1, modes)
    check(f"{name}: all the others mapped it (load mode shared)", modes.count("shared") == N - 1, modes)
    waited = [(i[1], i[2]) for i in infos if i[0] == "shared"]
    check(f"{name}: every backend that mapped it waited, and for the preparer's pid",
          bool(preparers) and all(ms is not None and ms > 0 and pid == preparers[0] for ms, pid in waited), waited)
    check(f"{name}: the preparer did not wait", all(i[1] is None for i in infos if i[0] == "prepared"), infos)
    check(f"{name}: all {N} vectors identical", len({c.value for c in calls}) == 1)
    if None in before or None in after:
        print(f"   (CPU of waiting backends not measured: the server's processes are not readable here)")
    elif not still_preparing:
        print(f"   (CPU of waiting backends not measured: the preparation ended within half a second of its start)")
    else:
        used = sorted(a - b for a, b in zip(after, before))
        check(f"{name}: waiting backends do not spin (CPU over 0.5 s of waiting: busiest waiter {used[-2] * 1000:.0f} ms, "
              f"the preparer {used[-1] * 1000:.0f} ms)", used[-2] <= 0.05, used)
    entries = listing(path)
    check(f"{name}: one prepared directory, its lock file, no temporary left",
          len(slots(path)) == 1 and sum(e.endswith(".lock") for e in entries) == 1
          and not any(e.startswith(".tmp-") for e in entries), entries)
    prepared_seconds = [c.seconds for c, i in zip(calls, infos) if i[0] == "prepared"]
    waits = sorted(i[1] for i in infos if i[1] is not None)
    print(f"   first call of the preparer {prepared_seconds[0] if prepared_seconds else float('nan'):.1f} s; "
          f"all {N} answered after {wall:.1f} s; waits {waits[0] / 1000 if waits else 0:.1f}-"
          f"{waits[-1] / 1000 if waits else 0:.1f} s")
    value = calls[0].value
    for c in conns:
        c.close()
    server_rm(path)
    return value


def start_preparer(path, query, params):
    """A backend whose first call prepares, and the moment it announced itself (it is then about to prepare)."""
    conn = connect(path)
    pid = pid_of(conn)
    call = Call(conn, query, params)
    call.start()
    announced = wait_for(lambda: lock_holder(path) == pid, WAIT_LIMIT)
    return conn, pid, call, announced


def cancel_waiters():
    print("-- a waiter cancelled, a waiter timed out, while the preparer goes on")
    path = fresh_dir("cancel")
    query, params = "SELECT clip_embed_bytes(%s)::text", (PHOTO,)
    p_conn, p_pid, preparer, announced = start_preparer(path, query, params)
    check("cancel: the preparer announced itself in the lock file", announced)
    # The preparer has announced itself: what is left of its preparation (ONNX Runtime, then writing and
    # verifying 690 MB) takes more than a second even in a release build on an idle machine.
    w_conn = connect(path)
    w_pid = pid_of(w_conn)
    t_conn = connect(path)
    t_conn.execute("SET statement_timeout = '400ms'")
    waiter, timed = Call(w_conn, query, params), Call(t_conn, query, params)
    waiter.start()
    timed.start()
    time.sleep(0.3)
    cancelled_at = time.monotonic()
    admin.execute("SELECT pg_cancel_backend(%s)", (w_pid,))
    waiter.finish()
    after_cancel = time.monotonic() - cancelled_at
    preparing_after_cancel = preparer.is_alive() and not slots(path)
    check(f"cancel: the waiter returned 57014 {after_cancel * 1000:.0f} ms after pg_cancel_backend (limit 1 s)",
          sqlstate(waiter.error) == "57014" and after_cancel < 1.0, repr(waiter.error))
    timed.finish()
    preparing_after_timeout = preparer.is_alive() and not slots(path)
    check(f"cancel: the waiter with statement_timeout = 400ms returned 57014 after {timed.seconds:.2f} s",
          sqlstate(timed.error) == "57014" and 0.35 <= timed.seconds < 1.2, repr(timed.error))
    check("cancel: the preparer was still preparing when each of them had returned",
          preparing_after_cancel and preparing_after_timeout, (preparing_after_cancel, preparing_after_timeout))
    preparer.finish()
    mode = p_conn.execute("SELECT load_mode FROM clip_model_info()").fetchone()[0]
    check("cancel: the preparer went on and prepared the model", preparer.error is None and mode == "prepared",
          (repr(preparer.error), mode))
    again = w_conn.execute(query, params).fetchone()[0]
    info = w_conn.execute("SELECT load_mode, load_waited_ms FROM clip_model_info()").fetchone()
    check("cancel: the cancelled backend's next call maps the prepared model without waiting",
          again == preparer.value and info == ("shared", None), info)
    for c in (p_conn, w_conn, t_conn):
        c.close()
    server_rm(path)


def terminate_preparer(reference):
    print("-- the preparing backend terminated (pg_terminate_backend) mid-prepare, with 3 waiters")
    path = fresh_dir("terminate")
    query, params = "SELECT clip_embed_bytes(%s)::text", (PHOTO,)
    p_conn, p_pid, preparer, announced = start_preparer(path, query, params)
    check("terminate: the preparer announced itself in the lock file", announced)
    conns = [connect(path) for _ in range(3)]
    waiters, _ = simultaneous(conns, query, params)
    time.sleep(0.3)
    mid_way = preparer.is_alive() and not slots(path)
    terminated_at = time.monotonic()
    admin.execute("SELECT pg_terminate_backend(%s)", (p_pid,))
    check("terminate: the signal reached the preparer in the middle of its preparation", mid_way)
    preparer.finish()
    gone = wait_for(lambda: admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (p_pid,))
                    .fetchone()[0] == 0, WAIT_LIMIT)
    ended = time.monotonic() - terminated_at
    check(f"terminate: the preparer's session ended ({ended:.1f} s after the signal: a preparation in ONNX Runtime "
          f"runs to its end)", gone and preparer.error is not None and preparer.value is None, repr(preparer.error))
    finished = all(w.finish() for w in waiters)
    check("terminate: every waiter's call succeeded", finished and all(w.error is None for w in waiters),
          [repr(w.error) for w in waiters if w.error])
    modes = [c.execute("SELECT load_mode FROM clip_model_info()").fetchone()[0] for c in conns]
    check("terminate: the waiters mapped what the preparer published, or one of them prepared anew",
          modes.count("prepared") <= 1 and modes.count("shared") >= 2, modes)
    print(f"   waiters' load modes: {modes}")
    check("terminate: the waiters' vectors are those of the other scenarios", {w.value for w in waiters} == {reference})
    check("terminate: one prepared directory, no temporary left behind", len(slots(path)) == 1
          and not any(e.startswith(".tmp-") for e in listing(path)), listing(path))
    fresh = connect(path)
    value = fresh.execute(query, params).fetchone()[0]
    info = fresh.execute("SELECT load_mode, load_note FROM clip_model_info()").fetchone()
    check("terminate: a new backend maps it as it is (it verifies: nothing rebuilt)",
          info == ("shared", None) and value == reference, info)
    for c in conns + [fresh]:
        c.close()
    server_rm(path)


def crash_preparer(reference):
    print("-- the preparing backend killed with SIGKILL mid-prepare (as by the OOM killer): the cluster restarts")
    global admin
    path = fresh_dir("crash")
    query, params = "SELECT clip_embed_bytes(%s)::text", (PHOTO,)
    p_conn, p_pid, preparer, announced = start_preparer(path, query, params)
    check("crash: the preparer announced itself in the lock file", announced)
    if cpu_seconds(p_pid) is None:
        print("   (skipped: the server's processes are not on this machine or not readable)")
        preparer.finish()
        return
    wait_for(lambda: any(e.startswith(".tmp-") for e in listing(path)), 60, step=0.02)
    time.sleep(0.2)
    mid_way = preparer.is_alive() and not slots(path)
    try:
        os.kill(p_pid, signal.SIGKILL)
    except PermissionError:
        print("   (skipped: no permission to signal the server's processes)")
        preparer.finish()
        return
    check("crash: SIGKILL reached the preparer in the middle of its preparation", mid_way)
    preparer.finish()
    check("crash: the preparer's connection was lost", preparer.error is not None, repr(preparer.error))
    # The postmaster ends every other backend too (ours included) before it restarts: wait until it has,
    # or a connection made meanwhile would be ended as well.
    wait_for(lambda: not alive(admin), 60, step=0.1)
    admin.close()
    back = wait_for(lambda: reconnect_admin(), 120, step=0.5)
    check("crash: the server accepts connections again after its crash recovery", back)
    entries = listing(path)
    check("crash: what the killed preparer left is only a temporary directory (never mapped)",
          not slots(path) and any(e.startswith(".tmp-") for e in entries), entries)
    conn = connect(path)
    started = time.monotonic()
    value = conn.execute(query, params).fetchone()[0]
    info = conn.execute("SELECT load_mode, load_waited_ms FROM clip_model_info()").fetchone()
    check(f"crash: the next call prepares anew without waiting (the kernel released the lock; "
          f"{time.monotonic() - started:.1f} s)", info == ("prepared", None), info)
    check("crash: its vector is the one of the other scenarios", value == reference)
    entries = listing(path)
    check("crash: the dead preparer's temporary directory was removed by the next one",
          len(slots(path)) == 1 and not any(e.startswith(".tmp-") for e in entries), entries)
    conn.close()
    server_rm(path)


def alive(conn):
    try:
        conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def reconnect_admin():
    global admin
    try:
        admin = connect()
        return True
    except psycopg.OperationalError:
        return False


admin = connect()
admin.execute("SET client_min_messages = warning")
admin.execute("CREATE EXTENSION IF NOT EXISTS pg_clip CASCADE")
base = admin.execute("SELECT current_setting('data_directory') || '/pg_clip/cold-start-test'").fetchone()[0]
server_rm(base)
t0 = time.monotonic()
image = pool_cold_start("image", "SELECT clip_embed_bytes(%s)::text", (PHOTO,),
                        "SELECT load_mode, load_waited_ms, load_waited_for_pid FROM clip_model_info()")
text = pool_cold_start("text", "SELECT clip_embed_text(%s)::text", (TEXT,),
                       "SELECT text_load_mode, text_load_waited_ms, text_load_waited_for_pid FROM clip_model_info()")
cancel_waiters()
terminate_preparer(image)
if CRASH:
    crash_preparer(image)
else:
    print("-- SIGKILL of a preparer: skipped (PG_CLIP_TEST_CRASH=0)")
server_rm(base)
print(f"cold start: {time.monotonic() - t0:.0f} s (RANDOM-weight model: vectors compared for equality only)")
checklist.finish("cold start")
