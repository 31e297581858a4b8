"""Multilingual text benchmark: warm clip_embed_text latency with pg_clip.text_model = multilingual at 1 thread, next
to sentence-transformers' own SentenceTransformer.encode on the same texts and the same weights, measured in
alternating rounds of the same run; then BACKENDS backends with the multilingual encoder loaded: private memory per
backend and total PSS (scripts/bench_memory.py's measurement). Run by scripts/bench_text.sh, which starts the
server; reads /proc/PID/smaps_rollup, so it runs on the server's machine as root or the server's user.

usage: bench_text.py DSN MODEL_DIR BACKENDS ROUNDS [--multilingual-checkpoint PATH]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "model"))
sys.path.insert(0, str(ROOT / "scripts"))
import multilingual as ml  # noqa: E402  (model/multilingual.py: the tower's weights, the reference folder)
from bench_memory import memory  # noqa: E402

# Short product queries, as a shopper types them (2-3 words, 5-9 ids with [CLS] and [SEP]).
SHORT = ["красный рюкзак", "чёрные кроссовки", "женская сумка", "зимняя куртка", "кофемашина", "беспроводные наушники",
         "детский велосипед", "настольная лампа", "шерстяной свитер", "чехол для телефона"]
# And one at the 128-token limit, for the other end.
LONG = ("Большой красный рюкзак для походов в горы, непромокаемый, со множеством карманов и отделений. " * 6).strip()


def pct(values, q):
    return float(np.percentile(values, q * 100))


def connect(dsn, **settings):
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("SET client_min_messages = error")
    for name, value in settings.items():
        conn.execute(f"SET {name} = {value}")
    return conn


def server_round(conn, texts):
    """One pass over texts: round-trip ms per call (psycopg, the vector returned), and the vectors."""
    times, vectors = [], []
    for text in texts:
        t0 = time.perf_counter()
        row = conn.execute("SELECT clip_embed_text(%s)::text", (text,)).fetchone()
        times.append((time.perf_counter() - t0) * 1e3)
        vectors.append(np.array(json.loads(row[0]), np.float32))
    return times, vectors


def server_split(conn):
    """(inferences, inference ms) so far in this backend: tokenizing + the tower, without SQL and the driver."""
    return conn.execute("SELECT inferences, inference_ms_total FROM clip_model_info()").fetchone()


def reference(manifest, checkpoint, workdir):
    """sentence-transformers' own pipeline on the model directory's multilingual weights: the checkpoint, or for
    random weights the seed's tower written in the published layout (as model/check_graph_fidelity.py does)."""
    entry = manifest[ml.MANIFEST_KEY]
    if entry["random_weights"]:
        folder = ml.write_sentence_transformers_folder(ml.random_tower(int(entry["seed"]), "sdpa"),
                                                       workdir / "reference", ml.vocab_path())
    elif checkpoint is None:
        raise SystemExit(f"bench_text.py: the multilingual tower came from {entry['source']}: pass "
                         "--multilingual-checkpoint")
    else:
        folder = checkpoint
    return ml.sentence_transformer(folder)


def st_round(st, texts):
    import torch

    times, vectors = [], []
    for text in texts:
        t0 = time.perf_counter()
        with torch.inference_mode():
            v = st.encode([text], batch_size=1, convert_to_numpy=True, normalize_embeddings=False)[0]
        times.append((time.perf_counter() - t0) * 1e3)
        vectors.append(v / np.linalg.norm(v))
    return times, vectors


def latency(dsn, st, rounds):
    """Warm latency, server and reference interleaved round by round, so both see the same machine."""
    settings = {"pg_clip.text_model": "multilingual", "pg_clip.embedding_cache_size": 0, "pg_clip.intra_op_threads": 1}
    # The first load in this cluster prepares the shared file (once per model, CPU and ONNX Runtime version); a
    # later backend's first call maps it: that is the cold start a new connection pays.
    with connect(dsn, **settings) as first:
        t0 = time.perf_counter()
        first.execute("SELECT clip_embed_text('прогрев')").fetchone()
        prepare_ms = (time.perf_counter() - t0) * 1e3
    conn = connect(dsn, **settings)
    t0 = time.perf_counter()
    conn.execute("SELECT clip_embed_text('прогрев')").fetchone()
    first_ms = (time.perf_counter() - t0) * 1e3
    server_round(conn, SHORT[:3])
    st_round(st, SHORT[:3])
    server, ref, server_long, ref_long, split = [], [], [], [], [0, 0.0]
    for _ in range(rounds):
        n0, ms0 = server_split(conn)
        times, server_vectors = server_round(conn, SHORT)
        n1, ms1 = server_split(conn)
        split = [split[0] + n1 - n0, split[1] + ms1 - ms0]
        server += times
        times, ref_vectors = st_round(st, SHORT)
        ref += times
        server_long += server_round(conn, [LONG])[0]
        ref_long += st_round(st, [LONG])[0]
    cos = [float(a @ b) for a, b in zip(server_vectors, ref_vectors)]
    ids = [len(conn.execute("SELECT clip_text_tokens(%s)", (t,)).fetchone()[0]) for t in SHORT + [LONG]]
    # The int8 graph (superuser setting), same texts, same connection.
    conn.execute("SET pg_clip.text_precision = int8")
    server_round(conn, SHORT[:3])
    int8, int8_vectors = [], []
    for _ in range(rounds):
        times, int8_vectors = server_round(conn, SHORT)
        int8 += times
    int8_cos = [float(a @ b) / float(np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(server_vectors, int8_vectors)]
    conn.execute("RESET pg_clip.text_precision")
    # CLIP's own text tower on the same words, for scale (it reads them as bytes: meaningless for Russian).
    conn.execute("SET pg_clip.text_model = clip")
    server_round(conn, SHORT[:3])
    clip = []
    for _ in range(rounds):
        clip += server_round(conn, SHORT)[0]
    conn.close()
    return {"server": server, "ref": ref, "server_long": server_long, "ref_long": ref_long, "cos": cos,
            "in_server_ms": split[1] / split[0], "first_ms": first_ms, "prepare_ms": prepare_ms, "ids": ids, "int8": int8,
            "int8_cos": int8_cos, "clip": clip}


def backends_memory(dsn, backends, **settings):
    """`backends` backends, each with the multilingual encoder loaded and warm: memory before and after."""
    conns = [connect(dsn, **{"pg_clip.text_model": "multilingual", **settings}) for _ in range(backends)]
    pids = [c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in conns]
    base = [memory(pid) for pid in pids]
    for c in conns:  # one after another: the first may prepare the shared file
        for text in SHORT + [LONG]:
            c.execute("SELECT clip_embed_text(%s)", (text,)).fetchone()
    mode = conns[-1].execute("SELECT text_model_loaded, text_loaded, loaded FROM clip_model_info()").fetchone()
    assert mode == (True, False, False), f"expected the multilingual tower alone loaded, got {mode}"
    after = [memory(pid) for pid in pids]
    for c in conns:
        c.close()
    return {"base": base, "after": after}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dsn")
    ap.add_argument("model", type=Path)
    ap.add_argument("backends", type=int)
    ap.add_argument("rounds", type=int)
    ap.add_argument("--multilingual-checkpoint", type=Path)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # as a pg_clip backend (pg_clip.intra_op_threads = 1)
    torch.set_num_interop_threads(1)
    manifest = json.loads((args.model / "manifest.json").read_text())
    entry = manifest[ml.MANIFEST_KEY]
    with tempfile.TemporaryDirectory(prefix="pg_clip-bench-text-") as d:
        st = reference(manifest, args.multilingual_checkpoint, Path(d))
        lat = latency(args.dsn, st, args.rounds)
    del st
    shared = backends_memory(args.dsn, args.backends)
    private = backends_memory(args.dsn, 1, **{"pg_clip.share_model_weights": "off"})

    s, r = lat["server"], lat["ref"]
    weights = "RANDOM weights (seed %s)" % entry.get("seed") if entry["random_weights"] else entry["model_version"]
    print(f"\nmultilingual text embedding, 1 thread, {len(SHORT)} short Russian queries x {args.rounds} rounds "
          f"({min(lat['ids'][:-1])}-{max(lat['ids'][:-1])} ids), {weights}")
    print(f"{'ms per text':58} {'p50':>7} {'p95':>7}")
    print(f"{'clip_embed_text, warm, through psycopg (multilingual, fp32)':58} {pct(s, .5):7.1f} {pct(s, .95):7.1f}")
    print(f"{'  of which tokenizing + the tower, in the server (mean)':58} {lat['in_server_ms']:7.1f}")
    print(f"{'reference: sentence-transformers encode([text]), 1 thread':58} {pct(r, .5):7.1f} {pct(r, .95):7.1f}")
    print(f"{'clip_embed_text, int8 multilingual tower':58} {pct(lat['int8'], .5):7.1f} {pct(lat['int8'], .95):7.1f}")
    print(f"{'clip_embed_text, CLIP text tower (same words, for scale)':58} {pct(lat['clip'], .5):7.1f} "
          f"{pct(lat['clip'], .95):7.1f}")
    print(f"{'long query (%d ids): clip_embed_text / reference' % lat['ids'][-1]:58} "
          f"{pct(lat['server_long'], .5):7.1f} {pct(lat['ref_long'], .5):7.1f}   (p50 each)")
    print(f"first call in a fresh backend (maps the prepared tower, loads the tokenizer): {lat['first_ms']:.0f} ms; "
          f"the run's first, which also prepares the shared file if the cluster has none yet: {lat['prepare_ms']:.0f} ms")
    print(f"server vs sentence-transformers, same texts: min cos {min(lat['cos']):.7f}; "
          f"int8 vs fp32: 1 - cos mean {1 - statistics.mean(lat['int8_cos']):.1e}, max {1 - min(lat['int8_cos']):.1e}")

    def line(name, m):
        pss = sum(x["pss"] for x in m["after"])
        model = pss - sum(x["pss"] for x in m["base"])
        priv = [x["private"] for x in m["after"]]
        added = [a["private"] - b["private"] for a, b in zip(m["after"], m["base"])]
        heap = [a["anon"] - b["anon"] for a, b in zip(m["after"], m["base"])]
        print(f"{name:30} {len(m['after']):8d} {pss:10.0f} {model:10.0f} {statistics.median(priv):12.0f} "
              f"{max(priv):10.0f} {statistics.median(added):12.0f} {statistics.median(heap):10.0f}")

    print(f"\n{'multilingual encoder loaded':30} {'backends':>8} {'total PSS':>10} {'model PSS':>10} "
          f"{'private p50':>12} {'private max':>10} {'added p50':>12} {'heap p50':>10}   (MB)")
    line("shared weights (default)", shared)
    line("private session, for scale", private)
    print("  (model PSS: what loading added to the backends' PSS; added: private memory the load added per backend;\n"
          "   heap: anonymous memory the load added, the part that is never shared)")

    print("\ngoals (same run):")
    p50 = pct(s, .5)
    per_backend = statistics.median(x["private"] for x in shared["after"])
    print(f"  warm p50, short query, 1 thread: {p50:.1f} ms (goal <= 15 ms) {'met' if p50 <= 15 else 'NOT MET'}; "
          f"{pct(r, .5) / p50:.2f}x the reference's speed")
    print(f"  private memory per backend, {args.backends} backends: {per_backend:.0f} MB (goal <= 40 MB) "
          f"{'met' if per_backend <= 40 else 'NOT MET'}; total PSS {sum(x['pss'] for x in shared['after']):.0f} MB")
    if entry["random_weights"]:
        print("  (RANDOM weights with the real architecture: speed and memory are the real model's; vectors meaningless)")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
