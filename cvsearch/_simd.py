"""The compiled scan of word assignment, its products written in LLVM's vector IR.

Word assignment compares each descriptor with the words of its probed cells.
Written in numba's Python, each sum of products is vectorised over the
descriptor's 128 coordinates and then summed across the vector's lanes, which
costs about as much as the products themselves. Here the words are laid out
coordinate by coordinate (a group of ``LANES`` words: ``group[k, lane]``), so
that one vector holds one coordinate of ``LANES`` words and each row's
coordinate is broadcast against it: no sum across lanes at all, and one vector
read serves four rows. numba cannot express such vectors, hence this
intrinsic; LLVM lowers its generic vectors and ``llvm.fmuladd`` to whatever
the CPU has (16 words: one AVX-512 register; 8: one AVX register, or two SSE or
NEON ones; a separate multiply and add where there is no FMA).

Importing this module imports numba (the 'fast' extra).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import binding, ir
from numba import types
from numba.extending import intrinsic


def _lanes() -> int:
    """Words per group: one 512-bit register of float32 where numba compiles
    for a CPU that has them, else 256 bits (one AVX register, two SSE or NEON
    ones; more sums would not fit the registers). numba compiles for this CPU
    unless ``NUMBA_CPU_NAME`` or ``NUMBA_CPU_FEATURES`` say otherwise."""
    if numba.config.CPU_NAME is not None or numba.config.CPU_FEATURES is not None:
        return 8
    try:
        features = binding.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot read them on some hosts: 8 fit everywhere
        return 8
    return 16 if "+avx512f" in features else 8


#: Words per group (see :func:`_lanes`). numba's cache keeps one compiled scan
#: per target CPU, so a scan loaded from it has the lanes computed here.
LANES = _lanes()
#: Rows per block (the caller passes that many row addresses).
ROWS = 4


@intrinsic
def dot_rows(typingctx, row_addresses, group, out, out_stride, dim):
    """``out[r, lane] = sum_k rows[r][k] * group[k, lane]`` for the ``ROWS`` rows
    whose addresses (int64) are at ``row_addresses``.

    Parameters (addresses and counts, all int64)
    ----------
    row_addresses : address of ``ROWS`` int64 addresses of float32 rows (dim,)
    group : address of a float32 array (dim, LANES), C order
    out : address of float32 rows of ``out_stride`` values; each row gets
        ``LANES`` values, unaligned
    out_stride : int64
        Values between two rows of ``out``.
    dim : int64
        Even (descriptors have 128 or 256 coordinates).

    Each lane sums the even coordinates and the odd ones in two chains, in
    order, then adds the two: two chains per row keep the multiply-add unit
    busy, and halve the rounding of one long chain.
    """
    sig = types.void(types.int64, types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        f32, i64, i32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
        vector = ir.VectorType(f32, LANES)
        name = f"llvm.fmuladd.v{LANES}f32"
        fmuladd = builder.module.globals.get(name) or ir.Function(
            builder.module, ir.FunctionType(vector, [vector] * 3), name)
        addresses = builder.inttoptr(args[0], i64.as_pointer())
        rows = [builder.inttoptr(builder.load(builder.gep(
            addresses, [ir.Constant(i64, r)])), f32.as_pointer()) for r in range(ROWS)]
        group = builder.inttoptr(args[1], vector.as_pointer())
        out = builder.inttoptr(args[2], f32.as_pointer())
        stride, pairs = args[3], builder.sdiv(args[4], ir.Constant(i64, 2))

        entry = builder.block
        loop = builder.append_basic_block("pairs")
        done = builder.append_basic_block("done")
        zero = ir.Constant(vector, [0.0] * LANES)
        undefined = ir.Constant(vector, ir.Undefined)
        splat = ir.Constant(ir.VectorType(i32, LANES), [0] * LANES)
        builder.cbranch(builder.icmp_signed(">", pairs, ir.Constant(i64, 0)), loop, done)

        builder.position_at_end(loop)
        pair = builder.phi(i64)
        pair.add_incoming(ir.Constant(i64, 0), entry)
        sums = [builder.phi(vector) for _ in range(2 * ROWS)]
        for s in sums:
            s.add_incoming(zero, entry)
        updated = []
        for half in range(2):
            k = builder.add(builder.mul(pair, ir.Constant(i64, 2)), ir.Constant(i64, half))
            words = builder.load(builder.gep(group, [k]), align=4)
            for r in range(ROWS):
                value = builder.load(builder.gep(rows[r], [k]), align=4)
                broadcast = builder.shuffle_vector(
                    builder.insert_element(undefined, value, ir.Constant(i32, 0)),
                    undefined, splat)
                updated.append(builder.call(fmuladd, [broadcast, words,
                                                      sums[2 * r + half]]))
        # updated is [half 0: rows..., half 1: rows...]; sums are [row: halves]
        chained = [updated[half * ROWS + r] for r in range(ROWS) for half in range(2)]
        following = builder.add(pair, ir.Constant(i64, 1))
        pair.add_incoming(following, loop)
        for s, value in zip(sums, chained):
            s.add_incoming(value, loop)
        builder.cbranch(builder.icmp_signed("<", following, pairs), loop, done)

        builder.position_at_end(done)
        halves = []
        for value in chained:  # the phis first, as LLVM wants them
            phi = builder.phi(vector)
            phi.add_incoming(zero, entry)
            phi.add_incoming(value, loop)
            halves.append(phi)
        finals = [builder.fadd(halves[2 * r], halves[2 * r + 1]) for r in range(ROWS)]
        for r, total in enumerate(finals):
            target = builder.gep(out, [builder.mul(stride, ir.Constant(i64, r))])
            builder.store(total, builder.bitcast(target, vector.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


def _scan_cells(data, rows_of, bounds, cell_bounds, group_bounds, groups, group_sqnorms,
                best, word):
    """For each descriptor, the three nearest words of the cells it probes.

    The (descriptor, probed cell) slots are sorted by cell: cell c's are
    ``bounds[c]:bounds[c + 1]``, slot i being row ``rows_of[i]`` of ``data`` (n,
    dim) float32, C order. Cell c's words are the sorted words
    ``cell_bounds[c]:cell_bounds[c + 1]``, held in ``groups[group_bounds[c]:
    group_bounds[c + 1]]`` (n_groups, dim, LANES) float32, scaled by -2,
    coordinate by coordinate, the last group padded; ``group_sqnorms`` (n_groups
    * LANES,) float32 are their squared norms, inf for the padding. Row r's
    three nearest words so far are ``best[r]`` (3,) float32, nearest first, and
    their positions in the sorted words ``word[r]`` (3,) int32: the caller fills
    them with inf and -1, and each cell's words update them (equal distances:
    the smaller position, as ``Vocabulary._scan_cells_numpy`` orders them).

    A row's three nearest carry over from cell to cell, so after its first cell
    few of a cell's words come near them (each cell's own three, kept apart and
    merged afterwards, cost more). The distances of a block of rows go to a buffer and
    are picked from it in a loop of their own: picking them between the
    products cost much of the scan.
    """
    dim = data.shape[1]
    lanes = groups.shape[2]
    if lanes != LANES or dim % 2:
        raise ValueError("the word groups do not have the scan's lanes, or the "
                         "descriptors an even length")
    widest = 0
    for cell in range(group_bounds.shape[0] - 1):
        widest = max(widest, group_bounds[cell + 1] - group_bounds[cell])
    stride = widest * lanes
    dist = np.empty((ROWS, stride), np.float32)  # a block's distances to a cell
    addresses = np.empty(ROWS, np.int64)
    base, row_bytes = data.ctypes.data, dim * 4
    group_base, group_bytes = groups.ctypes.data, dim * lanes * 4
    for cell in range(bounds.shape[0] - 1):
        a, b = bounds[cell], bounds[cell + 1]
        g0, g1 = group_bounds[cell], group_bounds[cell + 1]
        lo = cell_bounds[cell]
        for r0 in range(a, b, ROWS):
            # the last block repeats its last row where it is short; only the
            # real ones are kept
            for t in range(ROWS):
                addresses[t] = base + rows_of[min(r0 + t, b - 1)] * row_bytes
            for g in range(g0, g1):
                dot_rows(addresses.ctypes.data, group_base + g * group_bytes,
                         dist.ctypes.data + (g - g0) * lanes * 4, stride, dim)
            for t in range(min(ROWS, b - r0)):
                # ahead only where strictly nearer: of equals, the smaller
                # position (this cell's words come after those kept so far)
                row = rows_of[r0 + t]
                b1, b2, b3 = best[row, 0], best[row, 1], best[row, 2]
                w1, w2, w3 = word[row, 0], word[row, 1], word[row, 2]
                for u in range((g1 - g0) * lanes):
                    d = dist[t, u] + group_sqnorms[g0 * lanes + u]
                    if d < b3:
                        if d < b1:
                            b3, w3, b2, w2, b1, w1 = b2, w2, b1, w1, d, u + lo
                        elif d < b2:
                            b3, w3, b2, w2 = b2, w2, d, u + lo
                        else:
                            b3, w3 = d, u + lo
                best[row, 0], best[row, 1], best[row, 2] = b1, b2, b3
                word[row, 0], word[row, 1], word[row, 2] = w1, w2, w3


scan_cells = numba.njit(nogil=True, cache=True)(_scan_cells)
