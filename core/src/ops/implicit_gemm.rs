//! Stride-1 correlation as an implicit GEMM with an AVX-512 micro-kernel, for wide layers (the
//! convolution module picks it for 128 or more output channels on wide rows).
//!
//! The im2col path copies every input value k² times into a tile, and the gemm crate then packs that
//! tile again before multiplying. Here the micro-kernel reads the right-hand operand straight from the
//! input: entry (c, a, b) of output pixel (i, j)'s column is `input[c, i + a, j + b]`, so the
//! [`PIXELS`] pixels of one register block are consecutive values of one input row, broadcast one at a
//! time. The left-hand operand is the weight matrix, packed once per call into panels of 64 output
//! channels. Each step of the depth loop loads 4 weight vectors and broadcasts 6 input values for 24
//! multiply-adds, as the gemm crate's own 4×6 kernel does.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::{run_tasks, SharedMut};

/// Output channels per weight panel: four vectors of 16.
const PANEL: usize = 64;
/// Vectors per panel.
const PANEL_VECTORS: usize = PANEL / 16;
/// Output pixels per register block; 4 × 6 accumulators leave registers for 4 weights and 1 input.
const PIXELS: usize = 6;
/// Depth steps per chunk: 1024 steps of a 64-channel panel are 256 KiB of weights, which stay in a
/// core's L2 cache next to the input rows.
const MAX_CHUNK_DEPTH: usize = 1024;

/// A correlation whose input is already padded: output pixel (i, j) of channel o reads
/// `src[n * image + c * plane + (i + a) * row + (j + b)]` for every input channel c and tap (a, b).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PaddedCorrelation {
    pub batch: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub k: usize,
    pub h_out: usize,
    pub w_out: usize,
    /// Strides of the padded input, in values.
    pub image: usize,
    pub plane: usize,
    pub row: usize,
}

/// One 64-byte vector of weights, aligned so that its loads never straddle a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct WeightVector([f32; 16]);

/// Correlates `src` (see [`PaddedCorrelation`]) with `weight` (c_out, c_in, k, k) and returns the
/// contiguous (batch, c_out, h_out, w_out) output. The CPU must support AVX-512F.
pub(crate) fn correlate(src: &[f32], weight: &[f32], g: &PaddedCorrelation, threads: usize) -> Vec<f32> {
    let kk = g.k * g.k;
    let depth = g.c_in * kk;
    let out_pixels = g.h_out * g.w_out;
    // Every output value is written exactly once, through raw pointers, so the buffer starts
    // uninitialised instead of paying for a zero fill.
    let len = g.batch * g.c_out * out_pixels;
    let mut output: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return output;
    }

    // Offset of entry (c, a, b) of a column from the column's first input value.
    let offsets: Vec<u32> = (0..g.c_in)
        .flat_map(|c| (0..g.k).flat_map(move |a| (0..g.k).map(move |b| (c * g.plane + a * g.row + b) as u32)))
        .collect();

    // Weights as [panel][depth][4 vectors of 16 output channels], zero past c_out.
    let panels = g.c_out.div_ceil(PANEL);
    let mut packed = vec![WeightVector([0.0; 16]); panels * depth * PANEL_VECTORS];
    for o in 0..g.c_out {
        let (panel, vector, lane) = (o / PANEL, o % PANEL / 16, o % 16);
        for (d, &value) in weight[o * depth..(o + 1) * depth].iter().enumerate() {
            packed[(panel * depth + d) * PANEL_VECTORS + vector].0[lane] = value;
        }
    }

    // Tasks are runs of output rows of one image and one panel; a few per thread balance the load.
    let rows = g.batch * g.h_out;
    let target_tasks = if threads > 1 { 8 * threads } else { 1 };
    let rows_per_task = rows.div_ceil(target_tasks.div_ceil(panels)).max(1);
    let row_groups = rows.div_ceil(rows_per_task);

    // A deep weight panel is split into chunks that stay in the L2 cache, and the accumulators of
    // every register block of the task are kept between chunks.
    let chunks = depth.div_ceil(MAX_CHUNK_DEPTH);
    let chunk_depth = depth.div_ceil(chunks);
    let blocks_per_row = g.w_out.div_ceil(PIXELS);

    let dst = SharedMut(output.as_mut_ptr());
    run_tasks(row_groups * panels, threads, |_, index| {
        let (group, panel) = (index / panels, index % panels);
        let channels = PANEL.min(g.c_out - panel * PANEL);
        let weights = &packed[panel * depth * PANEL_VECTORS..(panel + 1) * depth * PANEL_VECTORS];
        let task_rows = group * rows_per_task..rows.min((group + 1) * rows_per_task);
        let mut carried = if chunks > 1 {
            vec![Accumulators([zero_vector(); PANEL_VECTORS * PIXELS]); task_rows.len() * blocks_per_row]
        } else {
            Vec::new()
        };

        for chunk in 0..chunks {
            let steps = chunk * chunk_depth..depth.min((chunk + 1) * chunk_depth);
            let mut slot = 0;
            for global_row in task_rows.clone() {
                let (n, i) = (global_row / g.h_out, global_row % g.h_out);
                let src_row = n * g.image + i * g.row;
                let dst_row = (n * g.c_out + panel * PANEL) * out_pixels + i * g.w_out;
                for j in (0..g.w_out).step_by(PIXELS) {
                    let block = Block {
                        src: src.as_ptr().wrapping_add(src_row + j),
                        offsets: &offsets[steps.clone()],
                        weights: weights[steps.start * PANEL_VECTORS..].as_ptr(),
                        dst: dst.ptr().wrapping_add(dst_row + j),
                        dst_plane: out_pixels,
                        channels,
                        carried: carried.get_mut(slot).map(|acc| acc as *mut Accumulators),
                        first: chunk == 0,
                        last: chunk + 1 == chunks,
                    };
                    slot += 1;
                    // SAFETY: the offsets address the padded input of these pixels, the packed weights
                    // contain these steps, and only this task writes these output rows of this panel.
                    unsafe {
                        match PIXELS.min(g.w_out - j) {
                            6 => block.run::<6>(),
                            5 => block.run::<5>(),
                            4 => block.run::<4>(),
                            3 => block.run::<3>(),
                            2 => block.run::<2>(),
                            _ => block.run::<1>(),
                        }
                    }
                }
            }
        }
    });
    // SAFETY: the tasks wrote all channels of every pixel of every image (see above).
    unsafe { output.set_len(len) };
    output
}

/// The accumulators of one register block between depth chunks.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Accumulators([__m512; PANEL_VECTORS * PIXELS]);

/// Returns a zero vector; SSE and AVX-512 types are plain data, so this needs no target feature.
fn zero_vector() -> __m512 {
    // SAFETY: __m512 is 16 f32 values, for which all-zero bits are 0.0.
    unsafe { std::mem::zeroed() }
}

/// One register block: `NR` consecutive output pixels of one row and one weight panel, over one depth
/// chunk.
struct Block<'a> {
    /// First input value of the first pixel's column.
    src: *const f32,
    /// Offsets of the chunk's steps.
    offsets: &'a [u32],
    /// The panel's packed weights from the chunk's first step on.
    weights: *const WeightVector,
    /// Output value of the panel's first channel at the first pixel.
    dst: *mut f32,
    dst_plane: usize,
    /// Output channels of the panel to store, at most 64.
    channels: usize,
    /// Slot that keeps the accumulators between chunks, when the depth has several.
    carried: Option<*mut Accumulators>,
    first: bool,
    last: bool,
}

impl Block<'_> {
    /// Accumulates the chunk in registers, starting from zero or the carried values, then carries them
    /// on or, after the last chunk, writes the 64 × NR block.
    ///
    /// # Safety
    /// `src + offset + p` must be readable for every offset and p < NR, `weights` must contain the
    /// chunk's steps, and the output block must be writable. The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn run<const NR: usize>(&self) {
        let mut acc = [[_mm512_setzero_ps(); NR]; PANEL_VECTORS];
        if let (Some(carried), false) = (self.carried, self.first) {
            for (v, acc_vector) in acc.iter_mut().enumerate() {
                for (p, value) in acc_vector.iter_mut().enumerate() {
                    *value = (*carried).0[v * PIXELS + p];
                }
            }
        }

        let mut w = self.weights;
        for &offset in self.offsets {
            let column = self.src.add(offset as usize);
            let weights: [__m512; PANEL_VECTORS] = std::array::from_fn(|v| _mm512_load_ps((*w.add(v)).0.as_ptr()));
            w = w.add(PANEL_VECTORS);
            for p in 0..NR {
                let value = _mm512_set1_ps(*column.add(p));
                for v in 0..PANEL_VECTORS {
                    acc[v][p] = _mm512_fmadd_ps(weights[v], value, acc[v][p]);
                }
            }
        }

        if !self.last {
            let carried = self.carried.expect("blocks of a chunked depth carry their accumulators");
            for (v, acc_vector) in acc.iter().enumerate() {
                for (p, value) in acc_vector.iter().enumerate() {
                    (*carried).0[v * PIXELS + p] = *value;
                }
            }
            return;
        }

        // Each accumulator contains 16 output channels of one pixel, while the output is channel-major, so
        // the block is transposed through a small buffer.
        let mut lanes = [[0.0f32; 16]; NR];
        for (v, acc_vector) in acc.iter().enumerate() {
            for (p, lane_row) in lanes.iter_mut().enumerate() {
                _mm512_storeu_ps(lane_row.as_mut_ptr(), acc_vector[p]);
            }
            for lane in 0..16.min(self.channels.saturating_sub(v * 16)) {
                let out = self.dst.add((v * 16 + lane) * self.dst_plane);
                for (p, lane_row) in lanes.iter().enumerate() {
                    *out.add(p) = lane_row[lane];
                }
            }
        }
    }
}
