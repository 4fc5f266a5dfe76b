"""MSE of MBE-neuron fits of GELU versus bases N and time steps T (docs/mbe.md).

    PYTHONPATH=src python benchmarks/mbe_fit.py [--bases 1 2 4 8] [--time-steps 2 4 8 16]

Two input distributions: (a) uniform on [-10, 10]; (b) MiniLM-like GELU inputs, mostly
negative and concentrated near 0: 200 000 draws of N(-1, 1.5^2) clipped to [-12, 8]
(seed 0). The MSE is measured in float64 on an independent set of 200 000 draws of the
same distribution (seed 1; a uniform grid for (a)), not on the fit's own samples.
Also prints the other scalar functions at N = 4, T = 8. Fits are not cached (fresh runs).
Prints Markdown tables.
"""
from __future__ import annotations

import argparse
import time

import torch

from parasnn.neurons.mbe_fit import fit_mbe
from parasnn.neurons.mbe_functions import exact_values


def minilm_like(seed: int, count: int = 200_000) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(count, generator=generator, dtype=torch.float64) * 1.5 - 1.0).clamp(-12.0, 8.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bases", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--time-steps", type=int, nargs="+", default=[2, 4, 8, 16])
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    distributions = {
        "(a) uniform [-10, 10]": (dict(input_range=(-10.0, 10.0)), torch.linspace(-10.0, 10.0, 200_001,
                                                                                  dtype=torch.float64)),
        "(b) MiniLM-like N(-1, 1.5²) clipped": (dict(samples=minilm_like(0)), minilm_like(1)),
    }
    for name, (source, test) in distributions.items():
        print(f"\nGELU MSE, {name} (rows N, columns T)\n")
        print("| N | " + " | ".join(f"T = {t}" for t in arguments.time_steps) + " |")
        print("|---|" + "---|" * len(arguments.time_steps))
        for bases in arguments.bases:
            cells = []
            for time_steps in arguments.time_steps:
                start = time.perf_counter()
                fit = fit_mbe("gelu", bases=bases, time_steps=time_steps, cache=False, **source)
                error = fit(test) - exact_values("gelu", test)
                cells.append(f"{float((error * error).mean()):.2e}")
                print(f"  fitted N={bases} T={time_steps} in {time.perf_counter() - start:.1f}s", flush=True,
                      file=__import__("sys").stderr)
            print(f"| {bases} | " + " | ".join(cells) + " |", flush=True)

    print("\nOther functions, N = 4, T = 8 (direct: uniform range; decomposed: any input, relative error)\n")
    print("| function | input | fit MSE (of g on its input) | max abs error | max relative error |")
    print("|---|---|---|---|---|")
    cases = [("gelu_tanh", (-10.0, 10.0)), ("silu", (-10.0, 10.0)), ("sigmoid", (-10.0, 10.0)),
             ("tanh", (-5.0, 5.0)), ("hardswish", (-6.0, 6.0)), ("exp", None), ("reciprocal", None), ("rsqrt", None)]
    for function, bounds in cases:
        if bounds is None:
            fit = fit_mbe(function, bases=4, time_steps=8, cache=False)
            x = (torch.linspace(-80.0, 80.0, 100_001, dtype=torch.float64) if function == "exp"
                 else torch.logspace(-30, 30, 100_001, dtype=torch.float64))
            described = "x in [-80, 80]" if function == "exp" else "x in [1e-30, 1e30]"
        else:
            fit = fit_mbe(function, bases=4, time_steps=8, input_range=bounds, cache=False)
            x = torch.linspace(*bounds, 100_001, dtype=torch.float64)
            described = f"uniform {list(bounds)}"
        exact = exact_values(function, x)
        error = fit(x) - exact
        if bounds is None:  # values span many decades: only the relative error means something
            absolute, relative = "—", f"{float((error / exact).abs().max()):.2e}"
        else:
            absolute, relative = f"{float(error.abs().max()):.2e}", "—"
        print(f"| {function} | {described} | {fit.mse:.2e} | {absolute} | {relative} |", flush=True)


if __name__ == "__main__":
    main()
