//! Stride-1 correlation as an implicit GEMM with an AVX-512 micro-kernel, for wide layers (the
//! convolution module picks it for 64 or more output channels on wide rows).
//!
//! The im2col path copies every input value k² times into a tile, and the gemm crate then packs that
//! tile again before multiplying. Here the micro-kernel reads the right-hand operand straight from the
//! input: entry (c, a, b) of output pixel (i, j)'s column is `input[c, i + a, j + b]`, so the
//! [`PIXELS`] pixels of one register block are consecutive values of one input row, broadcast one at a
//! time. The left-hand operand is the weight matrix, packed once per call into panels of 64 output
//! channels. Each step of the depth loop loads 4 weight vectors and broadcasts 6 input values for 24
//! multiply-adds, as the gemm crate's own 4×6 kernel does. Blocks within `pad` pixels of the border
//! read a small zero-padded copy of their input instead, so the input is never padded as a whole.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::ops::Range;

use super::conv::Correlation;
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

/// One 64-byte vector of weights, aligned so that its loads never straddle a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct WeightVector([f32; 16]);

/// Bias and leaky ReLU applied to each register block before it is stored: output value
/// `max(z, slope · z)` with `z = correlation + bias[channel]`, the same arithmetic as
/// `ops::leaky_relu::bias_leaky_relu` with gain 1.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BiasLeakyRelu<'a> {
    /// One value per output channel.
    pub bias: &'a [f32],
    /// Negative slope, from 0 to 1.
    pub slope: f32,
}

/// Correlates `input` (batch, c_in, h_in, w_in) with `weight` (c_out, c_in, k, k), both contiguous, with
/// the zero padding or cropping of `g` (see [`Correlation`]), applies `activation` if given, and returns
/// the contiguous (batch, c_out, h_out, w_out) output. The CPU must support AVX-512F, and one image must
/// have at most `u32::MAX` values (offsets inside an image are 32-bit).
pub(crate) fn correlate(
    input: &[f32],
    weight: &[f32],
    g: &Correlation,
    activation: Option<BiasLeakyRelu>,
    threads: usize,
) -> Vec<f32> {
    let kk = g.k * g.k;
    let depth = g.patch_len();
    let (plane, image) = (g.in_pixels(), g.c_in * g.in_pixels());
    assert!(image <= u32::MAX as usize, "an image of {image} values is too large for 32-bit offsets");
    let out_pixels = g.out_pixels();
    // The register blocks below write every channel of every output pixel once, through raw pointers,
    // so the buffer starts uninitialised instead of zero-filled.
    let len = g.batch * g.c_out * out_pixels;
    let mut output: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return output;
    }

    // Offset of entry (c, a, b) of a column from the column's first input value, in the input and in a
    // zero-padded patch of a block that reaches into the padding ([c][a][PIXELS + k − 1]).
    let patch_row = PIXELS + g.k - 1;
    let offsets_with = |plane: usize, row: usize| -> Vec<u32> {
        (0..g.c_in)
            .flat_map(|c| (0..g.k).flat_map(move |a| (0..g.k).map(move |b| (c * plane + a * row + b) as u32)))
            .collect()
    };
    let offsets = offsets_with(plane, g.w_in);
    let patch_offsets = offsets_with(g.k * patch_row, patch_row);

    // Weights as [panel][depth][4 vectors of 16 output channels], zero past c_out. Blocks of 16 output
    // channels by 16 depth steps are transposed in registers, the rest value by value.
    let panels = g.c_out.div_ceil(PANEL);
    let mut packed = vec![WeightVector([0.0; 16]); panels * depth * PANEL_VECTORS];
    let (full_channels, full_depth) = (g.c_out / 16 * 16, depth / 16 * 16);
    for o0 in (0..full_channels).step_by(16) {
        let (panel, vector) = (o0 / PANEL, o0 % PANEL / 16);
        for d0 in (0..full_depth).step_by(16) {
            let dst = packed[(panel * depth + d0) * PANEL_VECTORS + vector].0.as_mut_ptr();
            // SAFETY: weight rows o0..o0 + 16 contain depth steps d0..d0 + 16, the packed panel contains 16
            // steps from d0 on, PANEL values apart, and the CPU supports AVX-512F (the caller's condition).
            unsafe {
                super::implicit_weight_grad::transpose_16x16(weight[o0 * depth + d0..].as_ptr(), depth, dst, PANEL)
            };
        }
    }
    for o in 0..g.c_out {
        let (panel, vector, lane) = (o / PANEL, o % PANEL / 16, o % 16);
        let steps = if o < full_channels { full_depth..depth } else { 0..depth };
        for d in steps {
            packed[(panel * depth + d) * PANEL_VECTORS + vector].0[lane] = weight[o * depth + d];
        }
    }

    // The bias as [panel][4 vectors of 16 output channels], zero past c_out.
    let panel_bias = activation.map(|activation| {
        assert_eq!(activation.bias.len(), g.c_out, "the bias needs one value per output channel");
        let mut vectors = vec![WeightVector([0.0; 16]); panels * PANEL_VECTORS];
        for (o, &value) in activation.bias.iter().enumerate() {
            vectors[o / 16].0[o % 16] = value;
        }
        (vectors, activation.slope)
    });

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
        let mut patch = Vec::new();

        for chunk in 0..chunks {
            let steps = chunk * chunk_depth..depth.min((chunk + 1) * chunk_depth);
            let mut slot = 0;
            for global_row in task_rows.clone() {
                let (n, i) = (global_row / g.h_out, global_row % g.h_out);
                let dst_row = (n * g.c_out + panel * PANEL) * out_pixels + i * g.w_out;
                for j in (0..g.w_out).step_by(PIXELS) {
                    let width = PIXELS.min(g.w_out - j);
                    // Input pixel of tap (0, 0) of the block's first output pixel, and whether every tap
                    // of the block lies inside the input.
                    let (y0, x0) = (i as isize - g.pad, j as isize - g.pad);
                    let inside =
                        y0 >= 0 && x0 >= 0 && y0 as usize + g.k <= g.h_in && x0 as usize + width + g.k - 1 <= g.w_in;
                    let (src, block_offsets) = if inside {
                        let start = n * image + y0 as usize * g.w_in + x0 as usize;
                        (input[start..].as_ptr(), &offsets[steps.clone()])
                    } else {
                        // Only blocks within `pad` pixels of the border take this branch, so the patch is allocated lazily.
                        patch.resize(g.c_in * g.k * patch_row, 0.0);
                        let channels = steps.start / kk..steps.end.div_ceil(kk);
                        gather_patch(&mut patch, &input[n * image..(n + 1) * image], g, (y0, x0), width, channels);
                        (patch.as_ptr(), &patch_offsets[steps.clone()])
                    };
                    let block = Block {
                        src,
                        offsets: block_offsets,
                        weights: weights[steps.start * PANEL_VECTORS..].as_ptr(),
                        dst: dst.ptr().wrapping_add(dst_row + j),
                        dst_plane: out_pixels,
                        channels,
                        carried: carried.get_mut(slot).map(|acc| acc as *mut Accumulators),
                        activation: panel_bias
                            .as_ref()
                            .map(|(vectors, slope)| (vectors[panel * PANEL_VECTORS..].as_ptr(), *slope)),
                        first: chunk == 0,
                        last: chunk + 1 == chunks,
                    };
                    slot += 1;
                    // SAFETY: the offsets address the input, or the patch, of these pixels, the packed
                    // weights contain these steps, and only this task writes these output rows of this panel.
                    unsafe {
                        match width {
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

/// Copies the input values of `channels` that a block of `width` pixels reads, from input pixel
/// `(y0, x0)` on, into `patch` as [c][a][PIXELS + k − 1], with zeros for the pixels outside the image.
fn gather_patch(
    patch: &mut [f32],
    image: &[f32],
    g: &Correlation,
    (y0, x0): (isize, isize),
    width: usize,
    channels: Range<usize>,
) {
    let patch_row = PIXELS + g.k - 1;
    let plane = g.in_pixels();
    // Patch columns t whose input column x0 + t lies inside the image.
    let span = (width + g.k - 1) as isize;
    let (first, end) = ((-x0).clamp(0, span) as usize, (g.w_in as isize - x0).clamp(0, span) as usize);
    let rows = patch[channels.start * g.k * patch_row..channels.end * g.k * patch_row].chunks_exact_mut(patch_row);
    for (index, row) in rows.enumerate() {
        let (c, a) = (channels.start + index / g.k, index % g.k);
        let y = y0 + a as isize;
        row.fill(0.0);
        if y < 0 || y >= g.h_in as isize || first >= end {
            continue;
        }
        let line = &image[c * plane + y as usize * g.w_in..][..g.w_in];
        let start = (x0 + first as isize) as usize;
        row[first..end].copy_from_slice(&line[start..start + end - first]);
    }
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
    /// The panel's 4 bias vectors and the negative slope of a [`BiasLeakyRelu`] to apply before storing.
    activation: Option<(*const WeightVector, f32)>,
    first: bool,
    last: bool,
}

impl Block<'_> {
    /// Accumulates the chunk in registers, starting from zero or the carried values, then carries them
    /// on or, after the last chunk, applies the activation if any and writes the 64 × NR block.
    ///
    /// # Safety
    /// `src + offset + p` must be readable for every offset and p < NR, `weights` must contain the
    /// chunk's steps, the activation's bias pointer must address 4 vectors, and the output block must be
    /// writable. The CPU must support AVX-512F.
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

        if let Some((bias, slope)) = self.activation {
            let slope = _mm512_set1_ps(slope);
            for (v, acc_vector) in acc.iter_mut().enumerate() {
                let bias = _mm512_load_ps((*bias.add(v)).0.as_ptr());
                for value in acc_vector.iter_mut() {
                    // max(z, slope · z) is the leaky ReLU for 0 ≤ slope ≤ 1. The instruction returns its
                    // second operand when either is NaN, so z comes second: slope 0 times an infinite z
                    // is NaN, and z is then the result, as f32::max gives it in `bias_leaky_relu`.
                    let z = _mm512_add_ps(*value, bias);
                    *value = _mm512_max_ps(_mm512_mul_ps(z, slope), z);
                }
            }
        }

        // Each accumulator contains 16 output channels of one pixel, while the output is channel-major.
        // Each vector's 16 × NR block is transposed in registers and stored with masks, because scalar
        // stores took about a tenth of the block's time.
        //
        // The accumulators go through memory first: transposing straight from them made the compiler keep
        // them on the stack inside the depth loop.
        let mut spilled = [[[0.0f32; 16]; NR]; PANEL_VECTORS];
        for (acc_vector, spilled_vector) in acc.iter().zip(spilled.iter_mut()) {
            for (value, values) in acc_vector.iter().zip(spilled_vector.iter_mut()) {
                _mm512_storeu_ps(values.as_mut_ptr(), *value);
            }
        }
        let pixels = (1u16 << NR) - 1;
        for (v, spilled_vector) in spilled.iter().enumerate() {
            let valid_channels = 16.min(self.channels.saturating_sub(v * 16));
            let mut rows = [_mm512_setzero_ps(); 8];
            for (row, values) in rows.iter_mut().zip(spilled_vector.iter()) {
                *row = _mm512_loadu_ps(values.as_ptr());
            }
            for (pair, halves) in transpose_to_channel_pairs(rows).iter().zip(CHANNEL_PAIRS) {
                for (half, channel) in halves.into_iter().enumerate() {
                    if channel < valid_channels {
                        // The upper half's lanes 8..8 + NR go to the channel's first pixels. The lanes
                        // below are masked off, so their addresses before the row are never written.
                        let row = self.dst.add((v * 16 + channel) * self.dst_plane).wrapping_sub(8 * half);
                        _mm512_mask_storeu_ps(row, pixels << (8 * half), *pair);
                    }
                }
            }
        }
    }
}

/// Channels in the lower and upper half of each result of [`transpose_to_channel_pairs`].
const CHANNEL_PAIRS: [[usize; 2]; 8] = [[0, 4], [8, 12], [1, 5], [9, 13], [2, 6], [10, 14], [3, 7], [11, 15]];

/// Transposes 8 vectors of 16 channels (one pixel each) into 8 vectors whose lower and upper halves hold
/// the 8 pixels of the two channels that [`CHANNEL_PAIRS`] names.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_to_channel_pairs(r: [__m512; 8]) -> [__m512; 8] {
    // Within each 128-bit block b: pixel pairs of channels 4b and 4b + 1 (t[2i]), 4b + 2 and 4b + 3 (t[2i + 1]).
    let mut t = [_mm512_setzero_ps(); 8];
    for i in 0..4 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }

    // Block b of u[c] holds pixels 0..4 of channel 4b + c, block b of u[c + 4] pixels 4..8.
    let mut u = [_mm512_setzero_ps(); 8];
    for half in 0..2 {
        let (t, u) = (&t[4 * half..4 * half + 4], &mut u[4 * half..4 * half + 4]);
        for odd in 0..2 {
            let (a, b) = (_mm512_castps_pd(t[odd]), _mm512_castps_pd(t[odd + 2]));
            u[2 * odd] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
            u[2 * odd + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        }
    }

    // Blocks 0 and 1 (channels c and 4 + c), or 2 and 3 (8 + c and 12 + c), of u[c] and u[c + 4], interleaved.
    let low_blocks = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    let high_blocks = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    let mut pairs = [_mm512_setzero_ps(); 8];
    for c in 0..4 {
        pairs[2 * c] = _mm512_permutex2var_ps(u[c], low_blocks, u[c + 4]);
        pairs[2 * c + 1] = _mm512_permutex2var_ps(u[c], high_blocks, u[c + 4]);
    }
    pairs
}
