#!/usr/bin/env python3
"""Generate bitsandbytes / transformers golden files for qlorad's NF4 tests.

What it writes (all paths relative to this file's folder, tests/golden/):

  nf4_blockwise.safetensors
      For each case NAME (see make_cases()):
        NAME.input          float32, the exact tensor handed to bnb
        -- bnb.functional.quantize_4bit(x, blocksize=64, quant_type="nf4",
           compress_statistics=True) (double quantization) --
        NAME.packed         uint8 [(numel+1)//2, 1], as bnb returns it
        NAME.absmax_q       uint8 [nblocks64], the 8-bit quantized absmax
        NAME.nested_absmax  float32 [ceil(nblocks64/256)], state2.absmax
        NAME.offset         float32 [1], mean of the float32 absmax
        NAME.nested_code    float32 [256], state2.code (signed dynamic map)
        NAME.code           float32 [16], the NF4 code
        NAME.absmax_dq      float32 [nblocks64], the absmax that dequantize_4bit
                            actually multiplies with (dequantize_blockwise + offset)
        NAME.dequant        float32, dequantize_4bit(packed, state)
        -- same x, compress_statistics=False --
        NAME.plain_packed   uint8 [(numel+1)//2, 1]
        NAME.plain_absmax   float32 [nblocks64]
        NAME.plain_dequant  float32
      Plus direct 8-bit blockwise cases (the quantizer used for the nested absmax):
        bw8.CASE.input / bw8.CASE.q (uint8) / bw8.CASE.absmax (f32) /
        bw8.CASE.dequant (f32), with blocksize 256 and bw8.code (the dynamic map).

  tiny_llama_fp/           random LlamaForCausalLM (float32), save_pretrained
  tiny_llama_bnb4/         the same model loaded by transformers with
                           BitsAndBytesConfig(nf4, double quant, compute f32,
                           quant_storage uint8) on CPU and saved again
  nf4_blockwise_cuda.safetensors
                           optional, GPU only: part a made by bnb's CUDA kernels
                           from the same inputs, with --lean (no .input /
                           .dequant / .plain_dequant keys)

  tiny_llama_bnb4_dequant.safetensors
                           float32 dequantized weight of every Linear4bit, keyed
                           by the original weight name (e.g.
                           model.layers.0.self_attn.q_proj.weight)

Besides writing, the script checks its own numpy re-implementation of the
quantizers (ref_* functions: CPU rules, or the CUDA kernels' with --device
cuda; documented in README.md) against bnb's output, bit for bit, and asserts
that transformers' packed weights equal a direct quantize_4bit() of the
float32 weights.

Generated with (see README.md for the exact versions recorded):
  Python 3.11.7, torch 2.15.0 (+cu132 wheel, run on CPU), bitsandbytes 0.50.2,
  transformers 5.24.0, accelerate 1.15.0 (needed for device_map="cpu"),
  safetensors 0.8.0, numpy 2.4.6, x86-64 AVX2 CPU.

How to rerun (from the repository root):
  pip install torch bitsandbytes transformers accelerate safetensors numpy
  python3 tests/golden/make_nf4_golden.py            # everything, on CPU
  python3 tests/golden/make_nf4_golden.py --dump     # print layout for README
  python3 tests/golden/make_nf4_golden.py --device cuda --only blockwise --lean \
      --inputs-from tests/golden/nf4_blockwise.safetensors \
      --blockwise-out tests/golden/nf4_blockwise_cuda.safetensors
                                                     # optional: CUDA kernels
  (nf4_blockwise_cuda.safetensors was made on an H200 with bnb 0.50.2,
  torch 2.11.0+cu130, transformers 5.17.0.)
Everything is seeded; a rerun with the same versions reproduces the files
byte for byte (checked: two runs gave identical sha256 sums).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))

F32 = np.float32


# --------------------------------------------------------------------------
# Test inputs
# --------------------------------------------------------------------------

def _nf4_code() -> np.ndarray:
    import bitsandbytes.functional as F
    return F.get_4bit_type("nf4", device="cpu").numpy().astype(F32)


def _nf4_midpoints() -> np.ndarray:
    c = _nf4_code()
    return ((c[:-1] + c[1:]) / F32(2)).astype(F32)


def _recip_vs_div_values(am: np.float32) -> list[np.float32]:
    """Values x near NF4 midpoints * am for which fl(x * fl(1/am)) and
    fl(x / am) fall into different NF4 buckets."""
    mid = _nf4_midpoints()
    inv = F32(1) / am
    out = []
    for m in mid:
        x0 = F32(m * am)
        for k in range(-24, 25):
            x = x0
            step = F32(np.inf) if k > 0 else F32(-np.inf)
            for _ in range(abs(k)):
                x = np.nextafter(x, step)
            a = F32(x * inv)
            b = F32(x / am)
            if np.searchsorted(mid, a, side="left") != np.searchsorted(mid, b, side="left"):
                out.append(F32(x))
    return out


def make_cases() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(20240601)
    cases: dict[str, torch.Tensor] = {}

    # 3000 elements: 46 full 64-blocks + remainder of 56; one nested block (47 absmax).
    cases["gauss_3x1000"] = torch.randn(3, 1000, generator=g) * 0.02

    # 17510 elements: 273 full blocks + remainder 38 -> 274 absmax ->
    # 2 nested blocks (256 + partial 18).
    cases["gauss_17x1030"] = torch.randn(17, 1030, generator=g) * 0.02

    # 5 elements: only a (partial) remainder block, odd numel (pad nibble).
    cases["tiny_1x5"] = torch.randn(1, 5, generator=g) * 0.02

    # 4635 elements (odd numel, odd last dim): N(0, 0.02) with outliers,
    # elements [64, 128) all zero (a full all-zero block).
    x = torch.randn(9, 515, generator=g) * 0.02
    flat = x.view(-1)
    idx = torch.randperm(flat.numel(), generator=g)[:24]
    mag = 0.5 + 2.5 * torch.rand(24, generator=g)
    sign = torch.where(torch.rand(24, generator=g) < 0.5, -1.0, 1.0)
    flat[idx] = mag * sign
    flat[64:128] = 0.0
    cases["outlier_9x515"] = x

    # 200 elements: block0 random, block1 all zero, block2 random,
    # remainder (8 elements) all zero -> shows absmax for all-zero blocks.
    x = torch.randn(2, 100, generator=g) * 0.02
    flat = x.view(-1)
    flat[64:128] = 0.0
    flat[192:200] = 0.0
    cases["zeros_2x100"] = x

    # Exact ties: block0 has absmax 1.0 and holds every NF4 midpoint, its two
    # float32 neighbours and every code value; block1 is block0 * 0.5
    # (absmax 0.5, scaling exact). Tie rule: a value equal to a midpoint.
    mid = _nf4_midpoints()
    code = _nf4_code()
    up = np.nextafter(mid, F32(np.inf))
    dn = np.nextafter(mid, F32(-np.inf))
    b0 = np.concatenate([[F32(1.0), F32(-1.0)], mid, up, dn, code, [F32(0.5)]]).astype(F32)
    assert b0.size == 64
    b1 = (b0 * F32(0.5)).astype(F32)
    cases["ties_2x64"] = torch.from_numpy(np.stack([b0, b1]))

    # Full block vs remainder block scaling: full blocks use x * (1/absmax),
    # the remainder block uses x / absmax. Values chosen so the two differ.
    def block_with(am: float, n: int) -> np.ndarray:
        am = F32(am)
        vals = [am] + _recip_vs_div_values(am)
        vals = vals[:n]
        vals += [F32(0)] * (n - len(vals))
        return np.array(vals, dtype=F32)

    rvd = np.concatenate([block_with(0.77, 64), block_with(0.3, 64), block_with(0.77, 24)])
    cases["recipdiv_1x152"] = torch.from_numpy(rvd.reshape(1, -1).copy())

    for k, v in cases.items():
        assert v.dtype == torch.float32, k
        cases[k] = v.contiguous()
    return cases


def make_bw8_cases() -> dict[str, torch.Tensor]:
    """Inputs for direct 8-bit blockwise quantization (blocksize 256, dynamic map)."""
    g = torch.Generator().manual_seed(777)
    out = {}
    out["randn_1000"] = torch.randn(1000, generator=g)  # 3 full + remainder 232
    # Values spread over many decades (like absmax - offset), incl. tiny ones
    # where the 65536-entry LUT disagrees with exact nearest-neighbour.
    e = torch.empty(512).uniform_(-7, 0, generator=g)
    s = torch.where(torch.rand(512, generator=g) < 0.5, -1.0, 1.0)
    v = s * torch.pow(10.0, e)
    v[0] = 1.0
    v[256] = -1.0
    out["decades_512"] = v
    z = torch.randn(600, generator=g) * 0.01
    z[256:512] = 0.0  # an all-zero full block
    out["zeroblock_600"] = z
    return out


# --------------------------------------------------------------------------
# numpy reference (the rules as read from bnb 0.50.2's CPU code)
# --------------------------------------------------------------------------

def ref_quantize_nf4(x: np.ndarray, blocksize: int = 64):
    """bitsandbytes/backends/default/ops.py quantize_4bit (used on CPU)."""
    mid = _nf4_midpoints()
    a = x.reshape(-1).astype(F32)
    n = a.size
    rem = n % blocksize
    full = n - rem
    nb = full // blocksize
    blocks = a[:full].reshape(nb, blocksize)
    absmax = np.abs(blocks).max(axis=1) if nb else np.zeros(0, F32)
    inv = (F32(1) / np.maximum(absmax, F32(1e-38))).astype(F32)
    scaled = np.clip((blocks * inv[:, None]).astype(F32), -1, 1).reshape(-1)
    if rem:
        am = max(np.abs(a[full:]).max(), F32(1e-38))
        absmax = np.concatenate([absmax, [am]]).astype(F32)
        scaled = np.concatenate([scaled, np.clip((a[full:] / am).astype(F32), -1, 1)])
    if scaled.size % 2:
        scaled = np.concatenate([scaled, [F32(0)]])
    q = np.searchsorted(mid, scaled, side="left").astype(np.uint8)  # == torch.bucketize(right=False)
    packed = ((q[0::2] << 4) | q[1::2]).astype(np.uint8).reshape(-1, 1)
    return packed, absmax.astype(F32)


_LUT_CACHE: dict[bytes, np.ndarray] = {}


def _lut_for(code: np.ndarray) -> np.ndarray:
    key = code.tobytes()
    if key not in _LUT_CACHE:
        mid = ((code[:-1] + code[1:]) * F32(0.5)).astype(F32)
        i = np.arange(65536, dtype=np.int64)
        val = ((F32(2) * i.astype(F32)) / F32(65535)).astype(F32) - F32(1)
        val = val.astype(F32)
        # lut[i] = number of midpoints strictly below val  (while mid[k] < val: k++)
        _LUT_CACHE[key] = np.searchsorted(mid, val, side="left").astype(np.uint8)
    return _LUT_CACHE[key]


def ref_quantize_blockwise8(x: np.ndarray, code: np.ndarray, blocksize: int = 256):
    """libbitsandbytes_cpu.so quantize_cpu_impl<float> (LUT version, as disassembled)."""
    lut = _lut_for(code)
    a = x.reshape(-1).astype(F32)
    n = a.size
    nb = -(-n // blocksize)
    q = np.zeros(n, np.uint8)
    absmax = np.zeros(nb, F32)
    for b in range(nb):
        blk = a[b * blocksize:(b + 1) * blocksize]
        am = F32(np.abs(blk).max())
        absmax[b] = am
        if am == 0:
            continue  # memset 0: index 0 (= code[0] = -0.99297...)
        inv = F32(F32(1) / am)
        t = np.clip((blk * inv).astype(F32), F32(-1), F32(1))
        t = ((t + F32(1)).astype(F32) * F32(0.5)).astype(F32)
        # fused multiply-add fma(t, 65535, 0.5): exact in float64, one rounding to f32
        y = (t.astype(np.float64) * 65535.0 + 0.5).astype(F32)
        idx = np.trunc(y).astype(np.int64)
        q[b * blocksize:(b + 1) * blocksize] = lut[idx]
    return q, absmax


def _ceil_log2(x: int) -> int:
    return 0 if x <= 1 else int(x - 1).bit_length()


def _multi_row_sum(rows: np.ndarray) -> np.ndarray:
    """ATen SumKernel.cpp multi_row_sum (cascade of 4 levels), rows: [size, 4, W]."""
    size = rows.shape[0]
    levels = 4
    power = max(4, _ceil_log2(size) // levels)
    step = 1 << power
    mask0 = step - 1
    acc = np.zeros((levels,) + rows.shape[1:], F32)
    i = 0
    while i + step <= size:
        for _ in range(step):
            acc[0] = (acc[0] + rows[i]).astype(F32)
            i += 1
        for j in range(1, levels):
            acc[j] = (acc[j] + acc[j - 1]).astype(F32)
            acc[j - 1] = 0
            if (i & (mask0 << (j * power))) != 0:
                break
    while i < size:
        acc[0] = (acc[0] + rows[i]).astype(F32)
        i += 1
    for j in range(1, levels):
        acc[0] = (acc[0] + acc[j]).astype(F32)
    return acc[0]


# CUDA kernels of bnb 0.50.2 (libbitsandbytes_cuda130.so). dQuantizeNF4 is a
# decision tree "x > t ? upper half : lower half" (ties go down). The source
# writes the thresholds as float literals (0.8614784181118011f, ...), but the
# compiled sm_90 code (cuobjdump -sass of kQuantizeBlockwise<float,64,2,0,NF4>)
# holds these bit patterns, 4 of which are 1 ulp away from the float32
# rounding of the literal (k = 0, 8, 12, 14). They reproduce the H200 output.
CUDA_NF4_THRESHOLDS = np.array(
    [0xBF591CD9, 0xBF1C5270, 0xBEEB8480, 0xBEADEA76, 0xBE703CEC, 0xBE0D38BC, 0xBD3A7871, 0x3D22FAFF,
     0x3DF64863, 0x3E5067E0, 0x3E9582D4, 0x3EC753F9, 0x3F006D03, 0x3F248DAF, 0x3F5C89D9],
    dtype=np.uint32).view(F32)


def ref_quantize_nf4_cuda(x: np.ndarray, blocksize: int = 64):
    """kQuantizeBlockwise<float, 64, 2, 0, NF4>: x * (1/absmax) for every block
    (remainder too), NaN (0 * inf for an all-zero block) -> index 0."""
    a = x.reshape(-1).astype(F32)
    n = a.size
    nb = -(-n // blocksize)
    pad = np.zeros(nb * blocksize, F32)
    pad[:n] = a
    blocks = pad.reshape(nb, blocksize)
    absmax = np.abs(blocks).max(axis=1).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = (F32(1) / absmax).astype(F32)
        scaled = (blocks * inv[:, None]).astype(F32).reshape(-1)[:n]
    q = np.zeros(n + (n % 2), np.uint8)
    ok = ~np.isnan(scaled)
    q[:n][ok] = np.searchsorted(CUDA_NF4_THRESHOLDS, scaled[ok], side="left")
    # the pad nibble of an odd-sized tensor: the kernel loads 0.0 for it
    if n % 2:
        lastinv = inv[-1]
        with np.errstate(invalid="ignore"):
            z = F32(0) * lastinv
        q[n] = 0 if np.isnan(z) else np.searchsorted(CUDA_NF4_THRESHOLDS, z, side="left")
    packed = ((q[0::2] << 4) | q[1::2]).astype(np.uint8).reshape(-1, 1)
    return packed, absmax


def ref_quantize_blockwise8_cuda(x: np.ndarray, code: np.ndarray, blocksize: int = 256):
    """kQuantizeBlockwise General8bit, dQuantize<0>: 7-step binary search over
    the 256-entry code, then compare with the float32 midpoint of the final
    pivot and its neighbour: x > val: upper if x > (upper+val)*0.5f else pivot;
    else: lower if x < (lower+val)*0.5f else pivot."""
    a = x.reshape(-1).astype(F32)
    n = a.size
    nb = -(-n // blocksize)
    absmax = np.array([np.abs(a[b * blocksize:(b + 1) * blocksize]).max() for b in range(nb)], F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = (F32(1) / absmax).astype(F32)
        v = (a * inv[np.arange(n) // blocksize]).astype(F32)
        pivot = np.full(n, 127)
        lower_p = np.zeros(n, np.int64)
        upper_p = np.full(n, 255)
        lower = np.full(n, F32(-1))
        upper = np.full(n, F32(1))
        val = code[pivot]
        i = 64
        while i > 0:
            gt = v > val
            lower_p = np.where(gt, pivot, lower_p)
            lower = np.where(gt, val, lower)
            upper_p = np.where(gt, upper_p, pivot)
            upper = np.where(gt, upper, val)
            pivot = np.where(gt, pivot + i, pivot - i)
            val = code[pivot]
            i >>= 1
        upper = np.where(upper_p == 255, code[255], upper).astype(F32)
        lower = np.where(lower_p == 0, code[0], lower).astype(F32)
        gt = v > val
        mid_up = ((upper + val).astype(F32) * F32(0.5)).astype(F32)
        mid_lo = ((lower + val).astype(F32) * F32(0.5)).astype(F32)
        q = np.where(gt, np.where(v > mid_up, upper_p, pivot), np.where(v < mid_lo, lower_p, pivot))
    return q.astype(np.uint8), absmax


def ref_torch_mean_f32(x: np.ndarray, W: int = 8) -> np.float32:
    """torch.mean of a contiguous float32 CPU tensor, single-threaded:
    fl(sum / n) with ATen's vectorized cascade sum (W = floats per SIMD
    vector: 8 for torch's AVX2 / default kernels, 16 for AVX512)."""
    x = np.asarray(x, F32).ravel()
    n = x.size
    nvec = n // W
    vecs = x[: nvec * W].reshape(nvec, W)
    nilp = nvec // 4
    ps = _multi_row_sum(vecs[: nilp * 4].reshape(nilp, 4, W)) if nilp else np.zeros((4, W), F32)
    ps = ps.copy()
    for i in range(nilp * 4, nvec):
        ps[0] = (ps[0] + vecs[i]).astype(F32)
    for k in range(1, 4):
        ps[0] = (ps[0] + ps[k]).astype(F32)
    acc = F32(0)
    for k in range(nvec * W, n):
        acc = F32(acc + x[k])
    for k in range(W):
        acc = F32(acc + ps[0][k])
    return F32(acc / F32(n))


def ref_nested(absmax: np.ndarray, code8: np.ndarray, offset: np.float32):
    shifted = (absmax - offset).astype(F32)
    return ref_quantize_blockwise8(shifted, code8, 256)


# --------------------------------------------------------------------------
# Part a: blockwise golden tensors
# --------------------------------------------------------------------------

def is_lean_dropped(key: str) -> bool:
    """Keys left out by --lean (inputs and dequantized arrays: the inputs are
    those of nf4_blockwise.safetensors; a dequant is code[q] * absmax)."""
    return key.endswith((".input", ".dequant", ".plain_dequant"))


def _nibbles(packed: np.ndarray, n: int) -> np.ndarray:
    p = packed.reshape(-1)
    return np.stack([p >> 4, p & 15], 1).reshape(-1)[:n]


def check_nf4_case(name: str, xn: np.ndarray, out: dict, device: str) -> str:
    """Compare bnb's output for one case with the numpy reference of the
    device's kernels; asserts bit equality of everything the reference covers."""
    g = {k.split(".", 1)[1]: v.numpy() for k, v in out.items() if k.startswith(name + ".")}
    cuda = device != "cpu"
    rp, ra = ref_quantize_nf4_cuda(xn) if cuda else ref_quantize_nf4(xn)
    off = g["offset"][0]
    c8 = g["nested_code"]
    if cuda:
        rq8, rna = ref_quantize_blockwise8_cuda((ra - off).astype(F32), c8, 256)
    else:
        rq8, rna = ref_nested(ra, c8, off)
    code = _nf4_code()
    nb = ra.size
    blk = np.arange(xn.size) // 64
    nib = _nibbles(rp, xn.size)
    radq = ((c8[rq8] * rna[np.arange(nb) // 256]).astype(F32) + off).astype(F32)
    res = {
        "packed": np.array_equal(rp, g["plain_packed"]) and np.array_equal(rp, g["packed"]),
        "absmax": np.array_equal(ra, g["plain_absmax"]),
        "absmax_q": np.array_equal(rq8, g["absmax_q"]),
        "nested_absmax": np.array_equal(rna, g["nested_absmax"]),
        "absmax_dq": np.array_equal(radq, g["absmax_dq"]),
        # dequant rule: one float32 product code[q] * absmax
        "plain_dequant": np.array_equal((code[nib] * ra[blk]).astype(F32).reshape(xn.shape), g["plain_dequant"]),
        "dequant": np.array_equal((code[nib] * radq[blk]).astype(F32).reshape(xn.shape), g["dequant"]),
    }
    vw = 16 if torch.backends.cpu.get_cpu_capability() == "AVX512" else 8
    mean_torch_cpu = off == ref_torch_mean_f32(ra, vw)
    mean_f64 = off == F32(ra.astype(np.float64).mean())
    if not cuda:
        res["offset"] = mean_torch_cpu
    bad = [k for k, v in res.items() if not v]
    assert not bad, (name, device, bad)
    return (f"{name:16s} shape={tuple(xn.shape)} nblocks={nb} nested_blocks={rna.size}: reference OK "
            f"({', '.join(res)}); offset==cpu-torch-mean-emulation: {mean_torch_cpu}, "
            f"offset==f32(float64 mean): {mean_f64}")


def check_bw8_case(name: str, xn: np.ndarray, out: dict, device: str) -> str:
    c = out["bw8.code"].numpy()
    ref = ref_quantize_blockwise8_cuda if device != "cpu" else ref_quantize_blockwise8
    rq, ra = ref(xn, c, 256)
    q = out[f"bw8.{name}.q"].numpy()
    assert np.array_equal(rq, q) and np.array_equal(ra, out[f"bw8.{name}.absmax"].numpy()), (name, device)
    # how often the result differs from plain nearest-midpoint rounding
    mid = ((c[:-1] + c[1:]) * F32(0.5)).astype(F32)
    nbk = np.arange(xn.size) // 256
    nz = ra[nbk] != 0
    inv = (F32(1) / np.where(ra == 0, F32(1), ra)).astype(F32)
    nearest = np.searchsorted(mid, np.clip((xn * inv[nbk]).astype(F32), -1, 1), side="left")
    n_diff = int((nearest[nz] != q[nz]).sum())
    return f"bw8.{name:13s} reference OK; differs from nearest-midpoint (ties down): {n_diff}/{int(nz.sum())}"


def make_blockwise(path: str, device: str, inputs_from: str | None = None, lean: bool = False) -> None:
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    from safetensors.torch import save_file

    out: dict[str, torch.Tensor] = {}
    notes = []
    cases = make_cases()
    bw8_cases = make_bw8_cases()
    if inputs_from:  # reuse the exact inputs of an earlier run (e.g. the CPU golden file)
        from safetensors.torch import load_file
        prev = load_file(inputs_from)
        cases = {k: prev[f"{k}.input"] for k in cases}
        bw8_cases = {k: prev[f"bw8.{k}.input"] for k in bw8_cases}
    for name, x in cases.items():
        xd = x.to(device)
        q, st = F.quantize_4bit(xd, blocksize=64, quant_type="nf4", compress_statistics=True)
        assert q.dtype == torch.uint8 and st.nested and st.dtype == torch.float32
        dq = F.dequantize_4bit(q, st)
        absmax_dq = F.dequantize_blockwise(st.absmax, st.state2) + st.offset
        qp, sp = F.quantize_4bit(xd, blocksize=64, quant_type="nf4", compress_statistics=False)
        dqp = F.dequantize_4bit(qp, sp)
        t = {
            "input": x,
            "packed": q,
            "absmax_q": st.absmax,
            "nested_absmax": st.state2.absmax,
            "offset": st.offset.reshape(1),
            "nested_code": st.state2.code,
            "code": st.code,
            "absmax_dq": absmax_dq,
            "dequant": dq,
            "plain_packed": qp,
            "plain_absmax": sp.absmax,
            "plain_dequant": dqp,
        }
        for k, v in t.items():
            out[f"{name}.{k}"] = v.detach().to("cpu").contiguous().clone()
        assert out[f"{name}.dequant"].dtype == torch.float32

        notes.append(check_nf4_case(name, x.numpy(), out, device))

    code8 = None
    for name, x in bw8_cases.items():
        if code8 is None:
            code8 = F.create_dynamic_map().to(device)
            out["bw8.code"] = code8.cpu().clone()
        q, st = F.quantize_blockwise(x.to(device), code=code8, blocksize=256)
        dq = F.dequantize_blockwise(q, st)
        out[f"bw8.{name}.input"] = x.clone()
        out[f"bw8.{name}.q"] = q.cpu().clone()
        out[f"bw8.{name}.absmax"] = st.absmax.cpu().clone()
        out[f"bw8.{name}.dequant"] = dq.cpu().clone()
        notes.append(check_bw8_case(name, x.numpy(), out, device))

    if lean:
        out = {k: v for k, v in out.items() if not is_lean_dropped(k)}
    # a single metadata key: safetensors stores metadata in a hash map, so more
    # keys would make the header order (and the file bytes) vary between runs
    save_file(out, path, metadata={"format": "pt"})
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(out)} tensors)")
    for n in notes:
        print("  " + n)


# --------------------------------------------------------------------------
# Part b: tiny llama, fp and bnb-4bit checkpoints
# --------------------------------------------------------------------------

def make_model(outdir: str, device: str = "cpu", fp_src: str | None = None) -> None:
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    import transformers
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    fp_dir = os.path.join(outdir, "tiny_llama_fp")
    q_dir = os.path.join(outdir, "tiny_llama_bnb4")
    for d in (q_dir,) if fp_src else (fp_dir, q_dir):
        if os.path.isdir(d):
            shutil.rmtree(d)
    if fp_src:
        fp_dir = fp_src

    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=512,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=1,
        eos_token_id=2,
        dtype="float32",
    )
    if fp_src:
        model = LlamaForCausalLM.from_pretrained(fp_src, dtype=torch.float32).eval()
    else:
        torch.manual_seed(1234)
        model = LlamaForCausalLM(cfg).to(torch.float32).eval()
        # RMSNorm weights init to 1.0; perturb them so a loader that ignores them fails.
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("norm.weight"):
                    p.add_(torch.randn_like(p) * 0.1)
        model.save_pretrained(fp_dir, safe_serialization=True)

    qcfg = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
        bnb_4bit_quant_storage=torch.uint8,
    )
    qmodel = AutoModelForCausalLM.from_pretrained(
        fp_dir, quantization_config=qcfg, device_map=device, dtype=torch.float32
    )
    qmodel.save_pretrained(q_dir, safe_serialization=True)

    fp_sd = load_file(os.path.join(fp_dir, "model.safetensors"))
    q_sd = load_file(os.path.join(q_dir, "model.safetensors"))

    deq = {}
    n_lin = 0
    for mname, mod in qmodel.named_modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            n_lin += 1
            w = mod.weight
            key = mname + ".weight"
            d = F.dequantize_4bit(w.data, w.quant_state).to(torch.float32).cpu().contiguous()
            deq[key] = d.clone()
            # transformers' packed weight == direct quantize_4bit of the fp32 weight
            q2, st2 = F.quantize_4bit(fp_sd[key].contiguous().to(device), blocksize=64, quant_type="nf4",
                                      compress_statistics=True)
            assert torch.equal(q2.cpu(), q_sd[key]), key
            assert torch.equal(st2.absmax.cpu(), q_sd[key + ".absmax"]), key
            assert torch.equal(st2.state2.absmax.cpu(), q_sd[key + ".nested_absmax"]), key
            js = json.loads(bytes(q_sd[key + ".quant_state.bitsandbytes__nf4"].numpy()).decode())
            assert js["nested_offset"] == st2.offset.item(), key
            assert torch.equal(F.dequantize_4bit(q2, st2).cpu(), d), key
    assert n_lin == 14, n_lin
    dpath = os.path.join(outdir, "tiny_llama_bnb4_dequant.safetensors")
    save_file(deq, dpath, metadata={"format": "pt"})

    # reload check: transformers can read the 4-bit checkpoint back, same dequant
    q_back = AutoModelForCausalLM.from_pretrained(q_dir, device_map=device, dtype=torch.float32)
    for mname, mod in q_back.named_modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            assert torch.equal(F.dequantize_4bit(mod.weight.data, mod.weight.quant_state).cpu(), deq[mname + ".weight"])
    ids = torch.tensor([[1, 5, 77, 300, 511, 2]])
    with torch.no_grad():
        lf = model(ids).logits
        lq = qmodel(ids.to(device)).logits.cpu()
    print(f"logits fp vs bnb4: max|diff| = {(lf - lq).abs().max().item():.4g}")

    for d in (q_dir,) if fp_src else (fp_dir, q_dir):
        print(f"wrote {d}: " + ", ".join(f"{f} ({os.path.getsize(os.path.join(d, f))} B)" for f in sorted(os.listdir(d))))
    print(f"wrote {dpath} ({os.path.getsize(dpath)} bytes, {len(deq)} tensors)")


# --------------------------------------------------------------------------
# --dump: raw safetensors header listing (for README.md)
# --------------------------------------------------------------------------

def dump(outdir: str) -> None:
    def header(p):
        with open(p, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            return json.loads(f.read(n))

    for rel in ("tiny_llama_bnb4/model.safetensors", "tiny_llama_fp/model.safetensors",
                "tiny_llama_bnb4_dequant.safetensors", "nf4_blockwise.safetensors"):
        p = os.path.join(outdir, rel)
        h = header(p)
        print(f"### {rel}")
        print(f"__metadata__: {json.dumps(h.get('__metadata__'))}")
        for k in sorted(k for k in h if k != "__metadata__"):
            print(f"{k}  {h[k]['dtype']}  {h[k]['shape']}")
        print()
    from safetensors.torch import load_file
    sd = load_file(os.path.join(outdir, "tiny_llama_bnb4/model.safetensors"))
    k = "model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4"
    print(f"### {k}")
    print(bytes(sd[k].numpy()).decode())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", choices=["all", "blockwise", "model"], default="all")
    ap.add_argument("--out-dir", default=HERE)
    ap.add_argument("--blockwise-out", default=None, help="path for part a (default OUT_DIR/nf4_blockwise.safetensors)")
    ap.add_argument("--inputs-from", default=None, help="take part a's inputs from this earlier output file")
    ap.add_argument("--fp-src", default=None, help="part b: quantize this existing fp checkpoint dir instead of making one")
    ap.add_argument("--lean", action="store_true", help="part a: leave out inputs and dequantized arrays")
    ap.add_argument("--dump", action="store_true", help="print key/dtype/shape listing and exit")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    if args.dump:
        dump(args.out_dir)
        return 0

    import bitsandbytes
    print(f"python {sys.version.split()[0]}  torch {torch.__version__}  bitsandbytes {bitsandbytes.__version__}  numpy {np.__version__}")
    os.makedirs(args.out_dir, exist_ok=True)
    if args.only in ("all", "blockwise"):
        make_blockwise(args.blockwise_out or os.path.join(args.out_dir, "nf4_blockwise.safetensors"), args.device,
                       args.inputs_from, args.lean)
    if args.only in ("all", "model"):
        import transformers
        print(f"transformers {transformers.__version__}")
        make_model(args.out_dir, args.device, args.fp_src)
    return 0


if __name__ == "__main__":
    sys.exit(main())
