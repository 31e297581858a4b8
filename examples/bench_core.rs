//! The compute floor for one image, outside Postgres: decode + preprocess (the extension's own pure code)
//! and ONNX Runtime inference (the extension's own session code), timed separately, same model and
//! thread count as a backend. scripts/bench.sh prints these next to clip_embed_bytes inside the server.
//!
//! usage: bench_core <model_dir> <libonnxruntime.so> <rounds> <image>...
use pg_clip::image::{preprocess_into, ImageLimits};
use pg_clip::model::{
    encoder::{Precision, Tower, TowerKind, WeightSharing},
    manifest::ModelDir,
    runtime,
};
use std::path::Path;
use std::time::Instant;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: bench_core <model_dir> <libonnxruntime.so> <rounds> <image>...");
        std::process::exit(2);
    }
    let model = ModelDir::open(Path::new(&args[1])).expect("model");
    let runtime = runtime::runtime(Path::new(&args[2])).expect("onnxruntime");
    let rounds: usize = args[3].parse().expect("rounds");
    let images: Vec<Vec<u8>> = args[4..].iter().map(|p| std::fs::read(p).expect("image")).collect();
    let config = model.manifest.preprocess_config();
    let limits = ImageLimits { max_bytes: 64 << 20, max_pixels: 100_000_000 };
    // A private session never waits for another process, so there is nothing to interrupt.
    let (mut encoder, _) =
        Tower::load(runtime, model, TowerKind::Image, Precision::Fp32, 1, &WeightSharing::Private, &mut || {})
            .expect("session");
    let mut pixels = vec![0f32; encoder.tensor_len()];
    // Warm-up: first runs allocate ONNX Runtime's arena.
    for bytes in images.iter().take(3) {
        preprocess_into(bytes, &limits, &config, &mut pixels).expect("preprocess");
        encoder.embed(&pixels, 1).expect("inference");
    }
    let (mut pre, mut inf, mut total) = (vec![], vec![], vec![]);
    for _ in 0..rounds {
        for bytes in &images {
            let t0 = Instant::now();
            preprocess_into(bytes, &limits, &config, &mut pixels).expect("preprocess");
            let t1 = Instant::now();
            std::hint::black_box(encoder.embed(&pixels, 1).expect("inference"));
            let t2 = Instant::now();
            pre.push((t1 - t0).as_secs_f64() * 1e3);
            inf.push((t2 - t1).as_secs_f64() * 1e3);
            total.push((t2 - t0).as_secs_f64() * 1e3);
        }
    }
    for v in [&mut pre, &mut inf, &mut total] {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    }
    println!(
        "{{\"preprocess_p50\":{:.3},\"preprocess_p95\":{:.3},\"inference_p50\":{:.3},\"inference_p95\":{:.3},\"total_p50\":{:.3},\"total_p95\":{:.3},\"n\":{}}}",
        percentile(&pre, 0.5), percentile(&pre, 0.95), percentile(&inf, 0.5), percentile(&inf, 0.95),
        percentile(&total, 0.5), percentile(&total, 0.95), total.len()
    );
}
