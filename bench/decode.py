"""RS-CoCa decoding speed: KV-cached ``generate`` vs open_clip-style full-prefix recompute, same weights.

Baseline ("recompute"): what open_clip's ``CoCa.generate`` does at every step — run the text tower and the
multimodal decoder over the whole prefix again (``generate(..., use_cache=False)``; the image is encoded once in
both). Candidate ("kv-cache"): ``generate(..., use_cache=True)``: text-tower and decoder self-attention keys and
values are cached, cross-attention keys/values computed once. Both produce the same tokens (checked here).

Model: coca_ViT-B-32 architecture (random weights), CPU, fp32, exactly ``--new-tokens`` new tokens
(``min_new_tokens = max_new_tokens``), greedy and beam search (3 beams), batch 1 and 8.

Usage::

    python bench/decode.py                # full grid, 1 timed repeat after a warm-up
    python bench/decode.py --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch


def _time(fn, repeats: int, warmup: int) -> tuple[float, torch.Tensor]:
    for _ in range(warmup):
        fn()
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-name", default="coca_ViT-B-32")
    parser.add_argument("--new-tokens", type=int, default=30)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing each setting")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's); on a shared, overloaded machine 1 thread gives stable numbers",
    )
    args = parser.parse_args(argv)

    from hqrs.modeling.convert_rs_coca import coca_config_from_open_clip
    from hqrs.modeling.modeling_rs_coca import RSCoCaModel

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = coca_config_from_open_clip(args.model_name)
    model = RSCoCaModel(config).eval()
    size = config.vision_config.image_size
    print(
        f"model={args.model_name} (random init) device=cpu dtype=fp32 threads={torch.get_num_threads()} "
        f"new_tokens={args.new_tokens} repeats={args.repeats} (best of, after {args.warmup} warm-up)"
    )
    header = f"{'decode':<8} {'batch':>5} {'recompute tok/s':>16} {'kv-cache tok/s':>15} {'speed-up':>9} {'same':>5}"
    print(header)
    print("-" * len(header))
    for beams in args.beams:
        for batch in args.batch_sizes:
            pixel_values = torch.randn(batch, 3, size, size)

            def run(use_cache: bool, pixel_values=pixel_values, beams=beams):
                with torch.inference_mode():
                    return model.generate(
                        pixel_values,
                        num_beams=beams,
                        do_sample=False,
                        max_new_tokens=args.new_tokens,
                        min_new_tokens=args.new_tokens,
                        use_cache=use_cache,
                    )

            t_base, out_base = _time(lambda: run(False), args.repeats, args.warmup)
            t_kv, out_kv = _time(lambda: run(True), args.repeats, args.warmup)
            tokens = batch * args.new_tokens
            name = "greedy" if beams == 1 else f"beam{beams}"
            same = torch.equal(out_base, out_kv)
            print(
                f"{name:<8} {batch:>5} {tokens / t_base:>16.1f} {tokens / t_kv:>15.1f} "
                f"{t_base / t_kv:>8.2f}x {str(same):>5}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
