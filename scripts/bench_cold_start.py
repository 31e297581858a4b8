"""Cold-start benchmark: a connection pool's first calls right after pg_clip is installed (or the model or ONNX
Runtime changed, or on a new standby), when the shared prepared model does not exist yet. In the same run, each on
a fresh, empty pg_clip.prepared_model_dir:
  A  CALLS connections make their first clip_embed_bytes at the same moment;
  B  one connection makes its first call alone (it prepares the model), then the CALLS-1 others at the same moment
     (they map it): the reference, what a cold start costs when nobody prepares twice.
Prints, for both: the wall time until every call is answered, and the peak of the memory the backends hold
privately (the sum over the CALLS backends of RssAnon, from /proc/PID/status, sampled every 50 ms, minus the same
backends before their first call; the mapped prepared model is page cache shared by all and is not in it). The
system-wide rise of MemTotal - MemAvailable is printed beside it, as context only: other processes move it.
Goals: A's time within 1.3x of B's, and A's peak at most one preparation plus the mapped backends' private memory
(both measured in B).

Run by scripts/bench_cold_start.sh (which starts the server). Reads the server's /proc, so it must run on the
server's machine as root or the server's user. RANDOM-weight model: timings and memory are the real model's.

usage: bench_cold_start.py DSN CALLS IMAGE [RUNS]
"""
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

dsn, calls, photo = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], "rb").read()
runs = int(sys.argv[4]) if len(sys.argv) > 4 else 1
SAMPLE = 0.05


def rss_anon_mb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def used_mb():
    info = {line.split(":")[0]: int(line.split()[1]) for line in open("/proc/meminfo")}
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


class Sampler(threading.Thread):
    """Every 50 ms: each backend's private memory over its baseline; keeps each one's peak and the peak of the sum."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids = pids
        self.base = {pid: rss_anon_mb(pid) for pid in pids}
        self.used_base = used_mb()
        self.peak = {pid: 0.0 for pid in pids}
        self.last = {pid: 0.0 for pid in pids}
        self.sum_peak = self.used_peak = 0.0
        self.stopping = threading.Event()

    def sample(self):
        total = 0.0
        for pid in self.pids:
            now = rss_anon_mb(pid)
            if now is None:
                continue
            extra = now - self.base[pid]
            self.last[pid] = extra
            self.peak[pid] = max(self.peak[pid], extra)
            total += extra
        self.sum_peak = max(self.sum_peak, total)
        self.used_peak = max(self.used_peak, used_mb() - self.used_base)

    def run(self):
        while not self.stopping.is_set():
            self.sample()
            time.sleep(SAMPLE)

    def stop(self):
        self.stopping.set()
        self.join()
        self.sample()


def connect(path=None):
    conn = psycopg.connect(dsn, autocommit=True, row_factory=dict_row)
    conn.execute("SET client_min_messages = error")
    if path:
        conn.execute("SELECT set_config('pg_clip.prepared_model_dir', %s, false)", (path,))
    return conn


def first_calls(conns):
    """The first call on every connection at the same moment; returns when each was answered (monotonic)."""
    barrier = threading.Barrier(len(conns))
    done = [None] * len(conns)
    errors = []

    def run(i, conn):
        barrier.wait()
        try:
            conn.execute("SELECT clip_embed_bytes(%s)", (photo,)).fetchone()
        except psycopg.Error as e:
            errors.append(e)
        done[i] = time.monotonic()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"a first call failed: {errors[0]}")
    return done


def scenario(name, first_alone):
    path = f"{base}/{name}"
    shutil.rmtree(path, ignore_errors=True)
    conns = [connect(path) for _ in range(calls)]
    pids = [c.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"] for c in conns]
    sampler = Sampler(pids)
    sampler.start()
    started = time.monotonic()
    result = {}
    if first_alone:
        first_calls(conns[:1])
        result["first"] = time.monotonic() - started
        result["preparation_peak"] = sampler.peak[pids[0]]
        rest_started = time.monotonic()
        done = first_calls(conns[1:])
        result["rest"] = max(done) - rest_started
    else:
        done = first_calls(conns)
    result["wall"] = max(done) - started
    sampler.stop()
    infos = [c.execute("SELECT * FROM clip_model_info()").fetchone() for c in conns]
    modes = [i["load_mode"] for i in infos]
    result["modes"] = {m: modes.count(m) for m in sorted(set(modes))}
    waits = [i.get("load_waited_ms") for i in infos if i.get("load_waited_ms") is not None]
    result["waits"] = (min(waits) / 1000, max(waits) / 1000) if waits else None
    result["peak"] = sampler.sum_peak
    result["used_peak"] = sampler.used_peak
    mapped = [pid for pid, i in zip(pids, infos) if i["load_mode"] == "shared"]
    result["mapped_final"] = [sampler.last[pid] for pid in mapped]
    result["mapped_peak"] = [sampler.peak[pid] for pid in mapped]
    result["private_after"] = sum(sampler.last.values())
    for c in conns:
        c.close()
    shutil.rmtree(path, ignore_errors=True)
    return result


with connect() as admin:
    admin.execute("CREATE EXTENSION IF NOT EXISTS pg_clip CASCADE")
    base = admin.execute("SELECT current_setting('data_directory') || '/pg_clip/bench-cold-start' AS d").fetchone()["d"]
    model = Path(admin.execute("SELECT model_path FROM clip_model_info()").fetchone()["model_path"])
    build = admin.execute("SELECT count(*) AS n FROM pg_proc WHERE proname = 'clip_model_info' "
                          "AND 'load_waited_ms' = ANY(proargnames)").fetchone()["n"]
# Both scenarios read the same source files: put them in the page cache first, so neither pays the disk.
for f in model.iterdir():
    with open(f, "rb") as src:
        while src.read(1 << 24):
            pass

print(f"\n{calls} connections, first call clip_embed_bytes on each; pg_clip "
      f"{'with' if build else 'WITHOUT'} the one-preparer lock; {runs} run(s)")
print("memory: sum over the backends of RssAnon (private, anonymous) over their baseline, sampled every 50 ms;")
print("        system: MemTotal - MemAvailable over its baseline (context only: other processes move it)\n")
print(f"{'':44} {'wall s':>7} {'peak MB':>8} {'system MB':>10}  load modes")
rows = []
for run in range(runs):
    a = scenario("A", first_alone=False)
    b = scenario("B", first_alone=True)
    rows.append((a, b))
    waits = f", waits {a['waits'][0]:.1f}-{a['waits'][1]:.1f} s" if a["waits"] else ""
    label_a, label_b = f"A  {calls} first calls at once", f"B  1 first call, then {calls - 1} at once"
    print(f"{label_a:44} {a['wall']:7.1f} {a['peak']:8.0f} {a['used_peak']:10.0f}  {a['modes']}{waits}")
    print(f"{label_b:44} {b['wall']:7.1f} {b['peak']:8.0f} {b['used_peak']:10.0f}  "
          f"{b['modes']} ({b['first']:.1f} s + {b['rest']:.1f} s)")

a_wall = statistics.median(a["wall"] for a, _ in rows)
b_wall = statistics.median(b["wall"] for _, b in rows)
a_peak = statistics.median(a["peak"] for a, _ in rows)
preparation = statistics.median(b["preparation_peak"] for _, b in rows)
mapped_final = statistics.median(sum(b["mapped_final"]) for _, b in rows)
mapped_peak = statistics.median(sum(b["mapped_peak"]) for _, b in rows)
mapped_each = statistics.median(x for _, b in rows for x in b["mapped_final"])
print(f"\nmeasured in B: one preparation holds {preparation:.0f} MB at its peak; a backend that maps keeps "
      f"{mapped_each:.0f} MB (p50), {mapped_final:.0f} MB for the {calls - 1}, {mapped_peak:.0f} MB at their own peaks")
print("goals (same run" + (", medians" if runs > 1 else "") + "):")


def goal(name, value, limit, ok):
    print(f"  {name:66} {value:>10}   goal {limit:<10} {'met' if ok else 'NOT MET'}")


goal(f"time of A / time of B", f"{a_wall / b_wall:.2f}x", "<= 1.3x", a_wall / b_wall <= 1.3)
bound = preparation + mapped_final
goal(f"peak of A / (one preparation + the {calls - 1} mapped backends' memory)",
     f"{a_peak:.0f}/{bound:.0f}", "<= 1", a_peak <= bound)
goal(f"  the same, the mapped backends counted at their own peaks",
     f"{a_peak:.0f}/{preparation + mapped_peak:.0f}", "<= 1", a_peak <= preparation + mapped_peak)
print("  (RANDOM-weight model with clip-ViT-B-32's architecture: time and memory are the real model's)")
