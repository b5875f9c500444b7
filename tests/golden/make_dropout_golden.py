#!/usr/bin/env python3
"""Writes tests/golden/dropout_masks.txt: LoRA dropout keep masks computed from the mask's
written definition (kernels/cpu/dropout.h: a splitmix64 finalizer over (seed, stream, pair),
24 bits per element against p * 2^24 in float32), independently of the C++ code. A change to
the mask function would change every resumed job's dropout and is caught by
tests/kernels/dropout_test.cc against this file.

  python3 tests/golden/make_dropout_golden.py
Line format: seed stream p n mask (mask: n characters, 1 = kept).
"""
import os

import numpy as np

M = (1 << 64) - 1


def pair_bits(seed, stream, pair):
    z = (seed ^ ((stream * 0x9E3779B97F4A7C15) & M) ^ ((pair * 0xD1B54A32D192ED03) & M)) & M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return z ^ (z >> 31)


def keep(seed, stream, index, p):
    z = pair_bits(seed, stream, index >> 1)
    bits = ((z >> 16) & 0xFFFFFF) if index & 1 else (z >> 40)
    return np.float32(bits) >= np.float32(p) * np.float32(16777216.0)


CASES = [(0, 0, "0.1", 256), (12345, 987654321, "0.5", 256), ((1 << 63) + 5, 3, "0.05", 257),
         (7, (1 << 40) + 11, "0.3", 129)]


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dropout_masks.txt")
    with open(out, "w") as f:
        for seed, stream, p, n in CASES:
            mask = "".join("1" if keep(seed, stream, i, float(p)) else "0" for i in range(n))
            f.write(f"{seed} {stream} {p} {n} {mask}\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
