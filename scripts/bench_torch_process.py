"""One PyTorch process started as an application starts its embedding model, for scripts/bench_models.py: Python
and the imports, transformers' from_pretrained of a saved model folder (safetensors), and a first
get_image_features on preprocessed pixels (batch 1, 1 thread, as the benchmark's warm PyTorch). It prints one JSON
line (its timings and the first vector), then waits for its standard input to close, so that the benchmark can
read its memory (/proc/PID/smaps_rollup) while the model is loaded.

Imports only what such an application needs (numpy, torch, transformers): the benchmark's own modules would
make the cold start look slower than it is.

usage: bench_torch_process.py MODEL_DIR CLASS PIXELS.npy   (CLASS: CLIPModel or SiglipModel)
"""
import json
import sys
import time

started = time.monotonic()
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402


def main():
    folder, class_name, pixels_path = sys.argv[1:4]
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    imported = time.monotonic()
    model = getattr(transformers, class_name).from_pretrained(folder).eval()
    loaded = time.monotonic()
    pixels = torch.from_numpy(np.load(pixels_path))
    with torch.inference_mode():
        out = model.get_image_features(pixel_values=pixels)
    vector = (out if torch.is_tensor(out) else out.pooler_output)[0].numpy()
    first = time.monotonic()
    print(json.dumps({"import_s": imported - started, "load_s": loaded - imported, "first_s": first - loaded,
                      "vector": (vector / np.linalg.norm(vector)).tolist()}), flush=True)
    sys.stdin.read()  # the benchmark reads this process's memory, then closes our stdin


if __name__ == "__main__":
    main()
