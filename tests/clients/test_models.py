"""Client test of several models side by side in one cluster (README, "Choosing a model"), on the regress
cluster (pg_clip preloaded, its auto-embed worker running), with models of RANDOM weights made by
model/export.py: the shapes and the cost are the real models', the vectors mean nothing.

  * every model under pg_clip.models_path is listed by clip_models() with its manifest's facts;
  * each one loads in a backend and gives, for a photo and for words, the vector that ONNX Runtime gives on the
    reference's inputs (transformers' PIL image processor for the model's preprocessing, and for SigLIP its
    tokenizer with the processor's padding): pixels, graph and tokens end to end; SigLIP's token ids equal;
  * the model is chosen by pg_clip.model (per session, and per role with ALTER ROLE ... SET) or named in the
    call, and one backend keeps several models loaded (no reload when switching back);
  * no silent mixing: a column recorded as one model's is refused to a search or a backfill with another (42804,
    before any inference), as is a model whose dimensions are not the column's; an unknown or invalid name;
  * two models in one database with their own columns: one column filled by CALL clip_backfill with model A,
    the other by automatic embedding with model B while the worker's own pg_clip.model is A;
  * an int8 graph exported with 8-bit weights (before 0.3.0) warns on a CPU without VNNI, 7-bit ones never.

usage: test_models.py CONNINFO INPUTS_DIR MODEL...   (MODEL: names under pg_clip.models_path to load and compare;
       the test sets pg_clip.models_path itself only if PG_CLIP_TEST_MODELS_PATH is given)
"""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import psycopg

import checklist
from checklist import check

conninfo, inputs = sys.argv[1], Path(sys.argv[2])
names = sys.argv[3:]
base = os.environ.get("PG_CLIP_TEST_HTTP", "http://127.0.0.1:28836").rstrip("/")
DB = "pg_clip_models"
PHOTO = inputs / "chelsea.png"
TEXTS = ["a red backpack", "Ein roter Rucksack mit  zwei   Fächern", "красный рюкзак", "水杯 🍵", "Ελληνικά ΟΔΟΣ",
         " ".join(["very long product description"] * 20)]
MIN_COSINE = 0.9999


def connect(db=DB, autocommit=True):
    conn = psycopg.connect(f"{conninfo} dbname={db}", autocommit=autocommit)
    conn.execute("SET client_min_messages = error")
    return conn


def one(conn, query, params=None):
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def vector(conn, query, params=None):
    text = one(conn, query, params)
    return None if text is None else np.array(json.loads(text), dtype=np.float64)


def sqlstate_of(conn, query, params=None):
    try:
        conn.execute(query, params)
        return "ok"
    except psycopg.Error as e:
        return e.sqlstate


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def inferences(conn):
    return one(conn, "SELECT inferences FROM clip_model_info()")


# ------------------------------------------------------------------------------------------- the reference


def session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def reference_pixels(manifest):
    """transformers' PIL-backend processor with the manifest's preprocessing (no hub, no defaults)."""
    from PIL import Image

    pre = manifest["image"]["preprocess"]
    resample = {"bicubic": 3, "bilinear": 2}[pre["resample"]]
    if pre.get("mode") == "squash":
        from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil as Processor
        processor = Processor(do_resize=True, size={"height": pre["crop_size"], "width": pre["crop_size"]},
                              resample=resample, do_rescale=True, rescale_factor=pre["rescale_factor"],
                              do_normalize=True, image_mean=pre["mean"], image_std=pre["std"])
    else:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Processor
        processor = Processor(do_resize=True, size={"shortest_edge": pre["shortest_edge"]}, resample=resample,
                              do_center_crop=True,
                              crop_size={"height": pre["crop_size"], "width": pre["crop_size"]},
                              do_rescale=True, rescale_factor=pre["rescale_factor"], do_normalize=True,
                              image_mean=pre["mean"], image_std=pre["std"], do_convert_rgb=True)
    with Image.open(PHOTO) as im:
        return processor(images=im.convert("RGB"), return_tensors="np")["pixel_values"].astype(np.float32)


def reference_siglip_ids(model_dir, spec, text):
    """SiglipProcessor(text, padding="max_length", truncation=True, max_length=64) on the manifest's tokenizer,
    written out: the file's pieces (no special tokens), [bos], cut to fit, [eos], padded."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / spec["file"]))
    text = text.lower() if spec.get("lowercase") else text
    pieces = tok.encode(text, add_special_tokens=False).ids
    head = [spec["bos_id"]] if spec.get("add_bos") else []
    tail = [spec["eos_id"]] if spec.get("add_eos") else []
    ids = head + pieces[: spec["max_length"] - len(head) - len(tail)] + tail
    return ids + [spec["pad_id"]] * (spec["max_length"] - len(ids))


def check_model(conn, name, model_dir):
    manifest = json.loads((model_dir / "manifest.json").read_text())
    dim = manifest["embedding_dim"]
    listed = conn.execute("SELECT model_version, dimensions, family, towers, random_weights, problem "
                          "FROM clip_models() WHERE name = %s", (name,)).fetchone()
    check(f"{name}: listed by clip_models() as its manifest says",
          listed is not None and listed[0] == manifest["model_version"] and listed[1] == dim
          and listed[2] == manifest.get("family", "clip") and listed[4] is True and listed[5] is None, listed)

    got = vector(conn, "SELECT clip_embed_bytes(%s, %s)::text", (PHOTO.read_bytes(), name))
    want = session(model_dir / manifest["image"]["onnx"]).run(None, {"pixel_values": reference_pixels(manifest)})[0][0]
    cos = cosine(got, want.astype(np.float64))
    check(f"{name}: photo -> {dim} dimensions, unit length, cosine to the reference {cos:.7f}",
          got.shape == (dim,) and abs(np.linalg.norm(got) - 1) < 1e-5 and cos >= MIN_COSINE)

    spec = manifest.get("text", {}).get("tokenizer")
    if "text" not in manifest:
        return
    text_session = session(model_dir / manifest["text"]["onnx"])
    worst, ids_equal = 1.0, True
    for text in TEXTS:
        ids = one(conn, "SELECT clip_text_tokens(%s, %s)", (text, name))
        if spec is not None:
            want_ids = reference_siglip_ids(model_dir, spec, text)
            ids_equal &= ids == want_ids
            if ids != want_ids:
                print(f"     ids differ for {text!r}: {ids} vs {want_ids}")
        want = text_session.run(None, {"input_ids": np.array([ids], np.int64)})[0][0].astype(np.float64)
        got = vector(conn, "SELECT clip_embed_text(%s, %s)::text", (text, name))
        worst = min(worst, cosine(got, want))
    if spec is not None:
        check(f"{name}: token ids equal the tokenizer's with the processor's padding ({len(TEXTS)} texts)", ids_equal)
    check(f"{name}: words -> the text tower's vector, worst cosine {worst:.7f}", worst >= MIN_COSINE)


# ------------------------------------------------------------------------------------------- the test


def wait_until(what, condition, timeout):
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.2)
    print(f"     (gave up waiting for {what} after {timeout} s)")
    return None


def cpu_has_vnni():
    """What pg_clip asks the CPU (is_x86_feature_detected): VNNI makes ONNX Runtime's u8s8 kernels exact."""
    import platform

    if platform.machine() != "x86_64":
        return True  # no u8s8 kernel with a saturating instruction elsewhere: nothing to warn about
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    return "avx512_vnni" in flags or "avx_vnni" in flags


def check_int8_saturation_warning(models_path):
    """An int8 graph exported before 0.3.0 (8-bit weights) warns on a CPU without VNNI, once per load; 7-bit
    weights (what model/export.py makes now) never do. b32-other's files under a manifest that says 8-bit."""
    source = models_path / "b32-other"
    old = models_path / "b32-8bit-int8"
    if old.exists():
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    old.mkdir()
    manifest = json.loads((source / "manifest.json").read_text())
    for name in os.listdir(source):
        if name != "manifest.json" and not name.startswith("."):
            os.symlink(source / name, old / name)
    for section in ("image_int8", "text_multilingual_int8"):
        manifest[section]["quantization"]["reduce_range"] = False
    (old / "manifest.json").write_text(json.dumps(manifest))
    os.chmod(old, 0o755)
    os.chmod(old / "manifest.json", 0o644)
    photo = PHOTO.read_bytes()

    def warnings_of(model):
        conn = psycopg.connect(f"{conninfo} dbname={DB}", autocommit=True)
        said = []
        conn.add_notice_handler(lambda diag: said.append(diag.message_primary or ""))
        conn.execute("SET client_min_messages = warning")
        conn.execute("SET pg_clip.image_precision = int8")
        conn.execute("SELECT clip_embed_bytes(%s, %s)", (photo, model))
        conn.execute("SET pg_clip.text_model = multilingual")
        conn.execute("SET pg_clip.text_precision = int8")
        conn.execute("SELECT clip_embed_text('красный рюкзак', %s)", (model,))
        conn.execute("SELECT clip_embed_bytes(%s, %s)", (photo, model))  # loaded: no second warning
        conn.close()
        return [m for m in said if "has no VNNI" in m]

    vnni = cpu_has_vnni()
    eight_bit, seven_bit = warnings_of("b32-8bit-int8"), warnings_of("b32-other")
    check(f"int8 graphs with 8-bit weights warn on a CPU without VNNI, once per graph (this CPU: "
          f"{'VNNI' if vnni else 'no VNNI'}; {len(eight_bit)} warnings)",
          len(eight_bit) == (0 if vnni else 2)
          and all(w.startswith(f"pg_clip: the int8 {tower} graph") for w, tower in
                  zip(eight_bit, ("image", "text-multilingual"))), eight_bit)
    check("int8 graphs with 7-bit weights (model/export.py since 0.3.0) never warn", seven_bit == [], seven_bit)
    for f in old.iterdir():
        f.unlink()
    old.rmdir()


def main():
    admin = psycopg.connect(f"{conninfo} dbname=postgres", autocommit=True)
    if os.environ.get("PG_CLIP_TEST_MODELS_PATH"):
        admin.execute(f"ALTER SYSTEM SET pg_clip.models_path = '{os.environ['PG_CLIP_TEST_MODELS_PATH']}'")
        admin.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)
    admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {DB}")
    admin.execute(f"ALTER DATABASE {DB} SET pg_clip.allowed_private_networks = '127.0.0.1/32'")
    admin.execute("DROP ROLE IF EXISTS clip_models_app")
    admin.execute("CREATE ROLE clip_models_app LOGIN")
    conn = connect()
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    conn.execute("CREATE EXTENSION pg_clip")
    models_path = Path(one(conn, "SHOW pg_clip.models_path"))
    listed = [r[0] for r in conn.execute("SELECT name FROM clip_models() ORDER BY name").fetchall()]
    check("clip_models() lists default and every model asked for", "default" in listed and set(names) <= set(listed),
          listed)

    # Each model: loads, and computes what the reference computes.
    for name in names:
        check_model(conn, name, models_path / name)

    # Each model's weights are shared by the backends: prepared once, mapped by each (as the default's are).
    for name in names:
        conn.execute("SELECT set_config('pg_clip.model', %s, false)", (name,))
        mode = conn.execute("SELECT load_mode, prepared_path IS NOT NULL, model_version FROM clip_model_info()").fetchone()
        other = connect()
        other.execute("SELECT set_config('pg_clip.model', %s, false)", (name,))
        other.execute("SELECT clip_embed_bytes(%s)", (PHOTO.read_bytes(),))
        second = other.execute("SELECT load_mode FROM clip_model_info()").fetchone()
        other.close()
        check(f"{name}: its weights are shared between backends (this one {mode[0]}, another one {second[0]})",
              mode[0] in ("shared", "prepared") and mode[1] and second[0] == "shared", (mode, second))
    conn.execute("RESET pg_clip.model")

    # The same backend switches between models without reloading them.
    other = names[0]
    conn.execute("SELECT clip_unload_model()")
    conn.execute("SELECT clip_embed_text('warm', 'default'), clip_embed_text('warm', %s)", (other,))
    loads = one(conn, "SELECT load_ms FROM clip_model_info()")
    a = vector(conn, "SELECT clip_embed_text('switch one', 'default')::text")
    b = vector(conn, "SELECT clip_embed_text('switch one', %s)::text", (other,))
    c = vector(conn, "SELECT clip_embed_text('switch two', 'default')::text")
    check("one backend keeps both models loaded: switching back does not reload (load time unchanged)",
          one(conn, "SELECT load_ms FROM clip_model_info()") == loads and a is not None and b is not None
          and c is not None)

    # pg_clip.model per session and per role; the call's own name wins over the setting.
    conn.execute("SELECT set_config('pg_clip.model', %s, false)", (other,))
    check("pg_clip.model chooses the model of calls that name none",
          one(conn, "SELECT in_use FROM clip_models() WHERE name = %s", (other,)) is True
          and np.allclose(vector(conn, "SELECT clip_embed_text('a cup')::text"),
                          vector(conn, "SELECT clip_embed_text('a cup', %s)::text", (other,))))
    check("a model named in the call is used whatever pg_clip.model says",
          np.allclose(vector(conn, "SELECT clip_embed_text('a cup', 'default')::text"),
                      vector(connect(), "SELECT clip_embed_text('a cup')::text")))
    conn.execute("RESET pg_clip.model")
    admin.execute(f"ALTER ROLE clip_models_app IN DATABASE {DB} SET pg_clip.model = '{other}'")
    conn.execute("GRANT USAGE ON SCHEMA public TO clip_models_app")
    app = psycopg.connect(f"{conninfo} dbname={DB} user=clip_models_app", autocommit=True)
    check("ALTER ROLE ... IN DATABASE ... SET pg_clip.model chooses an application role's model",
          one(app, "SHOW pg_clip.model") == other)
    check("an unknown model is 58P01 with the installed ones in the HINT, an invalid name 22023",
          sqlstate_of(conn, "SELECT clip_embed_text('x', 'no-such-model')") == "58P01"
          and sqlstate_of(conn, "SELECT clip_embed_text('x', '../model')") == "22023")

    # Two models side by side in one table, and no silent mixing.
    dims = {n: one(conn, "SELECT dimensions FROM clip_models() WHERE name = %s", (n,)) for n in ["default", *names]}
    wide = next((n for n in names if dims[n] != dims["default"]), None)
    same = next((n for n in names if dims[n] == dims["default"]), None)
    conn.execute(f"CREATE TABLE products (id int PRIMARY KEY, image_url text, image_embedding vector({dims['default']}),"
                 f" image_embedding_v2 vector({dims[wide or other]}))")
    conn.execute("INSERT INTO products SELECT i, %s || '/img/chelsea.png?k=' || i, NULL, NULL FROM generate_series(1, 6) i",
                 (base,))
    conn.execute("CALL clip_backfill('products', 'image_url', 'image_embedding')")
    check("the backfill embedded every row", one(conn, "SELECT count(*) FROM products WHERE image_embedding IS NULL") == 0)
    check("CALL clip_backfill with the default model records the column as the default model's",
          conn.execute("SELECT model, dimensions FROM clip_vector_columns WHERE vector_column = 'image_embedding'")
          .fetchone() == ("default", dims["default"]))
    photo = PHOTO.read_bytes()
    if same:
        before = inferences(conn)
        state = sqlstate_of(conn, "SELECT id FROM products ORDER BY image_embedding <=> clip_embed_bytes(%s, %s) LIMIT 3",
                            (photo, same))
        check(f"a search of the default model's column with {same} (same dimensions) is 42804, with no inference",
              state == "42804" and inferences(conn) == before, state)
        state = sqlstate_of(conn, f"SELECT id FROM products ORDER BY image_embedding <=> clip_embed_text('cup', '{same}') "
                            "LIMIT 3")
        check("... and with the model's name written into the query", state == "42804", state)
        # The check walks the whole query tree: a search nested in a subquery, a CTE or a sublink is found as
        # well as a top-level one.
        search = f"SELECT id FROM products ORDER BY image_embedding <=> clip_embed_text('cup', '{same}') LIMIT 3"
        nested = {"a subquery": f"SELECT * FROM ({search}) s",
                  "a CTE": f"WITH hits AS ({search}) SELECT * FROM hits",
                  "a sublink": f"SELECT 1 WHERE EXISTS ({search})"}
        states = {where: sqlstate_of(conn, sql) for where, sql in nested.items()}
        check("... and when the search is nested in a subquery, a CTE or a sublink",
              all(s == "42804" for s in states.values()), states)
        conn.execute("SELECT set_config('pg_clip.model', %s, false)", (same,))
        check("... also when the model comes from pg_clip.model, and for clip_embed_text",
              sqlstate_of(conn, "SELECT id FROM products ORDER BY image_embedding <=> clip_embed_text('cup') LIMIT 3")
              == "42804")
        check(f"CALL clip_backfill of the default model's column with {same} is 42804",
              sqlstate_of(conn, "CALL clip_backfill('products', 'image_url', 'image_embedding')") == "42804")
        conn.execute("RESET pg_clip.model")
    if wide:
        state = sqlstate_of(conn, "SELECT id FROM products ORDER BY image_embedding <=> clip_embed_bytes(%s, %s) LIMIT 3",
                            (photo, wide))
        check(f"a search of a vector({dims['default']}) column with {wide} ({dims[wide]} dimensions) is 42804", state == "42804",
              state)
    check("the default model's search of its own column works",
          len(conn.execute("SELECT id FROM products ORDER BY image_embedding <=> clip_embed_bytes(%s) LIMIT 3",
                           (photo,)).fetchall()) == 3)

    # The second column filled by automatic embedding with the other model, while the worker's pg_clip.model
    # (the server's) is the default: the worker uses the column's recorded model.
    v2 = wide or other
    conn.execute("SELECT set_config('pg_clip.model', %s, false)", (v2,))
    check(f"clip_auto_embed of image_embedding_v2 with {v2} while the session's default column stays the default's",
          sqlstate_of(conn, "SELECT clip_auto_embed('products', 'image_url', 'image_embedding_v2')") == "ok")
    conn.execute("RESET pg_clip.model")
    took = wait_until("the worker's v2 vectors", lambda: one(
        conn, "SELECT count(*) FROM products WHERE image_embedding_v2 IS NULL") == 0, 180)
    want = vector(conn, "SELECT clip_embed_url(%s, %s)::text", (f"{base}/img/chelsea.png?k=1", v2))
    got = vector(conn, "SELECT image_embedding_v2::text FROM products WHERE id = 1")
    check(f"the worker filled image_embedding_v2 with {v2}'s vectors ({took and round(took, 1)} s), not the default's",
          took is not None and got is not None and cosine(got, want) >= MIN_COSINE)
    conn.execute("INSERT INTO products VALUES (7, %s, NULL, NULL)", (f"{base}/img/chelsea.png?k=7",))
    took = wait_until("a new product's v2 vector", lambda: one(
        conn, "SELECT image_embedding_v2 IS NOT NULL FROM products WHERE id = 7"), 60)
    check("a new product gets its v2 vector from the worker", took is not None)
    check(f"search of image_embedding_v2 with {v2} named in the query works",
          len(conn.execute("SELECT id FROM products ORDER BY image_embedding_v2 <=> clip_embed_bytes(%s, %s) LIMIT 3",
                           (photo, v2)).fetchall()) == 3)
    check("clip_forget_vector_column forgets a column's record (the owner)",
          one(conn, "SELECT clip_forget_vector_column('products', 'image_embedding')") is True
          and one(conn, "SELECT count(*) FROM clip_vector_columns WHERE vector_column = 'image_embedding'") == 0)
    conn.execute("SELECT clip_auto_embed_stop('products')")
    if "b32-other" in names:
        check_int8_saturation_warning(models_path)
    app.close()
    conn.close()
    admin.execute(f"DROP DATABASE {DB} WITH (FORCE)")
    admin.execute("DROP ROLE clip_models_app")
    checklist.finish("models")


if __name__ == "__main__":
    main()
