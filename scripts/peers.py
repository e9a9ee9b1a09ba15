#!/usr/bin/env python3
"""Peer baselines for benches/kernels.rs, run on the GPU machine by .gpu/run.sh (written
by scripts/gpu-bench): what a user would get from PyTorch (CUDA) for the same work at
the same sizes. Times are CUDA events around each op, warm (3 untimed runs first), the
median of RUNS runs.

Prints one machine-readable line per measurement, which the kernels bench reads (file
named by PF_PEERS):

    peer <name> bytes=<input bytes> median_ns=<ns> gbps=<input bytes per ns> note=<text>

names: copy (d2d copy of the input; gbps counts bytes copied, bytes moved are twice
that), sum_u32 (torch.sum of the input as 32-bit words: CUB's DeviceReduce),
bincount_uniform / bincount_skewed (torch.bincount of the input as uint8, 256 bins,
inputs of the kernels' uniform and skewed shapes), e2e_sum_u32 (end to end as
benches/large_batch.rs measures the engine: a host tensor of the bytes `.to("cuda")`,
`torch.sum` of its 32-bit words, `.item()`; wall clock, not CUDA events). Python is a tool of the bench
script on the GPU machine, not a dependency of the crate.

    python3 scripts/peers.py [--bytes N ...] [--runs R]
"""

import argparse
import statistics
import sys


def timed(torch, fn, runs):
    """Median ns of `fn()` over `runs` warm runs, timed with CUDA events."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e6)  # ms -> ns
    return statistics.median(times)


def wall(fn, runs):
    """Median ns of `fn()` over `runs` warm runs, by the wall clock (for work that
    starts and ends on the host)."""
    import time

    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times)


def line(name, nbytes, ns, note):
    print(
        f"peer {name} bytes={nbytes} median_ns={ns:.0f} gbps={nbytes / ns:.1f} note={note}",
        flush=True,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bytes", type=int, nargs="+", default=[256 << 20, 1 << 30])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    try:
        import torch
    except ImportError as e:
        print(f"peers: no PyTorch here ({e}); no peer lines", file=sys.stderr)
        return 1
    if not torch.cuda.is_available():
        print("peers: PyTorch sees no CUDA device; no peer lines", file=sys.stderr)
        return 1
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(0).replace(" ", "_")
    print(f"peer-device {name} torch={torch.__version__}", flush=True)
    status = 0
    for nbytes in args.bytes:
        gen = torch.Generator(device=dev).manual_seed(7)
        x = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=dev, generator=gen)
        y = torch.empty_like(x)
        line("copy", nbytes, timed(torch, lambda: y.copy_(x), args.runs), "d2d_copy_")
        del y

        words = x.view(torch.int32)
        note = "uint32"
        try:
            w = x.view(torch.uint32)
            torch.sum(w)  # uint32 sums are missing in older PyTorch
            fn = lambda: torch.sum(w)  # noqa: E731
        except Exception:  # older PyTorch: the same bytes as int32, int32 accumulator
            note = "int32_view_int32_acc"
            fn = lambda: torch.sum(words, dtype=torch.int32)  # noqa: E731
        line("sum_u32", nbytes, timed(torch, fn, args.runs), note)

        # End to end from host memory (pageable, as an application's buffer is).
        host = x.cpu()
        view = torch.uint32 if note == "uint32" else torch.int32

        def e2e():
            words_on_gpu = host.to(dev).view(view)
            if note == "uint32":
                return torch.sum(words_on_gpu).item()
            return torch.sum(words_on_gpu, dtype=torch.int32).item()

        line("e2e_sum_u32", nbytes, wall(e2e, args.runs), f"h2d_sum_item_{note}")
        del host

        try:
            line(
                "bincount_uniform",
                nbytes,
                timed(torch, lambda: torch.bincount(x, minlength=256), args.runs),
                "uint8",
            )
            # The kernels' skewed shape: nine bytes in ten from four hot values.
            hot = torch.tensor([0, 1, 0x20, 0xFF], dtype=torch.uint8, device=dev)
            pick = torch.randint(0, 4, (nbytes,), device=dev, generator=gen)
            cold = torch.rand(nbytes, device=dev, generator=gen) < 0.1
            skewed = torch.where(cold, x, hot[pick])
            del pick, cold
            line(
                "bincount_skewed",
                nbytes,
                timed(torch, lambda: torch.bincount(skewed, minlength=256), args.runs),
                "uint8",
            )
            del skewed
        except Exception as e:  # noqa: BLE001
            print(f"peers: bincount failed: {e}", file=sys.stderr)
            status = 1
        del x, words
        torch.cuda.empty_cache()
    return status


if __name__ == "__main__":
    sys.exit(main())
