"""Crawl throughput: ours (stages.crawl.Fetcher) against img2dataset, same URLs, same run.

    python bench/crawl.py [--urls 500] [--threads 16] [--repeats 2]

A loopback server (its own process, so it does not share a GIL with either client) serves the
shared photos under ``--urls`` distinct URLs /img/<i>.jpg, cycling the photos; each body gets a
few unique bytes after the JPEG end marker (still a valid JPEG; no two URLs share an image_id).

Both sides do the same work per URL: HTTP GET, decode, size check, sha256, and one Parquet
file with the original bytes. Ours: one Fetcher call over all rows (one crawl task) with
``--threads`` threads, then ``images_table`` + zstd Parquet; measured twice, with the default
``fast_jpeg_verify`` (libjpeg decodes every block, inverse DCT at 1/8 scale) and with a decode at
full size like img2dataset's cv2.imdecode. img2dataset: its CLI in
.venv-img2dataset (created here when missing: img2dataset pins old dependencies) with
processes_count=1, the same thread_count, resize_mode=no, skip_reencode (the original bytes
are kept), compute_hash=sha256, output_format=parquet, retries 0. Its time is the shard
duration it records itself (from reading its shard to closing its Parquet file), so Python
start-up and imports count on neither side; its wall time including start-up is printed too.

Runs alternate (img2dataset, ours, img2dataset, ours, ...) and the best of each is compared.
Prints one JSON object; the machine is shared, so compare numbers from one run only.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PHOTOS = ROOT.parent / "shared" / "data" / "photos"
I2D_VENV = ROOT / ".venv-img2dataset"


def _photos() -> list[bytes]:
    paths = sorted(PHOTOS.glob("*.jpg")) or sorted((ROOT / "data" / "samples").glob("*.jpg"))
    return [p.read_bytes() for p in paths]


def body(photos: list[bytes], i: int) -> bytes:
    """Photo i mod len(photos) with 8 unique bytes after its end marker."""
    return photos[i % len(photos)] + b"bench" + i.to_bytes(3, "big")


def serve(queue: mp.Queue, count: int) -> None:
    """Serve /img/<i>.jpg for i < count on 127.0.0.1 until killed; put the port on ``queue``."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    photos = _photos()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            try:
                i = int(self.path.removeprefix("/img/").removesuffix(".jpg"))
                assert 0 <= i < count
            except (ValueError, AssertionError):
                self.send_error(404)
                return
            data = body(photos, i)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    queue.put(server.server_address[1])
    server.serve_forever()


def run_ours(urls: list[str], threads: int, out: Path, fast_jpeg_verify: bool = True) -> dict:
    import numpy as np
    import pyarrow.parquet as pq

    from stages.crawl import CrawlConfig, Fetcher, images_table

    cfg = CrawlConfig(threads=threads, retries=0, timeout_s=30, allow_private_addresses=True,
                      fast_jpeg_verify=fast_jpeg_verify)
    batch = {"url": np.array(urls, dtype=object), "row": np.arange(len(urls)),
             "alt_text": np.array([None] * len(urls), dtype=object),
             "source": np.array(["bench"] * len(urls), dtype=object)}
    start = time.perf_counter()
    table = images_table(Fetcher(cfg)(batch))
    pq.write_table(table, out / "images.parquet", compression="zstd")
    seconds = time.perf_counter() - start
    status = table.column("status").to_pylist()
    ok = status.count("ok")
    assert len(set(table.column("image_id").to_pylist())) == len(urls), "image ids should be unique"
    return {"seconds": seconds, "ok": ok, "images_per_s": ok / seconds}


def ensure_img2dataset() -> Path:
    python = I2D_VENV / "bin" / "python"
    if not (I2D_VENV / "bin" / "img2dataset").exists():
        subprocess.run([sys.executable, "-m", "venv", str(I2D_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "img2dataset"], check=True)
    return I2D_VENV / "bin" / "img2dataset"


def run_img2dataset(exe: Path, url_file: Path, threads: int, out: Path, count: int) -> dict:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(no_proxy="127.0.0.1,localhost", NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled")
    args = [str(exe), f"--url_list={url_file}", "--input_format=txt", f"--output_folder={out}",
            "--output_format=parquet", "--processes_count=1", f"--thread_count={threads}",
            "--resize_mode=no", "--skip_reencode=True", "--encode_format=jpg", "--compute_hash=sha256",
            "--timeout=30", "--retries=0", "--disallowed_header_directives=[]", "--enable_wandb=False",
            "--distributor=multiprocessing", f"--number_sample_per_shard={count}"]
    start = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"img2dataset failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    seconds = sum(s["duration"] for s in stats)
    ok = sum(s["successes"] for s in stats)
    return {"seconds": seconds, "ok": ok, "images_per_s": ok / seconds, "wall_seconds_with_startup": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=500)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    exe = ensure_img2dataset()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    server = ctx.Process(target=serve, args=(queue, args.urls), daemon=True)
    server.start()
    try:
        port = queue.get(timeout=60)
        urls = [f"http://127.0.0.1:{port}/img/{i}.jpg" for i in range(args.urls)]
        ours, ours_full, theirs = [], [], []
        with tempfile.TemporaryDirectory(prefix="bench-crawl-") as tmp:
            url_file = Path(tmp) / "urls.txt"
            url_file.write_text("\n".join(urls) + "\n")
            for r in range(args.repeats):
                theirs.append(run_img2dataset(exe, url_file, args.threads, Path(tmp) / f"i2d-{r}", args.urls))
                for name, runs, fast in (("ours", ours, True), ("ours-full", ours_full, False)):
                    (Path(tmp) / f"{name}-{r}").mkdir()
                    runs.append(run_ours(urls, args.threads, Path(tmp) / f"{name}-{r}", fast_jpeg_verify=fast))
    finally:
        server.kill()
    best_ours, best_full, best_theirs = (max(runs, key=lambda x: x["images_per_s"]) for runs in (ours, ours_full, theirs))
    print(json.dumps({
        "urls": args.urls,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "ours_images_per_s": round(best_ours["images_per_s"], 1),
        "img2dataset_images_per_s": round(best_theirs["images_per_s"], 1),
        "ratio_ours_over_img2dataset": round(best_ours["images_per_s"] / best_theirs["images_per_s"], 2),
        "ours_full_decode_images_per_s": round(best_full["images_per_s"], 1),
        "ratio_full_decode_over_img2dataset": round(best_full["images_per_s"] / best_theirs["images_per_s"], 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "ours_runs": ours,
        "ours_full_decode_runs": ours_full,
        "img2dataset_runs": theirs,
    }, indent=2))


if __name__ == "__main__":
    main()
