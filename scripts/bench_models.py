"""Models side by side: for each model, from one run on the same photos and texts, pg_clip beside PyTorch
(transformers' CLIPModel / SiglipModel, rebuilt from the model directory as model/check_graph_fidelity.py does),
with the default model (ViT-B/32) as the yardstick:
  warm    one backend, embedding cache off, 1 intra-op thread: clip_embed_bytes($1, name) and clip_embed_text($1,
          name) on distinct photos and texts, round trip through psycopg (p50, p90), and the in-server mean (decode,
          preprocess and the tower for photos; tokenizing and the tower for texts, from clip_model_info's counters);
          PyTorch at 1 thread: get_image_features on the preprocessed pixels (batch 1) and get_text_features on the
          ids clip_text_tokens gives, the rounds interleaved with the server's so that both see the same machine;
  memory  BACKENDS backends that each embedded one photo: what the model added to their PSS, its private part per
          backend, and the shared rest (scripts/bench_memory.py's measurement, /proc/PID/smaps_rollup);
  cold    the first call of a fresh backend with the prepared model present (COLD backends, median), and once with
          the model's prepared cache removed (that backend prepares it);
  PyTorch as an application runs it: BACKENDS processes (scripts/bench_torch_process.py) started one after another,
          each importing torch and transformers, loading the model saved as safetensors (from_pretrained) and
          embedding one photo, their memory read while all are loaded (fewer when the next would not fit in the
          machine's memory: the total is then computed from those measured); the first one's time from its start
          to its first vector is PyTorch's cold start;
  scale   each model's warm image time over the default model's, measured in the same minutes (a default-model
          round after each of the model's rounds, in pg_clip and in PyTorch), beside the ratio of their image towers'
          FLOPs, computed here from each model's config.
Each model gets a prepared-model directory of its own under PREPARED (pg_clip.prepared_model_dir, set per session),
removed once the model is measured: so400m's prepared towers take several GB.

Run by scripts/bench_models.sh (which exports the models and starts the server). Reads the backends'
/proc/PID/smaps_rollup, so it must run on the server's machine as root or the server's user.

usage: bench_models.py DSN --prepared DIR --models default,a,b --rounds N --backends N --texts N
                       [--cold N] [--command TEXT] IMAGE...
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "model"))
sys.path.insert(0, str(ROOT / "scripts"))
import export  # noqa: E402  (model/export.py: the PyTorch model a directory came from, its preprocessing)
from bench_memory import memory  # noqa: E402

# Short product queries, as a shopper types them.
TEXTS = ["red backpack", "black running shoes", "leather handbag", "winter jacket with hood", "espresso machine",
         "wireless headphones", "children's bicycle", "desk lamp", "wool sweater", "phone case", "ceramic coffee mug",
         "stainless steel water bottle"]


def pct(values, q):
    return float(np.percentile(values, q * 100))


def mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20 if path.exists() else 0.0


def connect(dsn, name, prepared):
    """A backend whose calls that name no model use `name` (clip_model_info reports on it), with `prepared` as its
    prepared-model directory, 1 intra-op thread (as PyTorch below) and the embedding cache off."""
    conn = psycopg.connect(dsn, autocommit=True)
    for setting, value in (("client_min_messages", "error"), ("pg_clip.model", name),
                           ("pg_clip.prepared_model_dir", str(prepared)), ("pg_clip.intra_op_threads", "1"),
                           ("pg_clip.embedding_cache_size", "0")):
        conn.execute("SELECT set_config(%s, %s, false)", (setting, value))
    return conn


def info(conn):
    cur = conn.execute("SELECT * FROM clip_model_info()")
    return dict(zip([c.name for c in cur.description], cur.fetchone()))


def timed(conn, sql, args):
    """(round-trip ms, the vector as numpy)."""
    t0 = time.perf_counter()
    row = conn.execute(sql, args).fetchone()
    ms = (time.perf_counter() - t0) * 1e3
    return ms, np.array(json.loads(row[0]), np.float32)


def image_flops(config, family):
    """Multiply-adds x 2 of one image through the image tower (matrix products only: layer norms, softmax and
    activations are a few per cent of it), from the transformers config: the patch embedding; per layer the
    q/k/v/out projections (4 n D^2), the attention scores and their use (2 n^2 D) and the MLP (2 n D I), over n
    tokens (CLIP: the patches and a class token; SigLIP: the patches alone); then CLIP's projection of the class
    token, or SigLIP's attention-pooling (MAP) head: one learned query attending over the n tokens (its query and
    out projections D^2 each, keys and values 2 n D^2, scores 2 n D) and an MLP on that one token (2 D I)."""
    v = config.vision_config
    d, inner, layers = v.hidden_size, v.intermediate_size, v.num_hidden_layers
    patches = (v.image_size // v.patch_size) ** 2
    n = patches + (1 if family == "clip" else 0)
    macs = patches * v.num_channels * v.patch_size ** 2 * d
    macs += layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * inner)
    if family == "clip":
        macs += d * config.projection_dim
    elif getattr(v, "vision_use_head", True):
        macs += 2 * d * d + 2 * n * d * d + 2 * n * d + 2 * d * inner
    return 2 * macs


def features(out):
    import torch

    return out if torch.is_tensor(out) else out.pooler_output  # transformers 5 may wrap it in a ModelOutput


def torch_image(model, pixels):
    import torch

    times, vectors = [], []
    for i in range(len(pixels)):
        t0 = time.perf_counter()
        with torch.inference_mode():
            v = features(model.get_image_features(pixel_values=pixels[i:i + 1]))[0].numpy()
        times.append((time.perf_counter() - t0) * 1e3)
        vectors.append(v / np.linalg.norm(v))
    return times, vectors


def torch_text(model, ids):
    import torch

    times, vectors = [], []
    for row in ids:
        t0 = time.perf_counter()
        with torch.inference_mode():
            v = features(model.get_text_features(input_ids=row))[0].numpy()
        times.append((time.perf_counter() - t0) * 1e3)
        vectors.append(v / np.linalg.norm(v))
    return times, vectors


def server_round(conn, name, function, inputs):
    """One pass: round-trip ms per call, the vectors, and the in-server mean ms (clip_model_info's counters)."""
    before = info(conn)
    times, vectors = [], []
    for x in inputs:
        ms, v = timed(conn, f"SELECT {function}(%s, %s)::text", (x, name))
        times.append(ms)
        vectors.append(v)
    after = info(conn)
    calls = after["inferences"] - before["inferences"]
    in_server = (after["inference_ms_total"] + after["preprocess_ms_total"]
                 - before["inference_ms_total"] - before["preprocess_ms_total"])
    assert calls == len(inputs), f"{calls} inferences for {len(inputs)} calls: is the embedding cache off?"
    return times, vectors, in_server / calls


def cold(dsn, name, prepared, photo):
    """A fresh backend's first clip_embed_bytes: round-trip ms, and what clip_model_info says of the load."""
    with connect(dsn, name, prepared) as conn:
        ms, _ = timed(conn, "SELECT clip_embed_bytes(%s, %s)::text", (photo, name))
        i = info(conn)
    return {"ms": ms, "load_ms": i["load_ms"], "mode": i["load_mode"], "prepared_bytes": i["prepared_bytes"],
            "ort": i["onnxruntime_version"]}


def available_mb():
    return next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemAvailable")) / 1024


def torch_processes(folder: Path, class_name: str, count: int):
    """Starts up to `count` PyTorch processes on the model saved in `folder` (with pixels.npy beside it), one after
    another as an application's workers start, and reads their memory once all are loaded. Stops early when the
    machine's available memory is less than twice the first one's heap and 1 GB more (loading copies the
    weights). Returns each one's timings, memory and first vector as it started, and every one's memory once all
    are loaded."""
    log = open(folder / "processes.log", "w")
    processes, started = [], []
    try:
        while len(processes) < count:
            if started and available_mb() < 2 * started[0]["anon"] + 1024:
                break
            t0 = time.monotonic()
            p = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "bench_torch_process.py"), str(folder),
                                  class_name, str(folder / "pixels.npy")],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
            processes.append(p)
            line = p.stdout.readline()
            if not line:
                raise SystemExit(f"bench_torch_process.py failed: see {folder / 'processes.log'}")
            out = json.loads(line)
            out["wall_s"] = time.monotonic() - t0
            started.append({**out, **memory(p.pid)})
        loaded = [memory(p.pid) for p in processes]
    finally:
        for p in processes:
            p.stdin.close()
            p.wait()
        log.close()
    return started, loaded


class Yardstick:
    """The default model (ViT-B/32) kept warm beside the others, in pg_clip and in PyTorch: each model's image rounds
    are followed by one of its, so that the ratio of their times compares two measurements of the same minutes
    (this machine is shared: its load moves over a run). Its backend maps the default model's prepared files, which
    stay until the end of the run."""

    def __init__(self, args, paths, photos):
        import torch

        self.prepared = Path(args.prepared) / "default"
        self.photos = photos
        self.conn = connect(args.dsn, "default", self.prepared)
        path = self.conn.execute("SELECT path FROM clip_models() WHERE name = 'default'").fetchone()[0]
        manifest = json.loads((Path(path) / "manifest.json").read_text())
        self.model = export.model_from_manifest(manifest).eval()
        self.pixels = torch.from_numpy(export.pixel_values(paths, manifest["image"]["preprocess"]))
        self.round()  # warm-up

    def round(self):
        server = server_round(self.conn, "default", "clip_embed_bytes", self.photos)[0]
        return server, torch_image(self.model, self.pixels)[0]

    def close(self):
        self.conn.close()
        shutil.rmtree(self.prepared, ignore_errors=True)


def measure(args, name, photos, paths, texts, yardstick=None):
    """One model, every figure; its prepared directory is removed at the end but for the default model's, which
    the yardstick maps (`yardstick` None: this is the default model, its own yardstick)."""
    import torch

    prepared = Path(args.prepared) / name
    shutil.rmtree(prepared, ignore_errors=True)
    t_model = time.monotonic()
    print(f"[bench_models] {name}: cold start, prepared cache removed", flush=True)
    first = cold(args.dsn, name, prepared, photos[0])
    os.sync()  # the prepared files just written: dirty page cache would count as a backend's private memory
    print(f"[bench_models] {name}: cold start x {args.cold}, prepared cache present", flush=True)
    colds = [cold(args.dsn, name, prepared, photos[0]) for _ in range(args.cold)]

    print(f"[bench_models] {name}: PyTorch model, warm rounds", flush=True)
    conn = connect(args.dsn, name, prepared)
    path, family = conn.execute("SELECT path, family FROM clip_models() WHERE name = %s", (name,)).fetchone()
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    ids = [conn.execute("SELECT clip_text_tokens(%s, %s)", (t, name)).fetchone()[0] for t in texts]
    if family == "clip":
        # pg_clip runs CLIP's causal text tower on the ids up to <|endoftext|> (the vector equals the padded run's):
        # give PyTorch the same, as a batch of one without padding is.
        ids = [i[:i.index(49407) + 1] if 49407 in i else i for i in ids]
    ids = [torch.tensor([i], dtype=torch.int64) for i in ids]
    model = export.model_from_manifest(manifest).eval()
    flops = image_flops(model.config, family)
    pixels = torch.from_numpy(export.pixel_values(paths, manifest["image"]["preprocess"]))
    # Warm-up: the text tower loads (and is prepared) here; allocations settle on both sides.
    server_round(conn, name, "clip_embed_bytes", photos[:1])
    server_round(conn, name, "clip_embed_text", texts[:1])
    torch_image(model, pixels[:1])
    torch_text(model, ids[:1])
    r = {k: [] for k in ("img", "img_in", "timg", "txt", "txt_in", "ttxt", "b32", "tb32")}
    for _ in range(args.rounds):
        times, server_vectors, mean = server_round(conn, name, "clip_embed_bytes", photos)
        r["img"] += times
        r["img_in"].append(mean)
        times, torch_vectors = torch_image(model, pixels)
        r["timg"] += times
        r["img_cos"] = [float(a @ b) for a, b in zip(server_vectors, torch_vectors)]
        first_image_vector = torch_vectors[0]  # what the PyTorch processes below must give for the same photo
        if yardstick is not None:
            times, torch_times = yardstick.round()
            r["b32"] += times
            r["tb32"] += torch_times
        times, server_vectors, mean = server_round(conn, name, "clip_embed_text", texts)
        r["txt"] += times
        r["txt_in"].append(mean)
        times, torch_vectors = torch_text(model, ids)
        r["ttxt"] += times
        r["txt_cos"] = [float(a @ b) for a, b in zip(server_vectors, torch_vectors)]
    conn.close()

    print(f"[bench_models] {name}: PyTorch, up to {args.backends} processes", flush=True)
    folder = Path(args.prepared).parent / "torch-model"
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder)
    np.save(folder / "pixels.npy", pixels[:1].numpy())
    class_name = type(model).__name__
    del model, pixels
    os.sync()  # as for the prepared files: the saved folder in the page cache, written back
    started, loaded = torch_processes(folder, class_name, args.backends)
    shutil.rmtree(folder, ignore_errors=True)
    private = [m["private"] for m in loaded]
    torch_mem = {
        "measured": len(loaded), "pss": sum(m["pss"] for m in loaded), "private_p50": statistics.median(private),
        "shared": sum(m["pss"] for m in loaded) - sum(private), "rss": loaded[0]["rss"],
        "cold_s": started[0]["wall_s"], "load_s": started[0]["load_s"], "import_s": started[0]["import_s"],
        "cos": float(np.dot(started[0]["vector"], first_image_vector)),
    }

    print(f"[bench_models] {name}: {args.backends} backends, one photo each", flush=True)
    conns = [connect(args.dsn, name, prepared) for _ in range(args.backends)]
    pids = [c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in conns]
    base = [memory(pid) for pid in pids]
    for c in conns:  # one after another, as a pool's backends come to it
        c.execute("SELECT clip_embed_bytes(%s, %s)", (photos[0], name)).fetchone()
    after = [memory(pid) for pid in pids]
    modes = {info(c)["load_mode"] for c in conns}
    for c in conns:
        c.close()
    prepared_mb = mb(prepared)
    if yardstick is not None:
        shutil.rmtree(prepared, ignore_errors=True)
    if yardstick is None:
        r["b32"], r["tb32"] = r["img"], r["timg"]

    added_pss = sum(a["pss"] for a in after) - sum(b["pss"] for b in base)
    added_private = sum(a["private"] - b["private"] for a, b in zip(after, base))
    return {
        "name": name, "model_name": manifest["model_name"], "family": family, "dim": manifest["embedding_dim"],
        "random": manifest.get("random_weights"), "flops": flops,
        "image_size": manifest["image"]["preprocess"]["crop_size"],
        "img": r["img"], "img_in": statistics.mean(r["img_in"]), "timg": r["timg"], "b32": r["b32"], "tb32": r["tb32"],
        "txt": r["txt"], "txt_in": statistics.mean(r["txt_in"]), "ttxt": r["ttxt"],
        "img_cos": min(r["img_cos"]), "txt_cos": min(r["txt_cos"]),
        "text_ids": [int(i.shape[1]) for i in ids],
        "first": first, "colds": colds, "modes": modes,
        "pss": added_pss, "shared": added_pss - added_private,
        "private_p50": statistics.median(a["private"] for a in after),
        "heap_p50": statistics.median(a["anon"] - b["anon"] for a, b in zip(after, base)),
        "prepared_image_mb": (colds[0]["prepared_bytes"] or 0) / 2**20, "prepared_mb": prepared_mb,
        "seconds": time.monotonic() - t_model, "ort": colds[0]["ort"], "torch": torch_mem,
    }


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    ram = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")) / 2**20
    return f"{os.cpu_count()} cores ({cpu}), {ram:.0f} GB RAM, {platform.system()} {platform.release()}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dsn")
    ap.add_argument("--prepared", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--backends", type=int, default=8)
    ap.add_argument("--texts", type=int, default=8)
    ap.add_argument("--cold", type=int, default=3)
    ap.add_argument("--command", default=" ".join(sys.argv))
    ap.add_argument("images", nargs="+", type=Path)
    args = ap.parse_args()
    import torch
    import transformers

    torch.set_num_threads(1)  # as a pg_clip backend (pg_clip.intra_op_threads = 1)
    torch.set_num_interop_threads(1)
    names = args.models.split(",")
    if names[0] != "default":
        names = ["default"] + [n for n in names if n != "default"]  # the yardstick, measured in the same run
    photos = [p.read_bytes() for p in args.images]
    texts = (TEXTS * (args.texts // len(TEXTS) + 1))[:args.texts]
    assert len(set(texts)) == len(texts), f"at most {len(TEXTS)} distinct texts"
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load0 = os.getloadavg()
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
        listed = {row[0]: row[1] for row in conn.execute("SELECT name, problem FROM clip_models()")}
    missing = [n for n in names if n not in listed or listed[n]]
    if missing:
        raise SystemExit(f"bench_models.py: not usable under pg_clip.models_path: "
                         + ", ".join(f"{n} ({listed.get(n) or 'not listed'})" for n in missing))
    results = [measure(args, names[0], photos, args.images, texts)]
    yardstick = Yardstick(args, args.images, photos)
    results += [measure(args, n, photos, args.images, texts, yardstick) for n in names[1:]]
    yardstick.close()
    load1 = os.getloadavg()

    b32 = results[0]
    print(f"\n$ {args.command}")
    print(f"{started}; {machine()}; load average {load0[0]:.1f} at start, {load1[0]:.1f} at the end")
    print(f"PostgreSQL {server}, ONNX Runtime {b32['ort']} (pg_clip); PyTorch {torch.__version__}, transformers "
          f"{transformers.__version__}; 1 thread each; {len(photos)} photos and {len(texts)} texts x {args.rounds} "
          f"rounds per model, interleaved with PyTorch's")
    if any(r["random"] for r in results):
        print("RANDOM WEIGHTS (model/export.py --random --seed): the real architectures, so the same compute and "
              "memory as the real models; the vectors mean nothing.")

    print("\nWarm, ms per call, batch 1, one backend, embedding cache off (pg_clip: round trip through psycopg, and "
          "in the server: decode + preprocess + tower, or tokenize + tower; PyTorch: the tower alone)\n")
    print("| model | dim | image p50 / p90 | in server | PyTorch image | text p50 / p90 | in server | PyTorch text "
          "| image vs ViT-B/32: time (PyTorch) | FLOPs | time / FLOPs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        t_ratio = pct(r["img"], .5) / pct(r["b32"], .5)
        p_ratio = pct(r["timg"], .5) / pct(r["tb32"], .5)
        f_ratio = r["flops"] / b32["flops"]
        print(f"| {r['name']} ({r['model_name']}, {r['image_size']} px) | {r['dim']} "
              f"| {pct(r['img'], .5):.1f} / {pct(r['img'], .9):.1f} | {r['img_in']:.1f} | {pct(r['timg'], .5):.1f} "
              f"| {pct(r['txt'], .5):.1f} / {pct(r['txt'], .9):.1f} | {r['txt_in']:.1f} | {pct(r['ttxt'], .5):.1f} "
              f"| {t_ratio:.1f}x ({p_ratio:.1f}x) | {f_ratio:.1f}x ({r['flops'] / 1e9:.1f} GFLOP) "
              f"| {t_ratio / f_ratio:.2f} ({p_ratio / f_ratio:.2f}) |")

    print(f"\nMemory ({args.backends} backends, each having embedded one photo; /proc/PID/smaps_rollup) and cold "
          f"start (a fresh backend's first clip_embed_bytes, round trip; load = clip_model_info().load_ms)\n")
    print(f"| model | prepared image tower | {args.backends} backends: model PSS | shared | private per backend "
          f"(p50) | heap added (p50) | PyTorch, {args.backends} processes: PSS, whole processes (private each) "
          f"| cold, prepared present: first call (load) | PyTorch cold: first vector (load) | cold, cache removed: "
          f"first call (load) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        c_ms = statistics.median(c["ms"] for c in r["colds"])
        c_load = statistics.median(c["load_ms"] for c in r["colds"])
        t = r["torch"]
        if t["measured"] == args.backends:
            t_pss = f"{t['pss']:,.0f} MB"
        else:  # the processes that fit, and the rest as many private copies again
            t_pss = (f"~{t['shared'] + args.backends * t['private_p50']:,.0f} MB (computed from "
                     f"{t['measured']})")
        print(f"| {r['name']} | {r['prepared_image_mb']:,.0f} MB | {r['pss']:,.0f} MB | {r['shared']:,.0f} MB "
              f"| {r['private_p50']:.0f} MB | {r['heap_p50']:.0f} MB | {t_pss} ({t['private_p50']:,.0f} MB) "
              f"| {c_ms / 1e3:.2f} s ({c_load / 1e3:.2f} s) | {t['cold_s']:.1f} s ({t['load_s']:.1f} s) "
              f"| {r['first']['ms'] / 1e3:.1f} s ({r['first']['load_ms'] / 1e3:.1f} s) |")

    print("\n- image vs ViT-B/32: the warm image p50 over ViT-B/32's p50 measured in the same rounds (a ViT-B/32 "
          "round after each of the model's, in pg_clip and in PyTorch: a busy machine slows both alike); time / "
          "FLOPs: that ratio over the FLOP ratio (1.00: time grows exactly as the FLOPs; pg_clip's round trip, "
          "PyTorch's in brackets). FLOPs: the image tower's matrix products, from each model's config.")
    print(f"- model PSS: what the {args.backends} backends' PSS grew by; shared: that less the private memory they "
          f"gained (the mapped prepared weights and library code, counted once); private: all of a backend's private "
          "memory; heap added: its anonymous memory the model added.")
    print(f"- PyTorch processes: as an application's workers, started one after another, each importing torch and "
          f"transformers, loading the model saved by save_pretrained (safetensors) with from_pretrained, and "
          f"embedding one photo (get_image_features, 1 thread); PSS summed over the {args.backends} once all are "
          f"loaded; where fewer fit in this machine's memory, the total is those measured plus private copies for "
          f"the rest. PyTorch cold: the first process's time from its start to its first vector (Python, imports, "
          f"load, one image), the saved folder in the page cache; load: from_pretrained alone.")
    fresh = f"the median of {args.cold} fresh backends" if args.cold > 1 else "a fresh backend"
    print(f"- cold, prepared present: {fresh}, the prepared files in the page cache; cache removed: one backend that "
          "verifies the source files' checksums, prepares the image tower and writes it (fsynced) before its first "
          "inference.")
    for r in results:
        modes = ",".join(sorted(m for m in r["modes"] if m))
        print(f"- {r['name']}: load mode {modes}; prepared on disk {r['prepared_mb']:,.0f} MB (image and text towers; "
              f"removed after measuring); text ids {min(r['text_ids'])}-{max(r['text_ids'])}; pg_clip vs PyTorch, "
              f"same inputs: 1 - cos at most {1 - r['img_cos']:.1e} (images), {1 - r['txt_cos']:.1e} (texts); "
              f"PyTorch processes: {r['torch']['measured']} started, imports {r['torch']['import_s']:.1f} s, RSS "
              f"{r['torch']['rss']:,.0f} MB each, the saved model's vector vs the warm one 1 - cos "
              f"{1 - r['torch']['cos']:.1e}; "
              f"measured in {r['seconds']:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
