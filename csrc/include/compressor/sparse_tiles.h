// One task's worth of the CPU direct sparse convolution, shared by the conv op (sparse_conv.cpp)
// and the fused bottleneck (sparse_block.cpp): output channels over a run of virtual positions,
// tile by tile and input-channel block by block, each finished tile handed to a store callback
// (which applies the epilogue where the result goes: an output plane, a padded scratch, ...).
#pragma once
#include <algorithm>
#include <cstdint>

#include "compressor/sparse_cpu.h"

namespace compressor::sparse_cpu {

constexpr int64_t kChannelBlock = 32;  // output channels whose tile partial sums are parked
// A channel's parked tile, kLanes floats after its slot's start: an alignment class's pass
// writes up to kLanes - 1 positions before the tile (thrown away). channel_tiles' `buf` holds
// kTileBuffer floats.
constexpr int64_t kTileStride = kTile + kLanes;
constexpr int64_t kTileBuffer = kChannelBlock * kTileStride;

// Pieces of at most `most` covering `length`, as equal as whole vectors allow: a short last tile
// costs a whole pass over the row's nonzeros for a few positions.
inline int64_t even_split(int64_t length, int64_t most) {
  const int64_t pieces = (length + most - 1) / most;
  return std::min(most, ((length + pieces - 1) / pieces + kLanes - 1) / kLanes * kLanes);
}

// Scatter virtual positions [p, p + count) from `acc` (a layout `wq` wide) into rows `wo` wide
// at `plane`, skipping the wq - wo padding columns that the virtual layout computes and throws
// away, and applying the epilogue (residual add, activation) on the way, while the tile is in L1.
inline void store_rows(const float* acc, int64_t p, int64_t count, int64_t wq, int64_t wo,
                       float* plane, const float* res, Act act) {
  if (wq == wo) {
    // No padding columns (a 1x1 or unpadded conv): virtual position p is output position p, and
    // the tile is one run. Row by row it was 7-14 calls a tile on 7x7 and 14x14 planes, most of
    // the time of a 1x1 conv there at high sparsity.
    epilogue(acc, res ? res + p : nullptr, plane + p, count, act);
    return;
  }
  int64_t y = p / wq, x = p % wq, i = 0;
  while (i < count) {
    const int64_t run = std::min(wq - x, count - i);
    if (x < wo) {
      const int64_t at = y * wo + x;
      epilogue(acc + i, res ? res + at : nullptr, plane + at, std::min(run, wo - x), act);
    }
    i += run;
    x = 0;
    ++y;
  }
}

// Rows [oc, oc + kRows) of a uniform weight (same columns, groups == 1) over one tile of `in`
// (one image's input): their values sit the common row length apart, their offsets are row oc's.
inline void rows_tile(const ConvArgs& a, const float* in, int64_t oc, int64_t cb, int64_t p,
                      int64_t count, float* acc) {
#ifdef COMPRESSOR_SPARSE_SIMD
  const int32_t* seg = a.segs + oc * (a.ncb + 1) + cb;
  const int64_t length = a.uniform_length;
  float init[kRows];
  for (int r = 0; r < kRows; ++r) init[r] = a.bias ? a.bias[oc + r] : 0.f;
  axpy_rows(a.values + seg[0], length, a.offsets + seg[0], seg[1] - seg[0], in + p, init, count,
            acc, kTileStride, cb > 0);
#else
  (void)a, (void)in, (void)oc, (void)cb, (void)p, (void)count, (void)acc;
#endif
}

// Row oc's nonzeros of input-channel block cb over one tile (`src`: the tile's first position in
// the row's group of the input), one alignment class at a time. Class c's offsets are multiples
// of kLanes, shifts[c] short of the true ones: its pass covers the shifts[c] positions before the
// tile too, so that with `src` on a whole vector (an aligned buffer and tile start) every load
// is whole-vector aligned. A stand-alone loop shaped like this one ran its unaligned AVX-512
// loads at about 0.7x the aligned rate on Zen 4 and 0.6x on Sapphire Rapids.
inline void class_tiles(const ConvArgs& a, const float* src, int64_t oc, int64_t cb,
                        int64_t count, float* acc) {
  const int32_t* seg = a.segs + oc * (a.ncb * a.classes + 1) + cb * a.classes;
  if (cb == 0) std::fill(acc, acc + count, a.bias ? a.bias[oc] : 0.f);
  for (int64_t c = 0; c < a.classes; ++c) {
    const int32_t begin = seg[c], n = seg[c + 1] - begin;
    if (n == 0) continue;
    const int32_t r = a.shifts[c];
    axpy_tile_indexed(a.values, a.value_index + begin, a.offsets + begin, n, src, count + r,
                      acc - r);
  }
}

// Output channels [oc0, oc1) (at most kChannelBlock) over virtual positions [p0, p1) of `in`,
// one image's input in a.geom's layout. Per tile, the input-channel blocks in turn, and all
// output channels within a block, so the block's slice of the input under the tile (at most
// kL2Floats) stays in cache, L2 at least, while the weights stream; the channels' partial sums
// for the tile (kChannelBlock x kTile floats) are parked in `buf` between blocks. A uniform
// weight takes its rows kRows at a time (rows_tile). Each finished tile goes to
// store(oc, acc, p, count).
template <class Store>
void channel_tiles(const ConvArgs& a, const float* in, int64_t oc0, int64_t oc1, int64_t p0,
                   int64_t p1, float* buf, Store&& store) {
  const ConvGeom& g = a.geom;
#ifdef COMPRESSOR_SPARSE_SIMD
  const int64_t rows_end = a.uniform_length ? oc0 + (oc1 - oc0) / kRows * kRows : oc0;
  const int64_t most = a.uniform_length ? kMultiTile : kTile;
#else
  const int64_t rows_end = oc0, most = kTile;
#endif
  const int64_t tile = even_split(p1 - p0, most);
  for (int64_t p = p0; p < p1; p += tile) {
    const int64_t count = std::min(tile, p1 - p);
    // the positions computed: whole vectors where the input allows (tile is whole vectors)
    const int64_t computed = a.whole_vectors ? std::min(tile, vector_multiple(count)) : count;
    for (int64_t cb = 0; cb < a.ncb; ++cb) {
      for (int64_t oc = oc0; oc < oc1; ++oc) {
        float* acc = buf + (oc - oc0) * kTileStride + kLanes;
        // The tile's first position in row oc's group of the input.
        const float* src = in + oc / g.cout_g * g.cin_g * g.chan + p;
        if (oc < rows_end) {
          if ((oc - oc0) % kRows == 0) rows_tile(a, in, oc, cb, p, computed, acc);
        } else if (a.classes > 1) {  // (its passes reach before the tile: exact counts)
          class_tiles(a, src, oc, cb, count, acc);
        } else {
          const int32_t* seg = a.segs + oc * (a.ncb + 1) + cb;
          axpy_tile(a.values + seg[0], a.offsets + seg[0], seg[1] - seg[0], src,
                    a.bias ? a.bias[oc] : 0.f, computed, acc, cb > 0);
        }
        if (cb == a.ncb - 1) store(oc, static_cast<const float*>(acc), p, count);
      }
    }
  }
}

}  // namespace compressor::sparse_cpu
