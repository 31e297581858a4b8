"""Memory benchmark: N backends each embedding the same photos, with the weights shared through a prepared model
file, against N backends with private sessions, in the same run; plus int8 latency and fidelity.
Run by scripts/bench_memory.sh (which starts the server). Reads each backend's /proc/PID/smaps_rollup, so it must
run on the server's machine as root or the server's user.

usage: bench_memory.py DSN BACKENDS ROUNDS IMAGE...
"""
import re
import statistics
import sys
import time

import psycopg


def memory(pid):
    """A process's memory in MB from /proc/PID/smaps_rollup: PSS (its share of every page), private (pages no other
    process maps: its heap, and file pages only it has touched), RSS, and anonymous (heap: never shared, never
    page cache). scripts/bench_text.py measures with it too."""
    rollup = open(f"/proc/{pid}/smaps_rollup").read()
    field = lambda name: int(re.search(rf"^{name}:\s+(\d+)", rollup, re.M).group(1)) / 1024
    return {"pss": field("Pss"), "private": field("Private_Clean") + field("Private_Dirty"), "rss": field("Rss"),
            "anon": field("Anonymous")}


def run(settings):
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(backends)]
    pids = []
    for conn in conns:
        conn.execute("SET client_min_messages = error")
        conn.execute("SET pg_clip.embedding_cache_size = 0")
        for name, value in settings.items():
            conn.execute(f"SET {name} = {value}")
        pids.append(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
    baseline = [memory(pid) for pid in pids]  # the backends before any model: what a plain backend costs
    # Load one backend after another (the first may prepare the shared file), then warm each up.
    for conn in conns:
        for photo in photos[:2]:
            conn.execute("SELECT clip_embed_bytes(%s)", (photo,))
    latencies = []
    for _ in range(rounds):
        for conn in conns:
            for photo in photos:
                started = time.perf_counter()
                conn.execute("SELECT clip_embed_bytes(%s)", (photo,)).fetchone()
                latencies.append((time.perf_counter() - started) * 1e3)
    info = conns[-1].execute("SELECT load_mode, model_private_mb FROM clip_model_info()").fetchone()
    mem = [memory(pid) for pid in pids]
    vectors = [conns[0].execute("SELECT clip_embed_bytes(%s)::text", (p,)).fetchone()[0] for p in photos]
    for conn in conns:
        conn.close()
    return {"latency_p50": statistics.median(latencies), "mem": mem, "base": baseline, "mode": info[0], "vectors": vectors}


def main():
    # run() reads these as module globals, as when this was a plain script.
    global dsn, backends, rounds, photos
    dsn, backends, rounds, images = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    photos = [open(p, "rb").read() for p in images]
    shared = run({"pg_clip.share_model_weights": "on"})
    private = run({"pg_clip.share_model_weights": "off"})
    int8 = run({"pg_clip.share_model_weights": "on", "pg_clip.image_precision": "int8"})

    with psycopg.connect(dsn, autocommit=True) as conn:
        cos = [1 - conn.execute("SELECT %s::vector <=> %s::vector", (a, b)).fetchone()[0]
               for a, b in zip(shared["vectors"], int8["vectors"])]

    def model_pss(r):
        """What the model adds: PSS after the runs minus PSS of the same backends before loading it."""
        return sum(m["pss"] for m in r["mem"]) - sum(b["pss"] for b in r["base"])

    def line(name, r):
        pss = sum(m["pss"] for m in r["mem"])
        priv = [m["private"] for m in r["mem"]]
        print(f"{name:34} {r['mode']:>18} {pss:10.0f} {model_pss(r):10.0f} {statistics.median(priv):12.0f} {max(priv):10.0f} {r['latency_p50']:10.1f}")

    print(f"\n{backends} backends, {len(photos)} photos x {rounds} rounds each (latency: one query at a time, round trip included)")
    print(f"{'':34} {'load mode':>18} {'total PSS':>10} {'model PSS':>10} {'private p50':>12} {'private max':>10} {'ms p50':>10}   (MB)")
    line("shared weights (default)", shared)
    line("private sessions", private)
    line("int8 image tower, shared", int8)
    one_private = statistics.median(m["private"] for m in private["mem"])
    total_shared = sum(m["pss"] for m in shared["mem"])
    extra = statistics.median(m["private"] for m in shared["mem"][1:])
    same = shared["vectors"] == private["vectors"]
    print("\ngoals (same run):")
    def goal(name, value, limit, ok):
        print(f"  {name:58} {value:>12}   goal {limit:<12} {'met' if ok else 'NOT MET'}")
    goal(f"total PSS of {backends} shared backends / one private backend", f"{total_shared / one_private:.2f}x", "<= 1.5x", total_shared / one_private <= 1.5)
    one_private_model = model_pss(private) / backends
    goal(f"  the same, counting only what the model adds (model PSS)", f"{model_pss(shared) / one_private_model:.2f}x", "<= 1.5x", model_pss(shared) / one_private_model <= 1.5)
    goal("private memory per extra shared backend", f"{extra:.0f} MB", "<= 80 MB", extra <= 80)
    goal("warm latency shared / private", f"{shared['latency_p50'] / private['latency_p50']:.3f}", "<= 1.05", shared["latency_p50"] / private["latency_p50"] <= 1.05)
    goal("int8 speed-up over fp32 (shared)", f"{shared['latency_p50'] / int8['latency_p50']:.2f}x", ">= 2x", shared["latency_p50"] / int8["latency_p50"] >= 2)
    print(f"  shared and private vectors identical: {same}; int8 vs fp32 1-cos: mean {1 - statistics.mean(cos):.2e}, max {1 - min(cos):.2e}")
    print("  (RANDOM-weight model with clip-ViT-B-32's architecture: memory and speed are the real model's)")


if __name__ == "__main__":
    main()
