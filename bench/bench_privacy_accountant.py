"""Cross-check the privacy accountant and print the calibrated noise of each privacy level.

Usage: ``python bench/bench_privacy_accountant.py [--num-clients 500] [--rate 0.02]
[--rounds 100]``. Prints (1) RDP and PRV epsilon for the two published configurations next
to the expected RDP values, with timings, and (2) the noise multiplier calibrated for each
``privacy.level`` preset under both accountants, with the central noise std on the mean
(clipping norm 1) and the local-DP noise multiplier for comparison.
"""

from __future__ import annotations

import argparse
import time

from fl_core.privacy.accountant import compute_epsilon
from fl_core.privacy.settings import LEVELS, PrivacySettings, resolve

PUBLISHED: list[tuple[str, float, float, int, float, float]] = [
    # name, noise multiplier, sampling rate, steps, delta, published RDP epsilon
    ("z=1.1 q=0.01 T=10000", 1.1, 0.01, 10_000, 1e-5, 5.632),
    ("z=1.2 q=120/3383 T=100", 1.2, 120 / 3383, 100, 1e-5, 1.986),
]


def cross_check() -> bool:
    print("Accountant cross-check (delta=1e-5)")
    header = f"{'configuration':<24}{'published':>10}{'RDP':>10}{'|diff|':>9}{'PRV':>10}"
    print(header + f"{'t_RDP s':>9}{'t_PRV s':>9}")
    ok = True
    for name, z, q, steps, delta, published in PUBLISHED:
        t0 = time.perf_counter()
        rdp = compute_epsilon(
            noise_multiplier=z, sampling_rate=q, steps=steps, delta=delta, kind="rdp"
        )
        t1 = time.perf_counter()
        prv = compute_epsilon(
            noise_multiplier=z, sampling_rate=q, steps=steps, delta=delta, kind="prv"
        )
        t2 = time.perf_counter()
        diff = abs(rdp - published)
        ok = ok and diff <= 1e-3 and prv <= rdp
        print(
            f"{name:<24}{published:>10.3f}{rdp:>10.4f}{diff:>9.5f}{prv:>10.4f}"
            f"{t1 - t0:>9.2f}{t2 - t1:>9.2f}"
        )
    print("cross-check:", "OK" if ok else "FAILED")
    return ok


def levels(num_clients: int, rate: float, rounds: int) -> None:
    print(
        f"\nCalibrated noise multipliers: N={num_clients}, q={rate}, {rounds} rounds, "
        f"expected cohort {rate * num_clients:g}"
    )
    print(
        f"{'level':<8}{'epsilon':>8}{'delta':>8}{'accountant':>11}{'z':>9}{'eps spent':>10}"
        f"{'std(mean)':>11}{'z local':>9}{'time s':>8}"
    )
    for level, (eps, delta) in LEVELS.items():
        for kind in ("rdp", "prv"):
            t0 = time.perf_counter()
            central = resolve(
                PrivacySettings(level=level, accountant=kind),
                num_clients=num_clients,
                sampling_rate=rate,
                rounds=rounds,
            )
            local = resolve(
                PrivacySettings(level=level, mode="local", accountant=kind),
                num_clients=num_clients,
                sampling_rate=rate,
                rounds=rounds,
            )
            elapsed = time.perf_counter() - t0
            print(
                f"{level:<8}{eps:>8g}{delta:>8g}{kind:>11}{central.noise_multiplier:>9.4f}"
                f"{central.expected_epsilon:>10.4f}{central.noise_std():>11.5f}"
                f"{local.noise_multiplier:>9.3f}{elapsed:>8.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-clients", type=int, default=500)
    parser.add_argument("--rate", type=float, default=0.02)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    ok = cross_check()
    levels(args.num_clients, args.rate, args.rounds)
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
