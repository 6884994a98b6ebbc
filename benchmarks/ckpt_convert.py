"""Benchmark: streaming HF FP8 <-> megatron conversion vs. the naive load-everything approach vs. the disk.

Synthetic DeepSeek-V3 FP8 checkpoints with the real layer shapes (hidden 7168, MLA ranks 1536/512, MoE
intermediate 2048; 16 routed + 1 shared expert per layer, 1/2/4 MoE layers; the vocabulary is cut to 8192 rows so
that a 1 GB checkpoint still has a full layer) of about 1, 2 and 4 GB are converted

* forward: HF FP8 -> megatron BF16, legacy per-rank files, PP = #layers (one layer per stage) x EP 4, so the
  per-rank shard size stays fixed while the number of ranks grows with the input; and torch_dist (streamed);
* reverse: megatron (legacy) -> HF FP8 with 128x128 block scales (the serving path);
* naive baseline: load every shard, dequantize everything, build all ranks' dicts, save (a size runs only when
  the machine's MemAvailable exceeds 1.5x the naive's expected peak, ~2.7x the input);
* ``--workers 1,2``: the legacy forward conversion with that many worker processes, each row beside the naive
  run of the same size: ``speed_ratio_vs_naive`` (naive seconds / ours) and ``rss_ratio_vs_naive`` (our peak
  resident memory of the whole process tree — parent + workers, sampled every 50 ms, and at least the
  parent's VmHWM — over the naive's).

Each measurement runs in a fresh subprocess (peak RSS = its VmHWM; CPU seconds recorded too). The disk is measured in the same run:
sequential write with fdatasync, then a read after POSIX_FADV_DONTNEED on that file. Inputs are evicted from the
page cache the same way before every conversion, so conversion reads are cold where the kernel honours the
advice (reported). The machine is shared: load averages are recorded; timings are noisy.

    python benchmarks/ckpt_convert.py [--sizes 1,2,4] [--naive-sizes 1,2,4] [--workers 1,2]
        [--formats legacy,torch_dist,reverse] [--tmp DIR]

``--formats legacy --naive-sizes ''`` reruns only the legacy forward and the reverse (which reads its output).
The previous results file is kept under ``"previous"`` in the new one, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "ckpt_convert.json"
LAYERS = {1: 1, 2: 2, 4: 4}


def bench_config(layers: int) -> dict:
    from adnanny_ckpt.synthetic import deepseek_v3_config

    c = deepseek_v3_config()
    c.update(num_hidden_layers=layers, first_k_dense_replace=0, n_routed_experts=16, n_group=4, topk_group=2,
             num_experts_per_tok=4, vocab_size=8192, num_nextn_predict_layers=0)
    return c


def evict(path: Path) -> None:
    """Drop our own files' pages from the page cache (per-file; does not touch other users' cache)."""
    for f in ([path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def disk_bandwidth(tmp: Path, nbytes: int = 1 << 30) -> dict:
    f = tmp / "disk_probe.bin"
    buf = os.urandom(64 << 20)
    t = time.perf_counter()
    with open(f, "wb") as fh:
        for _ in range(nbytes // len(buf)):
            fh.write(buf)
        fh.flush()
        os.fdatasync(fh.fileno())
    w = time.perf_counter() - t
    evict(f)
    t = time.perf_counter()
    with open(f, "rb") as fh:
        while fh.read(64 << 20):
            pass
    r = time.perf_counter() - t
    with open(f, "rb") as fh:  # a warm re-read shows what page-cache reads would cost
        t = time.perf_counter()
        while fh.read(64 << 20):
            pass
        warm = time.perf_counter() - t
    f.unlink()
    return {"write_gbps": nbytes / w / 1e9, "read_cold_gbps": nbytes / r / 1e9, "read_warm_gbps": nbytes / warm / 1e9,
            "bytes": nbytes}


def naive_forward(src: Path, out: Path, pp: int, ep: int) -> None:
    """The naive approach: everything in memory at once (what the streaming converter avoids)."""
    import torch
    from safetensors.torch import load_file

    from adnanny_ckpt.fp8 import dequantize_blocks
    from adnanny_ckpt.layout import plan_layout
    from adnanny_ckpt.names import mcore_params, model_spec_from_hf_config
    from adnanny_ckpt.shards import fuse, rank_chunks, rank_name

    cfg = json.loads((src / "config.json").read_text())
    raw: dict = {}
    for f in sorted(src.glob("*.safetensors")):
        raw.update(load_file(f))  # 1) load everything
    full = {}
    for n in list(raw):  # 2) dequantize everything
        if n.endswith("_scale_inv"):
            continue
        t = raw[n]
        full[n] = dequantize_blocks(t, raw[n + "_scale_inv"]) if t.dtype == torch.float8_e4m3fn else t
    spec = model_spec_from_hf_config(cfg)
    layout = plan_layout(spec, pp, ep).layout
    params = mcore_params(spec)
    fused = {p.name: fuse(spec, p, [full[h] for h in p.hf], spec.vocab_size) for p in params}  # 3) rename + fuse
    for s in range(pp):  # 4) save every rank
        for e in range(ep):
            sd = {}
            for c in rank_chunks(spec, params, layout, s, e, 0, te_names=False, padded_vocab=spec.vocab_size,
                                 owner_only=False):
                sd[c.local_name] = c.take(fused[c.param.name]).clone()
            d = out / "release" / rank_name(layout, s, e, 0)
            d.mkdir(parents=True, exist_ok=True)
            torch.save({"model": sd}, d / "model_optim_rng.pt")
            with open(d / "model_optim_rng.pt", "rb") as fh:
                os.fsync(fh.fileno())


class TreeRSS:
    """Peak resident memory of this process and all its children, sampled every 50 ms (worker processes are not
    in the parent's VmHWM)."""

    def __init__(self) -> None:
        import threading

        import psutil

        self.peak = 0
        self._stop = threading.Event()
        self._me = psutil.Process()
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self._me, *self._me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._th.join()
        return self.peak


def one(job: dict) -> dict:
    """Run one measurement (in this fresh process)."""
    src, out = Path(job["src"]), Path(job["out"])
    tree = TreeRSS()
    t = time.perf_counter()
    if job["kind"] == "forward":
        from adnanny_ckpt import hf_to_mcore

        hf_to_mcore(src, out, pp=job["pp"], ep=job["ep"], ckpt_format=job["format"], progress=False,
                    workers=job.get("workers", 1))
    elif job["kind"] == "reverse":
        from adnanny_ckpt import mcore_to_hf

        mcore_to_hf(src, out, fp8=True, max_shard_bytes=1 << 30, progress=False)
    else:
        naive_forward(src, out, job["pp"], job["ep"])
    sec = time.perf_counter() - t
    tree_peak = tree.stop()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    # peak RSS from VmHWM: ru_maxrss survives exec on Linux and would report the *parent's* high-water mark
    hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    # CPU seconds tell how much of the wall time was our own work on this shared, oversubscribed machine
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"seconds": sec, "cpu_seconds": ru.ru_utime + ru.ru_stime + kids.ru_utime + kids.ru_stime,
            "parent_peak_rss_gb": hwm_kb * 1024 / 1e9, "tree_peak_rss_gb": tree_peak / 1e9,
            "peak_rss_gb": max(hwm_kb * 1024, tree_peak) / 1e9}


def run_job(job: dict) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TORCHDYNAMO_DISABLE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    p = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,2,4")
    ap.add_argument("--naive-sizes", default="1,2,4")
    ap.add_argument("--workers", default="1,2", help="worker counts of the legacy forward rows")
    ap.add_argument("--formats", default="legacy",
                    help="legacy (forward, per --workers), torch_dist (forward, 1 worker), reverse (FP8 back to HF)")
    ap.add_argument("--tmp", default=None, help="scratch dir (needs ~4x the largest size free)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return

    from adnanny_ckpt.synthetic import write_synthetic_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="ckpt_bench_", dir=args.tmp))
    rows, load = [], [os.getloadavg()]
    try:
        disk = disk_bandwidth(tmp)
        load.append(os.getloadavg())
        for gb in [int(x) for x in args.sizes.split(",")]:
            layers = LAYERS[gb]
            src = write_synthetic_checkpoint(tmp / f"hf{gb}", bench_config(layers), dtype="fp8", seed=gb,
                                             max_shard_bytes=1 << 30, fast_fp8=True)
            in_bytes = dir_bytes(src)
            row = {"size_gb_nominal": gb, "input_bytes": in_bytes, "layers": layers, "pp": layers, "ep": 4,
                   "ranks": layers * 4}
            formats = args.formats.split(",")
            naive = None
            if str(gb) in args.naive_sizes.split(","):
                avail = next(int(x.split()[1]) * 1024 for x in open("/proc/meminfo") if x.startswith("MemAvailable"))
                if avail > 1.5 * 2.7 * in_bytes:
                    evict(src)
                    r = run_job({"kind": "naive", "src": str(src), "out": str(tmp / "n"), "pp": layers, "ep": 4})
                    nb = dir_bytes(tmp / "n")
                    naive = row["naive_forward"] = {**r, "output_bytes": nb, "gbps_in": in_bytes / r["seconds"] / 1e9}
                    shutil.rmtree(tmp / "n")
                    load.append(os.getloadavg())
                else:
                    row["naive_forward"] = {"skipped": f"MemAvailable {avail / 1e9:.1f} GB < 1.5 x the naive's "
                                                       f"expected peak {2.7 * in_bytes / 1e9:.1f} GB"}
            jobs = [("legacy", w) for w in [int(x) for x in args.workers.split(",")] if "legacy" in formats]
            jobs += [("torch_dist", 1)] if "torch_dist" in formats else []
            for fmt, workers in jobs:
                evict(src)
                r = run_job({"kind": "forward", "src": str(src), "out": str(tmp / "m"), "pp": layers, "ep": 4,
                             "format": fmt, "workers": workers})
                out_bytes = dir_bytes(tmp / "m")
                bound = in_bytes / (disk["read_cold_gbps"] * 1e9) + out_bytes / (disk["write_gbps"] * 1e9)
                rec = {**r, "workers": workers, "output_bytes": out_bytes, "gbps_in": in_bytes / r["seconds"] / 1e9,
                       "disk_bound_seconds": bound, "fraction_of_disk_bound": bound / r["seconds"]}
                if naive is not None:
                    rec["speed_ratio_vs_naive"] = naive["seconds"] / r["seconds"]
                    rec["rss_ratio_vs_naive"] = r["peak_rss_gb"] / naive["peak_rss_gb"]
                else:
                    rec["speed_ratio_vs_naive"] = rec["rss_ratio_vs_naive"] = None
                row[f"forward_{fmt}_w{workers}"] = rec
                if fmt == "legacy" and workers == 1 and "reverse" in formats:
                    evict(tmp / "m")
                    rr = run_job({"kind": "reverse", "src": str(tmp / "m"), "out": str(tmp / "h")})
                    hb = dir_bytes(tmp / "h")
                    rbound = out_bytes / (disk["read_cold_gbps"] * 1e9) + hb / (disk["write_gbps"] * 1e9)
                    row["reverse_fp8"] = {**rr, "output_bytes": hb, "gbps_in": out_bytes / rr["seconds"] / 1e9,
                                          "disk_bound_seconds": rbound, "fraction_of_disk_bound": rbound / rr["seconds"]}
                    shutil.rmtree(tmp / "h")
                shutil.rmtree(tmp / "m")
                load.append(os.getloadavg())
                print(f"  {gb} GB {fmt} w{workers}: {r['seconds']:.1f} s, {r['peak_rss_gb']:.2f} GB"
                      + (f" (naive {naive['seconds']:.1f} s, {naive['peak_rss_gb']:.2f} GB)" if naive else ""),
                      file=sys.stderr)
            shutil.rmtree(src)
            rows.append(row)
            partial = RESULTS.with_suffix(".partial.json")  # a killed run still leaves its finished rows
            partial.write_text(json.dumps({"rows": rows, "disk": disk, "loadavg_samples": load}, indent=2) + "\n")
            print(f"done {gb} GB", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    res = {"benchmark": "ckpt_convert", "disk": disk, "rows": rows, "loadavg_samples": load, "cpus": os.cpu_count(),
           "page_cache_note": "inputs evicted with POSIX_FADV_DONTNEED before each run; cold vs warm disk reads "
                              "are both reported — if they are close, the kernel/VM served reads from a host cache",
           "machine_note": "shared 2-core VM with other jobs running: timings are noisy",
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "args": {"sizes": args.sizes, "naive_sizes": args.naive_sizes, "formats": args.formats,
                    "workers": args.workers}}
    if RESULTS.exists():
        prev = json.loads(RESULTS.read_text())
        prev.pop("previous", None)  # one level of history is enough to compare
        res["previous"] = prev
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    RESULTS.with_suffix(".partial.json").unlink(missing_ok=True)
    print(f"disk: write {disk['write_gbps']:.2f} GB/s (fdatasync), read cold {disk['read_cold_gbps']:.2f} GB/s, "
          f"warm {disk['read_warm_gbps']:.2f} GB/s")
    hdr = (f"{'size':>5} {'method':<22} {'sec':>7} {'GB/s in':>8} {'% disk bound':>12} {'peak RSS GB':>11} "
           f"{'speed/naive':>11} {'RSS/naive':>9}")
    print(hdr)
    for row in rows:
        for key in sorted(k for k in row if k.startswith(("forward_", "reverse_", "naive_"))):
            r = row[key]
            if "seconds" not in r:
                continue
            frac = f"{100 * r['fraction_of_disk_bound']:.0f}%" if "fraction_of_disk_bound" in r else "-"
            sp = f"{r['speed_ratio_vs_naive']:.2f}" if r.get("speed_ratio_vs_naive") else "-"
            rs = f"{r['rss_ratio_vs_naive']:.2f}" if r.get("rss_ratio_vs_naive") else "-"
            print(f"{row['input_bytes'] / 1e9:>5.2f} {key:<22} {r['seconds']:>7.1f} {r['gbps_in']:>8.3f} "
                  f"{frac:>12} {r['peak_rss_gb']:>11.2f} {sp:>11} {rs:>9}")
    print(f"loadavg samples: {[tuple(round(x, 1) for x in s) for s in load]}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
