"""The fused IF kernels against the unfused reference, torch.compile (inductor) and ReLU:
the forward, and the gradient calibration trains with.

    python benchmarks/fused_kernels.py            # about 2 min: inductor compiles first

One thread, CPU time, ratios to ``torch.relu`` (out of place) on the same tensor in the same
run (the median of three repetitions); every variant is first checked bit-equal to the
reference. The in-place ReLU column is ``relu_(clone) − clone``.
"""
from __future__ import annotations

import sys
import time

import torch


def _seconds(run, repeats: int) -> float:
    run()
    start = time.process_time()
    for _ in range(repeats):
        run()
    return (time.process_time() - start) / repeats


def main() -> int:
    from parasnn.neurons.fused import cpu_kernels, reference_if_forward

    torch.set_num_threads(1)
    built = cpu_kernels()
    if built is None:
        print("the fused kernels cannot be built here", file=sys.stderr)
        return 1
    kernel = built.module

    def pure(x, shift, threshold, scale, time_steps: int):
        return torch.clamp(torch.floor((x * time_steps + shift) / threshold), 0, time_steps) * scale

    start = time.perf_counter()
    compiled = torch.compile(pure, dynamic=True)
    channels = 8
    compiled(torch.randn(2, channels, 4, 4), torch.full((channels, 1, 1), 0.5), torch.ones(channels, 1, 1),
             torch.ones(channels, 1, 1) / 8, 8)
    print(f"C++ operator loaded in {built.seconds:.1f} s; inductor compiled in {time.perf_counter() - start:.1f} s")
    print("| current | relu (µs) | unfused | C++ fused | inductor | in-place relu |")
    print("|---|---:|---:|---:|---:|---:|")
    for shape, repeats in (((1, 16, 8, 8), 4000), ((1, 64, 28, 28), 1000), ((128, 64, 16, 16), 20)):
        channels = shape[1]
        x = torch.randn(*shape)
        shift = torch.full((channels, 1, 1), 0.5)
        threshold = torch.rand(channels, 1, 1) + 0.5
        scale = threshold / 8
        reference = reference_if_forward(x, time_steps=8, pre_shift=None, shift=shift, threshold=threshold,
                                         scale=scale)
        assert torch.equal(kernel.if_forward(x, None, shift, threshold, scale, 8, False), reference)
        assert torch.equal(compiled(x, shift, threshold, scale, 8), reference)
        rows = []
        for _ in range(3):
            relu = _seconds(lambda: torch.relu(x), repeats)
            rows.append((relu,
                         _seconds(lambda: reference_if_forward(x, time_steps=8, pre_shift=None, shift=shift,
                                                               threshold=threshold, scale=scale), repeats) / relu,
                         _seconds(lambda: kernel.if_forward(x, None, shift, threshold, scale, 8, False),
                                  repeats) / relu,
                         _seconds(lambda: compiled(x, shift, threshold, scale, 8), repeats) / relu,
                         (_seconds(lambda: torch.relu_(x.clone()), repeats)
                          - _seconds(lambda: x.clone(), repeats)) / relu))
        relu, unfused, fused, inductor, in_place = sorted(rows, key=lambda row: row[2])[1]
        print(f"| {tuple(shape)} | {relu * 1e6:.1f} | {unfused:.2f} | {fused:.2f} | {inductor:.2f} | {in_place:.2f} |")
    _gradient_table()
    return 0


def _gradient_table() -> None:
    """The IF neuron's gradient (current and Δb, what calibration's stages compute), unfused
    (autograd's operations) and fused, as ratios to ReLU's gradient (``threshold_backward``)
    on the same tensor, at T = 2 and 8."""
    from parasnn.neurons.fused import fused_if_backward, reference_if_backward

    print()
    print("| current, T | relu backward (µs) | unfused IF backward | fused IF backward |")
    print("|---|---:|---:|---:|")
    for shape, repeats in (((64, 64, 28, 28), 5), ((64, 128, 14, 14), 10)):
        channels = shape[1]
        generator = torch.Generator().manual_seed(0)
        x, grad = torch.randn(*shape, generator=generator), torch.randn(*shape, generator=generator)
        view = (channels, 1, 1)
        threshold = torch.rand(view, generator=generator) + 0.5
        arguments = dict(pre_shift=torch.zeros(view), shift=threshold / 2, threshold=threshold,
                         temporal_bias=torch.rand(view, generator=generator) * 0.1, scale=threshold / 2, width=1.0)
        for time_steps in (2, 8):
            fused, reference = (function(grad, x, time_steps=time_steps, **arguments)
                                for function in (fused_if_backward, reference_if_backward))
            assert all(torch.equal(a, b) for a, b in zip(fused, reference))
            rows = []
            for _ in range(3):
                relu = _seconds(lambda: torch.ops.aten.threshold_backward(grad, x, 0.0), repeats)
                rows.append((relu,
                             _seconds(lambda: reference_if_backward(grad, x, time_steps=time_steps, **arguments),
                                      repeats) / relu,
                             _seconds(lambda: fused_if_backward(grad, x, time_steps=time_steps, **arguments),
                                      repeats) / relu))
            relu, unfused, fused_ratio = sorted(rows, key=lambda row: row[2])[1]
            print(f"| {tuple(shape)}, {time_steps} | {relu * 1e6:.0f} | {unfused:.2f} | {fused_ratio:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
