//! Weight gradient of a stride-1 correlation as an implicit GEMM with an AVX-512 micro-kernel. The
//! convolution module picks it for 16 or more output channels on rows of 64 or more pixels.
//!
//! `dw[o, (c, a, b)] = sum over n, i, j of grad[n, o, i, j] · input[n, c, i + a − pad, j + b − pad]` is a
//! product over output pixels. As in the forward kernel (`implicit_gemm.rs`), a vector contains 16 output
//! channels. Each pixel step loads the output gradient of 64 channels, packed per chunk of pixels as
//! [pixel][channel], and broadcasts the input value of each of 6 taps.
//!
//! The input is read in place, because tap (c, a, b) of a row of output pixels is a shifted run of one
//! input row. Taps above or below the image read a zero row, and the few pixels whose tap crosses the
//! left or right edge take a checked path. The sums stay in registers over a chunk of pixels, then go
//! into a transposed copy of `dw`, (tap, channel), so that they need no shuffles.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::sync::RwLock;

use super::conv::Correlation;
use super::{run_tasks, SharedMut};

/// Output channels per vector.
const LANES: usize = 16;
/// Output channels per range: the packed output gradient of a chunk contains 64 channels per pixel.
const RANGE_CHANNELS: usize = 64;
/// Output pixels per chunk: its packed output gradient (2048 × 64 × 4 bytes = 512 KiB) stays in a core's
/// L2 cache while every tap block reads it.
const CHUNK_PIXELS: usize = 2048;
/// Largest transposed `dw`, in values, that each task keeps a copy of, so that tasks split the pixels.
/// Tasks share larger ones and split the taps instead.
const MAX_PRIVATE_DW: usize = 1 << 18;

/// One output row: where its output gradient and its input taps start.
#[derive(Clone, Copy)]
struct Row {
    /// Offset of `grad[n, 0, i, 0]`.
    grad: usize,
    /// Offset of `input[n, 0, i − pad, −pad]`, which may lie outside the input.
    input: isize,
    /// Bit a is set when kernel row a reads an input row inside the image.
    rows_inside: u32,
}

/// Returns the weight gradient (c_out, c_in, k, k) of the correlation `g` of `input` (batch, c_in, h_in,
/// w_in) for the output gradient `grad` (batch, c_out, h_out, w_out), both contiguous. The CPU must
/// support AVX-512F.
pub(crate) fn correlate_weight_grad(input: &[f32], grad: &[f32], g: &Correlation, threads: usize) -> Vec<f32> {
    let (depth, kk) = (g.patch_len(), g.k * g.k);
    let (plane, image) = (g.in_pixels(), g.c_in * g.in_pixels());
    let out_pixels = g.out_pixels();
    if g.c_out * depth == 0 || g.batch * out_pixels == 0 {
        return vec![0.0; g.c_out * depth];
    }

    // Offset of tap (c, a, b) from a row's tap (0, 0) of channel 0, its kernel row a and column b.
    let taps: Vec<Tap> = (0..depth)
        .map(|d| {
            let (c, a, b) = (d / kk, d % kk / g.k, d % g.k);
            Tap { offset: (c * plane + a * g.w_in + b) as isize, row: a as u32, column: b as isize }
        })
        .collect();
    // Output pixels of a row whose taps all lie inside the input row; the others take the checked path.
    let first_inside = g.pad.clamp(0, g.w_out as isize) as usize;
    let end_inside =
        ((g.w_in as isize - g.k as isize + 1 + g.pad).clamp(0, g.w_out as isize) as usize).max(first_inside);
    // Taps on rows outside the image read this instead of the input.
    let zero_row = vec![0.0f32; g.w_out];

    let rows = g.batch * g.h_out;
    let row = |index: usize| -> Row {
        let (n, i) = (index / g.h_out, index % g.h_out);
        let y0 = i as isize - g.pad;
        let rows_inside =
            (0..g.k).filter(|&a| (0..g.h_in as isize).contains(&(y0 + a as isize))).fold(0, |bits, a| bits | 1 << a);
        Row {
            grad: n * g.c_out * out_pixels + i * g.w_out,
            input: (n * image) as isize + y0 * g.w_in as isize - g.pad,
            rows_inside,
        }
    };
    let rows_per_chunk = (CHUNK_PIXELS / g.w_out).clamp(1, rows);
    let chunks = rows.div_ceil(rows_per_chunk);
    let chunk_rows = |chunk: usize| (chunk * rows_per_chunk..rows.min((chunk + 1) * rows_per_chunk)).map(row);
    let ranges = g.c_out.div_ceil(RANGE_CHANNELS);
    let range_channels = |range: usize| range * RANGE_CHANNELS..g.c_out.min((range + 1) * RANGE_CHANNELS);

    // Small weight gradients: each task takes its own chunks of pixels and sums into a private transposed
    // dw. Large ones: the chunks run one after another, and each task takes its own taps of a shared
    // transposed dw.
    let private = depth * g.c_out <= MAX_PRIVATE_DW;
    let copies = if private { chunks.min(threads.max(1)) } else { 1 };
    let mut transposed: Vec<Vec<f32>> = (0..copies).map(|_| vec![0.0; depth * g.c_out]).collect();
    let dst: Vec<SharedMut<f32>> = transposed.iter_mut().map(|t| SharedMut(t.as_mut_ptr())).collect();
    let context = Context { input, zero_row: &zero_row, taps: &taps, inside: first_inside..end_inside, g };

    if private {
        run_tasks(copies, threads, |_, task| {
            let mut packed = Vec::new();
            for chunk in chunks * task / copies..chunks * (task + 1) / copies {
                let rows: Vec<Row> = chunk_rows(chunk).collect();
                for range in 0..ranges {
                    pack_gradient(&mut packed, grad, &rows, range_channels(range), g);
                    // SAFETY: this task alone writes its copy of the transposed dw.
                    unsafe { context.run(&packed, &rows, range_channels(range), 0..depth, dst[task]) };
                }
            }
        });
    } else {
        let tap_blocks = depth.div_ceil(BLOCK_TAPS);
        let tasks = tap_blocks.min(threads.max(1));
        // One packed output gradient per range: the tasks pack the ranges, then all read every range.
        let packed: Vec<RwLock<Vec<f32>>> = (0..ranges).map(|_| RwLock::new(Vec::new())).collect();
        for chunk in 0..chunks {
            let rows: Vec<Row> = chunk_rows(chunk).collect();
            run_tasks(ranges, threads, |_, range| {
                let mut range_packed = packed[range].write().unwrap_or_else(|poisoned| poisoned.into_inner());
                pack_gradient(&mut range_packed, grad, &rows, range_channels(range), g);
            });
            run_tasks(tasks, threads, |_, task| {
                let (start, end) = (tap_blocks * task / tasks, tap_blocks * (task + 1) / tasks);
                let task_taps = start * BLOCK_TAPS..depth.min(end * BLOCK_TAPS);
                for (range, range_packed) in packed.iter().enumerate() {
                    let range_packed = range_packed.read().unwrap_or_else(|poisoned| poisoned.into_inner());
                    // SAFETY: this task alone writes these taps' rows of the transposed dw.
                    unsafe { context.run(&range_packed, &rows, range_channels(range), task_taps.clone(), dst[0]) };
                }
            });
        }
    }

    // Sum the private copies and transpose (tap, channel) back to (channel, tap).
    let mut copies = transposed.into_iter();
    let mut total = copies.next().expect("at least one transposed dw");
    for copy in copies {
        total.iter_mut().zip(&copy).for_each(|(t, c)| *t += c);
    }
    let mut dw = vec![0.0f32; g.c_out * depth];
    for (d, row) in total.chunks_exact(g.c_out).enumerate() {
        for (o, &value) in row.iter().enumerate() {
            dw[o * depth + d] = value;
        }
    }
    dw
}

/// Arguments that every kernel call of one weight gradient shares.
struct Context<'a> {
    input: &'a [f32],
    zero_row: &'a [f32],
    taps: &'a [Tap],
    /// Output pixels of a row whose taps all lie inside the input row.
    inside: std::ops::Range<usize>,
    g: &'a Correlation,
}

impl Context<'_> {
    /// Adds the products of the chunk `rows`, packed by [`pack_gradient`] for `channels`, with `taps`
    /// into the transposed dw (tap, channel) at `dwt`.
    ///
    /// # Safety
    /// `dwt` must contain patch_len × c_out values, and no other thread may write these taps' rows of it
    /// during the call. The CPU must support AVX-512F.
    unsafe fn run(
        &self,
        packed: &[f32],
        rows: &[Row],
        channels: std::ops::Range<usize>,
        taps: std::ops::Range<usize>,
        dwt: SharedMut<f32>,
    ) {
        let g = self.g;
        let vectors = vectors_for(channels.len());
        debug_assert!(packed.len() >= rows.len() * g.w_out * vectors * LANES);
        let block_taps = if vectors == 4 { BLOCK_TAPS } else { 2 * BLOCK_TAPS };
        for start in taps.clone().step_by(block_taps) {
            let kernel = Kernel {
                packed: packed.as_ptr(),
                input: self.input.as_ptr(),
                zero_row: self.zero_row.as_ptr(),
                rows,
                taps: &self.taps[start..taps.end.min(start + block_taps)],
                inside: self.inside.clone(),
                w_out: g.w_out,
                w_in: g.w_in as isize,
                pad: g.pad,
                dwt: dwt.ptr().add(start * g.c_out + channels.start),
                dwt_row: g.c_out,
                channels: channels.len(),
            };
            if vectors == 4 {
                kernel.run::<4, BLOCK_TAPS>();
            } else {
                kernel.run::<2, { 2 * BLOCK_TAPS }>();
            }
        }
    }
}

/// Vectors of 16 output channels per pixel for a range of `channels`: ranges of up to 32 channels take
/// 2 vectors per pixel and 12 taps per block, wider ones 4 vectors and 6 taps.
fn vectors_for(channels: usize) -> usize {
    if channels > 32 {
        4
    } else {
        2
    }
}

/// Taps (c, a, b) per block of 4 vectors of output channels: 4 × 6 accumulators leave registers for the
/// 4 gradient vectors and one broadcast input value.
const BLOCK_TAPS: usize = 6;

/// One tap (c, a, b) of the kernel.
#[derive(Clone, Copy)]
struct Tap {
    /// Offset of its value for a row's first output pixel from the row's `input` offset.
    offset: isize,
    /// Kernel row a.
    row: u32,
    /// Kernel column b.
    column: isize,
}

/// Copies the output gradient of `channels` at the pixels of `rows` into `packed` as [pixel][channel],
/// with as many channels per pixel as the range's vectors contain and zeros past its last channel.
fn pack_gradient(packed: &mut Vec<f32>, grad: &[f32], rows: &[Row], channels: std::ops::Range<usize>, g: &Correlation) {
    let out_pixels = g.out_pixels();
    let stride = vectors_for(channels.len()) * LANES;
    packed.clear();
    packed.resize(rows.len() * g.w_out * stride, 0.0);
    // Blocks of 16 channels by 16 pixels are transposed in registers, the rest value by value.
    let (full_channels, full_pixels) = (channels.len() / LANES * LANES, g.w_out / LANES * LANES);
    for (r, row) in rows.iter().enumerate() {
        let block = &mut packed[r * g.w_out * stride..(r + 1) * g.w_out * stride];
        let source = &grad[row.grad + channels.start * out_pixels..];
        for o0 in (0..full_channels).step_by(LANES) {
            for j0 in (0..full_pixels).step_by(LANES) {
                // SAFETY: channels o0..o0 + 16 of the range exist, pixels j0..j0 + 16 lie in the row, and
                // the packed row has stride values for each of its w_out pixels.
                unsafe {
                    transpose_16x16(
                        source[o0 * out_pixels + j0..].as_ptr(),
                        out_pixels,
                        block[j0 * stride + o0..].as_mut_ptr(),
                        stride,
                    )
                };
            }
        }
        for (o, run) in source.chunks(out_pixels).take(channels.len()).enumerate() {
            let pixels = if o < full_channels { full_pixels..g.w_out } else { 0..g.w_out };
            for j in pixels {
                block[j * stride + o] = run[j];
            }
        }
    }
}

/// Writes the transpose of the 16 × 16 block at `src` (rows `src_row` values apart) to `dst` (rows
/// `dst_row` values apart).
///
/// # Safety
/// Both blocks must lie in their buffers, and the CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn transpose_16x16(src: *const f32, src_row: usize, dst: *mut f32, dst_row: usize) {
    let rows: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(src.add(i * src_row)));

    // Interleave pairs of rows, then pairs of pairs, within each 128-bit lane: afterwards lane l of
    // vector 4q + r contains column 4l + r of rows 4q..4q + 4 (as 4 values).
    let pairs: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (rows[i / 2 * 2], rows[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    let quads: [__m512; 16] = std::array::from_fn(|i| {
        let base = i / 4 * 4 + i % 2;
        let (a, b) = (_mm512_castps_pd(pairs[base]), _mm512_castps_pd(pairs[base + 2]));
        _mm512_castpd_ps(if i % 4 < 2 { _mm512_unpacklo_pd(a, b) } else { _mm512_unpackhi_pd(a, b) })
    });

    // Gather the 128-bit lanes: column c of the block is lane c / 4 of quads 4q + c % 4, for q = 0..4.
    for c in 0..16 {
        let (lane, r) = (c / 4, c % 4);
        let pick = |q: usize| quads[4 * q + [0, 2, 1, 3][r]];
        // low = [lane of pick(0), same, lane of pick(1), same], high likewise for pick(2) and pick(3).
        let (low, high) = match lane {
            0 => (_mm512_shuffle_f32x4::<0x00>(pick(0), pick(1)), _mm512_shuffle_f32x4::<0x00>(pick(2), pick(3))),
            1 => (_mm512_shuffle_f32x4::<0x55>(pick(0), pick(1)), _mm512_shuffle_f32x4::<0x55>(pick(2), pick(3))),
            2 => (_mm512_shuffle_f32x4::<0xaa>(pick(0), pick(1)), _mm512_shuffle_f32x4::<0xaa>(pick(2), pick(3))),
            _ => (_mm512_shuffle_f32x4::<0xff>(pick(0), pick(1)), _mm512_shuffle_f32x4::<0xff>(pick(2), pick(3))),
        };
        let column = _mm512_shuffle_f32x4::<0x88>(low, high);
        _mm512_storeu_ps(dst.add(c * dst_row), column);
    }
}

/// The taps of one block over the rows of one chunk, for one range of output channels.
struct Kernel<'a> {
    /// The chunk's output gradient, [pixel][channel].
    packed: *const f32,
    input: *const f32,
    zero_row: *const f32,
    rows: &'a [Row],
    taps: &'a [Tap],
    /// Output pixels of a row whose taps all lie inside the input row.
    inside: std::ops::Range<usize>,
    w_out: usize,
    w_in: isize,
    pad: isize,
    /// Transposed dw at the block's first tap and the range's first channel; rows `dwt_row` apart.
    dwt: *mut f32,
    dwt_row: usize,
    /// Channels of the range to store.
    channels: usize,
}

impl Kernel<'_> {
    /// Accumulates `NV` vectors of output channels by at most `NT` taps over the chunk and adds the
    /// sums into the transposed dw. The last block of taps may have fewer than `NT`.
    ///
    /// # Safety
    /// The rows and taps must address the input or the zero row, and `packed` must contain the chunk
    /// with `NV` × 16 channels per pixel. The taps' rows of dwt must be writable, and the CPU must
    /// support AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn run<const NV: usize, const NT: usize>(&self) {
        let valid_taps = self.taps.len();
        // Taps past the end repeat the last one; their sums are dropped.
        let taps: [Tap; NT] = std::array::from_fn(|t| self.taps[t.min(valid_taps - 1)]);
        let mut acc = [[_mm512_setzero_ps(); NV]; NT];
        let stride = NV * LANES;
        for (r, row) in self.rows.iter().enumerate() {
            let row_grads = self.packed.add(r * self.w_out * stride);
            // Taps on rows outside the image read the zero row.
            let runs: [*const f32; NT] = std::array::from_fn(|t| {
                if row.rows_inside & (1 << taps[t].row) != 0 {
                    self.input.wrapping_offset(row.input + taps[t].offset)
                } else {
                    self.zero_row
                }
            });

            // Pixels whose taps all lie inside the row.
            for j in self.inside.clone() {
                let grads: [__m512; NV] =
                    std::array::from_fn(|v| _mm512_loadu_ps(row_grads.add(j * stride + v * LANES)));
                for t in 0..NT {
                    let x = _mm512_set1_ps(*runs[t].add(j));
                    for v in 0..NV {
                        acc[t][v] = _mm512_fmadd_ps(grads[v], x, acc[t][v]);
                    }
                }
            }

            // Pixels near the left and right edges: taps whose column falls outside the row read the
            // zero row's first value instead.
            for j in (0..self.inside.start).chain(self.inside.end..self.w_out) {
                let grads: [__m512; NV] =
                    std::array::from_fn(|v| _mm512_loadu_ps(row_grads.add(j * stride + v * LANES)));
                for t in 0..NT {
                    let column = j as isize + taps[t].column - self.pad;
                    let inside = column >= 0 && column < self.w_in;
                    let source = if inside { runs[t].wrapping_add(j) } else { self.zero_row };
                    let x = _mm512_set1_ps(*source);
                    for v in 0..NV {
                        acc[t][v] = _mm512_fmadd_ps(grads[v], x, acc[t][v]);
                    }
                }
            }
        }

        let mut lanes = [0.0f32; LANES];
        for (t, acc_tap) in acc.iter().enumerate().take(valid_taps) {
            let row = self.dwt.add(t * self.dwt_row);
            for (v, value) in acc_tap.iter().enumerate() {
                let stored = self.channels.saturating_sub(v * LANES).min(LANES);
                if stored == LANES {
                    let out = row.add(v * LANES);
                    _mm512_storeu_ps(out, _mm512_add_ps(_mm512_loadu_ps(out), *value));
                } else if stored > 0 {
                    _mm512_storeu_ps(lanes.as_mut_ptr(), *value);
                    for (lane, &sum) in lanes.iter().enumerate().take(stored) {
                        *row.add(v * LANES + lane) += sum;
                    }
                }
            }
        }
    }
}
