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
NEON ones; a separate multiply and add where there is no FMA). For
descriptors in 16-bit integers (SIFT's as they are, others scaled and rounded:
``Vocabulary._as_int16``), :func:`dot_rows_quantized` does the same on x86
(AVX-512BW or AVX2): pairs of coordinates, two products and their sum per lane
and instruction.

Importing this module imports numba (the 'fast' extra).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import binding, ir
from numba import types
from numba.extending import intrinsic


def _lanes() -> tuple[int, bool]:
    """Words per group: one 512-bit register of float32 where numba compiles
    for a CPU that has them, else 256 bits (one AVX register, two SSE or NEON
    ones; more sums would not fit the registers). numba compiles for this CPU
    unless ``NUMBA_CPU_NAME`` or ``NUMBA_CPU_FEATURES`` say otherwise (a name
    alone: its features unknown here, 8).

    And whether the scan may multiply 16-bit integers instead
    (:func:`dot_rows_quantized`): x86 with AVX-512BW (16 words) or AVX2 (8)."""
    if numba.config.CPU_FEATURES is not None:
        features = numba.config.CPU_FEATURES
    elif numba.config.CPU_NAME is not None:
        return 8, False
    else:
        try:
            features = binding.get_host_cpu_features().flatten()
        except RuntimeError:  # LLVM cannot read them on some hosts: 8 fit everywhere
            return 8, False
    features = set(features.split(","))
    if "+avx512f" in features:
        return 16, "+avx512bw" in features
    return 8, "+avx2" in features


#: Words per group (see :func:`_lanes`). numba's cache keeps one compiled scan
#: per target CPU, so a scan loaded from it has the lanes computed here.
LANES, QUANTIZED = _lanes()
#: Rows per block (the caller passes that many row addresses).
ROWS = 4


def _broadcast(builder, value):
    """``value`` (a scalar) in every lane of a ``LANES``-vector."""
    i32 = ir.IntType(32)
    undefined = ir.Constant(ir.VectorType(value.type, LANES), ir.Undefined)
    return builder.shuffle_vector(
        builder.insert_element(undefined, value, ir.Constant(i32, 0)), undefined,
        ir.Constant(ir.VectorType(i32, LANES), [0] * LANES))


def _store_and_flag(builder, totals, out, stride, thresholds):
    """Store each row's ``LANES`` distances (``totals``, float32 vectors) at
    ``out + r * stride``; return the bits of those below the row's threshold
    (bit ``r * LANES + lane``, int64)."""
    f32, i64 = ir.FloatType(), ir.IntType(64)
    vector = ir.VectorType(f32, LANES)
    mask = ir.Constant(i64, 0)
    for r, total in enumerate(totals):
        target = builder.gep(out, [builder.mul(stride, ir.Constant(i64, r))])
        builder.store(total, builder.bitcast(target, vector.as_pointer()), align=4)
        limit = builder.load(builder.gep(thresholds, [ir.Constant(i64, r)]))
        below = builder.fcmp_ordered("<", total, _broadcast(builder, limit))
        mask = builder.or_(mask, builder.shl(
            builder.zext(builder.bitcast(below, ir.IntType(LANES)), i64),
            ir.Constant(i64, r * LANES)))
    return mask


def _declared(builder, name, returns, arguments):
    """The LLVM function (an intrinsic) ``name``, declared once per module."""
    return builder.module.globals.get(name) or ir.Function(
        builder.module, ir.FunctionType(returns, arguments), name)


def _row_pointers(builder, address, element):
    """The ``ROWS`` row addresses (int64) at ``address``, as pointers to
    ``element``."""
    i64 = ir.IntType(64)
    addresses = builder.inttoptr(address, i64.as_pointer())
    return [builder.inttoptr(builder.load(builder.gep(addresses, [ir.Constant(i64, r)])),
                             element.as_pointer()) for r in range(ROWS)]


def _summing_loop(builder, count, zero, n_sums, body):
    """``for i in range(count)`` in LLVM IR, carrying ``n_sums`` values that
    start at ``zero``: ``body(i, sums)`` emits one iteration and returns them
    updated. Returns their values after the loop (``zero`` where count <= 0)."""
    i64 = ir.IntType(64)
    entry = builder.block
    loop = builder.append_basic_block("loop")
    done = builder.append_basic_block("done")
    builder.cbranch(builder.icmp_signed(">", count, ir.Constant(i64, 0)), loop, done)
    builder.position_at_end(loop)
    index = builder.phi(i64)
    index.add_incoming(ir.Constant(i64, 0), entry)
    sums = [builder.phi(zero.type) for _ in range(n_sums)]
    for value in sums:
        value.add_incoming(zero, entry)
    updated = body(index, sums)
    following = builder.add(index, ir.Constant(i64, 1))
    index.add_incoming(following, builder.block)
    for value, new in zip(sums, updated):
        value.add_incoming(new, builder.block)
    last = builder.block
    builder.cbranch(builder.icmp_signed("<", following, count), loop, done)
    builder.position_at_end(done)
    finals = []
    for new in updated:  # the phis first, as LLVM wants them
        value = builder.phi(zero.type)
        value.add_incoming(zero, entry)
        value.add_incoming(new, last)
        finals.append(value)
    return finals


@intrinsic
def dot_rows(typingctx, row_addresses, group, sqnorms, thresholds, out, out_stride, dim):
    """``out[r, lane] = sqnorms[lane] + sum_k rows[r][k] * group[k, lane]`` for the
    ``ROWS`` rows whose addresses (int64) are at ``row_addresses``; returns which
    of them are below the row's threshold, as bits.

    Parameters (addresses and counts, all int64)
    ----------
    row_addresses : address of ``ROWS`` int64 addresses of float32 rows (dim,)
    group : address of a float32 array (dim, LANES), C order
    sqnorms : address of ``LANES`` float32 values added to each row's sums
    thresholds : address of ``ROWS`` float32 values, one per row
    out : address of float32 rows of ``out_stride`` values; each row gets
        ``LANES`` values, unaligned
    out_stride : int64
        Values between two rows of ``out``.
    dim : int64
        Even (descriptors have 128 or 256 coordinates).

    Returns
    -------
    int64
        Bit ``r * LANES + lane`` is set where ``out[r, lane] < thresholds[r]``
        (``ROWS * LANES`` <= 64): the scan then looks only at those words, as
        a comparison here costs a fraction of one per word after it.

    Each lane sums the even coordinates and the odd ones in two chains, in
    order, then adds the two: two chains per row keep the multiply-add unit
    busy, and halve the rounding of one long chain.
    """
    sig = types.int64(types.int64, types.int64, types.int64, types.int64, types.int64,
                      types.int64, types.int64)

    def codegen(context, builder, signature, args):
        f32, i64 = ir.FloatType(), ir.IntType(64)
        vector = ir.VectorType(f32, LANES)
        fmuladd = _declared(builder, f"llvm.fmuladd.v{LANES}f32", vector, [vector] * 3)
        rows = _row_pointers(builder, args[0], f32)
        group = builder.inttoptr(args[1], vector.as_pointer())
        sqnorms = builder.load(builder.inttoptr(args[2], vector.as_pointer()), align=4)
        thresholds = builder.inttoptr(args[3], f32.as_pointer())
        out = builder.inttoptr(args[4], f32.as_pointer())
        stride, pairs = args[5], builder.sdiv(args[6], ir.Constant(i64, 2))

        def two_coordinates(pair, sums):  # sums[2 * r + half]: row r, even/odd
            updated = list(sums)
            for half in range(2):
                k = builder.add(builder.mul(pair, ir.Constant(i64, 2)),
                                ir.Constant(i64, half))
                words = builder.load(builder.gep(group, [k]), align=4)
                for r in range(ROWS):
                    value = builder.load(builder.gep(rows[r], [k]), align=4)
                    updated[2 * r + half] = builder.call(
                        fmuladd, [_broadcast(builder, value), words, sums[2 * r + half]])
            return updated

        halves = _summing_loop(builder, pairs, ir.Constant(vector, [0.0] * LANES),
                               2 * ROWS, two_coordinates)
        return _store_and_flag(builder, [
            # (even + odd) + norm: the order the scan's loop added them in before
            builder.fadd(builder.fadd(halves[2 * r], halves[2 * r + 1]), sqnorms)
            for r in range(ROWS)], out, stride, thresholds)

    return sig, codegen


def _quantized_products(n_groups: int):
    """The signature and code of :func:`dot_rows_quantized` over ``n_groups``
    consecutive groups: each row's pair of coordinates is read once for all of
    them, and their products are summed side by side. With two groups, the
    second group's bits go to the address given last."""
    sig = types.int64(types.int64, types.int64, types.int64, types.float64, types.int64,
                      types.int64, types.int64, types.int64,
                      *([types.int64] if n_groups > 1 else []))

    def codegen(context, builder, signature, args):
        f32, i16, i32, i64 = ir.FloatType(), ir.IntType(16), ir.IntType(32), ir.IntType(64)
        pairs_type = ir.VectorType(i16, 2 * LANES)
        sums_type = ir.VectorType(i32, LANES)
        vector = ir.VectorType(f32, LANES)
        if not QUANTIZED:  # never called there (Vocabulary checks), but compiled
            return ir.Constant(i64, 0)
        if LANES == 16:
            name = "llvm.x86.avx512.pmaddw.d.512"
        else:
            name = "llvm.x86.avx2.pmadd.wd"
        pmadd = _declared(builder, name, sums_type, [pairs_type, pairs_type])
        rows = _row_pointers(builder, args[0], i32)
        group = builder.inttoptr(args[1], pairs_type.as_pointer())
        sqnorms = builder.inttoptr(args[2], vector.as_pointer())
        scale = _broadcast(builder, builder.fptrunc(args[3], f32))
        thresholds = builder.inttoptr(args[4], f32.as_pointer())
        out = builder.inttoptr(args[5], f32.as_pointer())
        stride, pairs = args[6], builder.sdiv(args[7], ir.Constant(i64, 2))

        def pair_of_coordinates(pair, sums):  # sums[g * ROWS + r]
            words = [builder.load(builder.gep(group, [builder.add(
                pair, builder.mul(pairs, ir.Constant(i64, g)))]), align=2)
                for g in range(n_groups)]
            updated = list(sums)
            for r in range(ROWS):
                # the row's coordinates 2k and 2k + 1 as one int32, in every lane
                both = builder.bitcast(_broadcast(builder, builder.load(
                    builder.gep(rows[r], [pair]), align=2)), pairs_type)
                for g in range(n_groups):
                    products = builder.call(pmadd, [both, words[g]])
                    updated[g * ROWS + r] = builder.add(sums[g * ROWS + r], products)
            return updated

        finals = _summing_loop(builder, pairs, ir.Constant(sums_type, [0] * LANES),
                               n_groups * ROWS, pair_of_coordinates)
        masks = []
        for g in range(n_groups):
            norms = builder.load(builder.gep(sqnorms, [ir.Constant(i64, g)]), align=4)
            masks.append(_store_and_flag(builder, [
                builder.fadd(builder.fmul(builder.sitofp(total, vector), scale), norms)
                for total in finals[g * ROWS:(g + 1) * ROWS]],
                builder.gep(out, [ir.Constant(i64, g * LANES)]), stride, thresholds))
        if n_groups > 1:
            more = builder.inttoptr(args[8], i64.as_pointer())
            for g in range(1, n_groups):
                builder.store(masks[g], builder.gep(more, [ir.Constant(i64, g - 1)]))
        return masks[0]

    return sig, codegen


@intrinsic
def dot_rows_quantized(typingctx, row_addresses, group, sqnorms, scale, thresholds, out,
                       out_stride, dim):
    """:func:`dot_rows` in 16-bit integers: ``out[r, lane] = sqnorms[lane] + scale
    * sum_k rows[r][k] * group[k // 2, 2 * lane + k % 2]``, the sum exact in
    int32, for rows and words rounded to integers (``Vocabulary`` bounds what
    the rounding moves and checks its answers in float64). One instruction
    multiplies and adds two coordinates of ``LANES`` words (AVX-512BW's
    ``vpmaddwd``, fused with the add into ``vpdpwssd`` where the CPU has VNNI;
    AVX2's on 8 words): twice the products of float32's per instruction, on
    half the bytes.

    Parameters
    ----------
    row_addresses : int64
        Address of ``ROWS`` int64 addresses of int16 rows (dim,).
    group : int64
        Address of an int16 array (dim // 2, 2 * LANES), C order: coordinates
        2k and 2k + 1 of each word side by side.
    sqnorms, thresholds, out, out_stride
        As :func:`dot_rows`'s.
    scale : float64
        Rounded to float32 (a power of two keeps it exact).
    dim : int64
        Even; dim * max|row| * max|word| < 2**31 (the sums must not wrap).

    Returns
    -------
    int64
        As :func:`dot_rows`.
    """
    return _quantized_products(1)


@intrinsic
def dot_rows_quantized_two(typingctx, row_addresses, group, sqnorms, scale, thresholds,
                           out, out_stride, dim, second_bits):
    """:func:`dot_rows_quantized` on two consecutive groups (``group``: two
    arrays (dim // 2, 2 * LANES) one after the other; ``sqnorms``: 2 * LANES
    values; each row of ``out`` gets 2 * LANES values). A row's coordinates,
    broadcast, serve both groups' products: 0.75 reads per product (two word
    vectors and four rows for eight), where a group at a time takes 1.25.
    One-off, 200 held-out Caltech-101 images, 20,000 words, in batches of 16
    images: ``predict`` 1.72 -> 1.60 ms per image (medians of 7 passes); three
    or four groups gave no more.

    Returns
    -------
    int64
        The first group's bits, as :func:`dot_rows`'s; the second's are
        written at the address ``second_bits`` (int64).
    """
    return _quantized_products(2)


@intrinsic
def lowest_bit(typingctx, bits):
    """The position of the lowest set bit of ``bits`` (int64; 64 if none): one
    instruction (``llvm.cttz``), where a loop over the bits takes a step for each
    bit below it."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):
        i64, i1 = ir.IntType(64), ir.IntType(1)
        cttz = _declared(builder, "llvm.cttz.i64", i64, [i64, i1])
        return builder.call(cttz, [args[0], ir.Constant(i1, 0)])  # 0: defined at 0

    return sig, codegen


#: Words the scan keeps for each row, nearest first: the word (and its near
#: ties) needs three (:meth:`Vocabulary._predict_quantized`); the second word
#: four, whose margin certifies the two nearest far more often than the third's
#: (one-off, 200 Caltech-101 images, 20,000 words: rows left to the float32
#: scan, RootSIFT's 1 in 170 against 1 in 12 with three; SIFT's 1 in 17,000
#: against 1 in 100).
KEPT = 4


@numba.njit(inline="always")
def _keep_nearer_three(kept, d, position):
    """``kept`` (``KEPT`` distances, the three nearest so far first, then their
    positions) with a word at distance ``d`` and ``position`` taken in where it
    is strictly nearer than the third (of equals, the one kept first)."""
    b1, b2, b3, b4, w1, w2, w3, w4 = kept
    if d < b3:
        if d < b1:
            return d, b1, b2, b4, position, w1, w2, w4
        if d < b2:
            return b1, d, b2, b4, w1, position, w2, w4
        return b1, b2, d, b4, w1, w2, position, w4
    return kept


@numba.njit(inline="always")
def _keep_nearer_four(kept, d, position):
    """:func:`_keep_nearer_three` keeping the four nearest."""
    b1, b2, b3, b4, w1, w2, w3, w4 = kept
    if d < b4:
        if d < b2:
            if d < b1:
                return d, b1, b2, b3, position, w1, w2, w3
            return b1, d, b2, b3, w1, position, w2, w3
        if d < b3:
            return b1, b2, d, b3, w1, w2, position, w3
        return b1, b2, b3, d, w1, w2, w3, position
    return kept


def _scan(data, rows_of, bounds, cell_bounds, group_bounds, groups, group_sqnorms,
          scale, best, word, keep_nearer, last):
    """For each descriptor, the nearest words of the cells it probes: the
    three or the four nearest (``keep_nearer``: :func:`_keep_nearer_three` or
    :func:`_keep_nearer_four`; ``last``: the column of the last, 2 or 3).

    The (descriptor, probed cell) slots are sorted by cell: cell c's are
    ``bounds[c]:bounds[c + 1]``, slot i being row ``rows_of[i]`` of ``data`` (n,
    dim), C order. Cell c's words are the sorted words ``cell_bounds[c]:
    cell_bounds[c + 1]``, held in ``groups[group_bounds[c]:group_bounds[c + 1]]``,
    each cell's last group padded; ``group_sqnorms`` (n_groups * LANES,) float32
    are their squared norms, inf for the padding. Either float32 ``data`` and
    ``groups`` (n_groups, dim, LANES), the words scaled by -2, coordinate by
    coordinate (``scale`` 0: :func:`dot_rows`); or int16 ``data`` and ``groups``
    (n_groups, dim // 2, LANES, 2), rounded words, pairs of coordinates by pairs
    (``scale``: what turns their sums into distances, :func:`dot_rows_quantized`).
    Row r's nearest words so far are ``best[r]`` (KEPT,) float32, nearest
    first, and their positions in the sorted words ``word[r]`` (KEPT,) int32:
    the caller fills them with inf and -1, and each cell's words update them
    (equal distances: the smaller position, as ``Vocabulary._scan_cells_numpy``
    orders them).

    A row's nearest carry over from cell to cell, so after its first cell few
    of a cell's words come near them (each cell's own, kept apart and merged
    afterwards, cost more). The distances of a block of rows go to a buffer,
    with bits saying which are below each row's last kept (as it was before
    the block); a loop of its own picks those (picking them between the
    products cost much of the scan). In a row's first cell every word is below
    its last kept (inf), and a plain loop over them costs less than finding
    each bit.
    """
    dim = data.shape[1]
    lanes = groups.shape[2]
    if lanes != LANES or dim % 2 or best.shape[1] != KEPT or word.shape[1] != KEPT:
        raise ValueError("the word groups do not have the scan's lanes, the "
                         "descriptors an even length, or best and word KEPT columns")
    widest = 0
    for cell in range(group_bounds.shape[0] - 1):
        widest = max(widest, group_bounds[cell + 1] - group_bounds[cell])
    stride = widest * lanes
    dist = np.empty((ROWS, stride), np.float32)  # a block's distances to a cell
    below = np.empty(widest, np.int64)  # per group: its words below each row's last
    addresses = np.empty(ROWS, np.int64)
    thresholds = np.empty(ROWS, np.float32)
    base, row_bytes = data.ctypes.data, dim * data.itemsize
    group_base, group_bytes = groups.ctypes.data, dim * lanes * groups.itemsize
    every = (1 << lanes) - 1
    for cell in range(bounds.shape[0] - 1):
        a, b = bounds[cell], bounds[cell + 1]
        g0, g1 = group_bounds[cell], group_bounds[cell + 1]
        lo = cell_bounds[cell]
        for r0 in range(a, b, ROWS):
            # the last block repeats its last row where it is short; only the
            # real ones are kept
            for t in range(ROWS):
                row = rows_of[min(r0 + t, b - 1)]
                addresses[t] = base + row * row_bytes
                thresholds[t] = best[row, last]
            for g in range(g0, g1):
                words = group_base + g * group_bytes
                norms = group_sqnorms.ctypes.data + g * lanes * 4
                out = dist.ctypes.data + (g - g0) * lanes * 4
                if not scale:
                    below[g - g0] = dot_rows(addresses.ctypes.data, words, norms,
                                             thresholds.ctypes.data, out, stride, dim)
                elif (g - g0) % 2 == 0 and g + 1 < g1:  # this group and the next
                    below[g - g0] = dot_rows_quantized_two(
                        addresses.ctypes.data, words, norms, scale,
                        thresholds.ctypes.data, out, stride, dim,
                        below.ctypes.data + (g - g0 + 1) * 8)
                elif (g - g0) % 2 == 0:  # a cell's odd last group
                    below[g - g0] = dot_rows_quantized(
                        addresses.ctypes.data, words, norms, scale,
                        thresholds.ctypes.data, out, stride, dim)
            for t in range(min(ROWS, b - r0)):
                # ahead only where strictly nearer: of equals, the smaller
                # position (this cell's words come after those kept so far).
                # A word at or beyond the row's last kept as it was before this
                # block cannot come in (the last only comes nearer): only the words
                # the products flagged are looked at, in order.
                row = rows_of[r0 + t]
                kept = (best[row, 0], best[row, 1], best[row, 2], best[row, 3],
                        word[row, 0], word[row, 1], word[row, 2], word[row, 3])
                if thresholds[t] == np.inf:
                    # the row's first cell: every word flagged, and a plain loop
                    # over them costs a fraction of finding each flag (one-off,
                    # Caltech-101: about 148 words a row here, 19 in its others)
                    for u in range((g1 - g0) * lanes):
                        kept = keep_nearer(kept, dist[t, u], np.int32(u + lo))
                else:
                    for g in range(g1 - g0):
                        flagged = (below[g] >> (t * lanes)) & every
                        while flagged:
                            u = g * lanes + lowest_bit(flagged)
                            flagged &= flagged - 1  # that lane done
                            kept = keep_nearer(kept, dist[t, u], np.int32(u + lo))
                best[row, 0], best[row, 1], best[row, 2], best[row, 3] = kept[:4]
                word[row, 0], word[row, 1], word[row, 2], word[row, 3] = kept[4:]


_scan_inlined = numba.njit(inline="always")(_scan)


@numba.njit(nogil=True, cache=True)
def scan_cells(data, rows_of, bounds, cell_bounds, group_bounds, groups, group_sqnorms,
               scale, best, word):
    """:func:`_scan` keeping each row's three nearest (``best`` and ``word``
    have ``KEPT`` columns; the last is left as it was)."""
    _scan_inlined(data, rows_of, bounds, cell_bounds, group_bounds, groups,
                  group_sqnorms, scale, best, word, _keep_nearer_three, 2)


@numba.njit(nogil=True, cache=True)
def scan_cells_four(data, rows_of, bounds, cell_bounds, group_bounds, groups,
                    group_sqnorms, scale, best, word):
    """:func:`_scan` keeping each row's four nearest."""
    _scan_inlined(data, rows_of, bounds, cell_bounds, group_bounds, groups,
                  group_sqnorms, scale, best, word, _keep_nearer_four, 3)


def _kept_in_float64(data, centers, cell_order, position, row_sqnorms, words, exact):
    """The quantized scan's kept words of each row (``position`` (n, k) int32
    in the sorted words, -1: none), measured again in float64: ``words`` (n, k)
    int64 and ``exact`` (n, k) float64, the squared distance less the row's
    ``row_sqnorms``, nearest first (equal: the smaller word; none: -1 and inf,
    last). ``data`` (n, dim) and ``centers`` (n_words, dim) float32."""
    n, dim = data.shape
    k_kept = position.shape[1]
    # The kept words first, copied side by side: the copies' reads do not wait
    # on each other, so their cache misses overlap (the scan read the words'
    # int16 copy: these float32 ones are not in the caches). Summing straight
    # from the words took twice as long (0.50 against 0.24 ms for an image's
    # 1,161, one-off).
    kept = np.empty((n, k_kept, dim), np.float32)
    for i in range(n):
        for j in range(k_kept):
            p = position[i, j]
            if p >= 0:
                w = cell_order[p]
                for k in range(dim):
                    kept[i, j, k] = centers[w, k]
    big = np.iinfo(np.int64).max
    for i in range(n):
        for j in range(k_kept):
            p = position[i, j]
            if p < 0:
                words[i, j], exact[i, j] = big, np.inf
                continue
            w = cell_order[p]
            # four sums side by side (one chain of additions waits on each)
            s0 = s1 = s2 = s3 = 0.0
            for k in range(0, dim - dim % 4, 4):
                d0 = np.float64(kept[i, j, k]) - np.float64(data[i, k])
                d1 = np.float64(kept[i, j, k + 1]) - np.float64(data[i, k + 1])
                d2 = np.float64(kept[i, j, k + 2]) - np.float64(data[i, k + 2])
                d3 = np.float64(kept[i, j, k + 3]) - np.float64(data[i, k + 3])
                s0 += d0 * d0
                s1 += d1 * d1
                s2 += d2 * d2
                s3 += d3 * d3
            for k in range(dim - dim % 4, dim):
                d0 = np.float64(kept[i, j, k]) - np.float64(data[i, k])
                s0 += d0 * d0
            total = (s0 + s1) + (s2 + s3)
            words[i, j], exact[i, j] = w, total - row_sqnorms[i]
        for j in range(1, k_kept):  # a few: insertion by (distance, word)
            t = j
            while t > 0 and (exact[i, t] < exact[i, t - 1] or (
                    exact[i, t] == exact[i, t - 1] and words[i, t] < words[i, t - 1])):
                words[i, t], words[i, t - 1] = words[i, t - 1], words[i, t]
                exact[i, t], exact[i, t - 1] = exact[i, t - 1], exact[i, t]
                t -= 1
        for j in range(k_kept):
            if words[i, j] == big:
                words[i, j] = -1


kept_in_float64 = numba.njit(nogil=True, cache=True)(_kept_in_float64)
