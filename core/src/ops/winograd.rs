//! Stride-1 3×3 correlation with Winograd's minimal filtering algorithm F(2×2, 3×3), for wide layers on
//! small images such as StyleGAN2's 512-channel layers at 16² and 32².
//!
//! Each 2×2 block of output pixels (a tile) reads a 4×4 patch of the input. In the Winograd domain the
//! correlation of a patch with a 3×3 kernel is an element-wise product of two 4×4 matrices, so per pair
//! of input and output channels a tile takes 16 multiplications instead of 36. Summed over the input
//! channels, each of the 16 positions ξ is one matrix product, U[ξ] (c_out × c_in) times V[ξ]
//! (c_in × tiles), which runs on the gemm crate:
//!
//! - kernel transform U = G g Gᵀ, once per call;
//! - input transform V = Bᵀ d B for every patch d;
//! - output transform Y = Aᵀ M A for every tile of the products M.
//!
//! The transforms only add, subtract and halve, so the result equals the direct sum up to rounding. The
//! convolution tests hold it to the same f32 tolerance as the other kernels. Tiles are processed in
//! blocks whose transformed inputs and products fit a memory budget.
//!
//! The weight gradient runs through the same transforms (see [`correlate_weight_grad`]), and the input
//! gradient is a correlation with the rotated kernel, which the kernel transform reads in place.
//!
//! NOTE: the transforms add neighbouring values before multiplying, so an infinite input value gives NaN
//! in the outputs next to it where the direct sum gives infinity, and values near `f32::MAX` overflow
//! sooner than in the direct sum.

use super::conv::{matmul, zero_padded_planes, Correlation};
use super::{run_tasks, widest_fn, SharedMut};

/// Positions of a 4×4 tile in the Winograd domain.
const POSITIONS: usize = 16;
/// Upper bound, in bytes, on the transformed inputs and the products of one block of tiles together,
/// unless c_in + c_out is so large that the minimum block of [`TILE_ALIGNMENT`] tiles exceeds it. The
/// transformed kernels (16 · c_out · c_in values) and a padded copy of the input come on top.
const BLOCK_BUDGET_BYTES: usize = 32 << 20;
/// Tiles per block are a multiple of this, so that the gemm crate works on whole vectors of 16 values.
const TILE_ALIGNMENT: usize = 16;

/// Tile count from which the Winograd path is faster than im2col and the gemm crate. Below it, the costs
/// that do not grow with the tiles (mostly the kernel transform) dominate. Measured forward, 512
/// channels, 2 threads: 4x4 took 2.2 against 0.59 ms (4 tiles), 8x8 2.1 against 1.2 ms (16 tiles), and
/// 8x8 in a batch of 4 3.4 against 4.3 ms (64 tiles).
const MIN_TILES: usize = 64;

/// Returns `true` if [`correlate`] suits the geometry: a 3×3 kernel, at least 64 input and 128 output
/// channels, and at least [`MIN_TILES`] tiles, where the transforms cost little next to the products.
pub(crate) fn suits(g: &Correlation) -> bool {
    let tiles = g.batch * g.h_out.div_ceil(2) * g.w_out.div_ceil(2);
    g.k == 3 && g.c_in >= 64 && g.c_out >= 128 && tiles >= MIN_TILES
}

/// Storage order of [`correlate`]'s kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KernelLayout {
    /// (c_out, c_in, 3, 3): kernel g[o, c] is `weight[o, c]`.
    Direct,
    /// (c_in, c_out, 3, 3), the weight of the convolution whose input gradient this correlation is:
    /// kernel g[o, c] is `weight[c, o]` rotated by 180 degrees.
    Transposed,
}

/// Correlates `input` (batch, c_in, h_in, w_in) with `weight` (c_out, c_in, 3, 3), both contiguous, with
/// the zero padding or cropping of `g`, and returns the contiguous (batch, c_out, h_out, w_out) output.
/// With [`KernelLayout::Transposed`], `weight` is (c_in, c_out, 3, 3) instead and is used flipped, as
/// the input gradient of a convolution needs.
pub(crate) fn correlate(
    input: &[f32],
    (weight, layout): (&[f32], KernelLayout),
    g: &Correlation,
    threads: usize,
) -> Vec<f32> {
    correlate_in_blocks(input, (weight, layout), g, threads, BLOCK_BUDGET_BYTES)
}

/// [`correlate`] with blocks of tiles whose transformed inputs and products take at most `budget` bytes
/// (but at least [`TILE_ALIGNMENT`] tiles).
fn correlate_in_blocks(
    input: &[f32],
    (weight, layout): (&[f32], KernelLayout),
    g: &Correlation,
    threads: usize,
    budget: usize,
) -> Vec<f32> {
    assert_eq!(g.k, 3, "F(2x2, 3x3) needs a 3x3 kernel");
    let out_pixels = g.out_pixels();
    let len = g.batch * g.c_out * out_pixels;
    // The output transform writes every pixel once, and the buffers below are written before they are
    // read, so all of them start uninitialised and are only used through raw pointers until written.
    let mut output: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return output;
    }

    let kernels = transform_kernels(weight, layout, g, threads);

    let tiles = Tiles::new(g);
    let total = g.batch * tiles.per_image();
    let block = tiles.per_block(g, budget);
    let padded = PaddedInput::new(input, g, &tiles, threads);

    let mut transformed: Vec<f32> = Vec::with_capacity(POSITIONS * g.c_in * block);
    let mut products: Vec<f32> = Vec::with_capacity(POSITIONS * g.c_out * block);
    let (transformed, products) = (SharedMut(transformed.as_mut_ptr()), SharedMut(products.as_mut_ptr()));
    let dst = SharedMut(output.as_mut_ptr());
    for first in (0..total).step_by(block) {
        let count = block.min(total - first);
        let tile_range = first..first + count;
        transform_inputs(&padded, g, &tiles, tile_range.clone(), (transformed, block), threads);

        // One product per position: products[ξ] (c_out × count) = kernels[ξ] (c_out × c_in) × transformed[ξ].
        run_tasks(POSITIONS, threads, |_, position| {
            let lhs = kernels[position * g.c_out * g.c_in..].as_ptr();
            // SAFETY: each matrix lies in its buffer with these strides (the first `count` columns of the
            // transformed inputs were written above), and only this task writes the products of this position.
            unsafe {
                matmul(
                    (g.c_out, count, g.c_in),
                    products.ptr().add(position * g.c_out * block),
                    (block, 1),
                    false,
                    lhs,
                    (g.c_in, 1),
                    transformed.ptr().add(position * g.c_in * block),
                    (block, 1),
                )
            };
        });

        transform_outputs((products, block), g, &tiles, tile_range, dst, threads);
    }
    // SAFETY: the output transform wrote every pixel of every channel.
    unsafe { output.set_len(len) };
    output
}

/// Computes the weight gradient of [`correlate`], `dw[o, c, a, b] = Σ grad[n, o, i, j] ·
/// input[n, c, i + a − pad, j + b − pad]`, as a contiguous (c_out, c_in, 3, 3), through the same
/// transforms. Per tile the correlation is w ↦ Aᵀ [(G w Gᵀ) ⊙ V] A. Its gradient with respect to w is
/// therefore Gᵀ [Σ over tiles of (A dY Aᵀ) ⊙ V] G, one matrix product per position ξ summed over the tiles.
pub(crate) fn correlate_weight_grad(input: &[f32], grad: &[f32], g: &Correlation, threads: usize) -> Vec<f32> {
    weight_grad_in_blocks(input, grad, g, threads, BLOCK_BUDGET_BYTES)
}

/// [`correlate_weight_grad`] with blocks of tiles as in [`correlate_in_blocks`].
fn weight_grad_in_blocks(input: &[f32], grad: &[f32], g: &Correlation, threads: usize, budget: usize) -> Vec<f32> {
    assert_eq!(g.k, 3, "F(2x2, 3x3) needs a 3x3 kernel");
    let matrix = g.c_out * g.c_in;
    let tiles = Tiles::new(g);
    let total = g.batch * tiles.per_image();
    if matrix == 0 || total == 0 {
        return vec![0.0; matrix * 9];
    }
    let block = tiles.per_block(g, budget);
    let padded = PaddedInput::new(input, g, &tiles, threads);

    // As in correlate_in_blocks, the buffers are written before they are read. The sums start at zero
    // because the first block's products are added to them like the others.
    let mut transformed: Vec<f32> = Vec::with_capacity(POSITIONS * g.c_in * block);
    let mut grads: Vec<f32> = Vec::with_capacity(POSITIONS * g.c_out * block);
    let mut sums = vec![0.0f32; POSITIONS * matrix];
    let (transformed, grads) = (SharedMut(transformed.as_mut_ptr()), SharedMut(grads.as_mut_ptr()));
    let sums_ptr = SharedMut(sums.as_mut_ptr());
    for first in (0..total).step_by(block) {
        let count = block.min(total - first);
        let tile_range = first..first + count;
        transform_inputs(&padded, g, &tiles, tile_range.clone(), (transformed, block), threads);
        transform_output_grads(grad, g, &tiles, tile_range, (grads, block), threads);

        // sums[ξ] (c_out × c_in) += grads[ξ] (c_out × count) × transformed[ξ]ᵀ (count × c_in).
        run_tasks(POSITIONS, threads, |_, position| {
            // SAFETY: each matrix lies in its buffer with these strides (the first `count` columns of both
            // operands were written above), and only this task writes the sums of this position.
            unsafe {
                matmul(
                    (g.c_out, g.c_in, count),
                    sums_ptr.ptr().add(position * matrix),
                    (g.c_in, 1),
                    true,
                    grads.ptr().add(position * g.c_out * block),
                    (block, 1),
                    transformed.ptr().add(position * g.c_in * block),
                    (1, block),
                )
            };
        });
    }

    transform_kernel_grads(&sums, g, threads)
}

/// The tile grid of one image: 2×2 blocks of output pixels, the last row and column partial when the
/// output size is odd.
struct Tiles {
    rows: usize,
    columns: usize,
}

impl Tiles {
    fn new(g: &Correlation) -> Self {
        Tiles { rows: g.h_out.div_ceil(2), columns: g.w_out.div_ceil(2) }
    }

    /// Returns the tiles per block: as many as fit `budget` bytes of transformed inputs and products (or
    /// output gradients), a multiple of [`TILE_ALIGNMENT`] unless that is more than all the tiles.
    fn per_block(&self, g: &Correlation, budget: usize) -> usize {
        let per_tile_bytes = 4 * POSITIONS * (g.c_in + g.c_out);
        let block = (budget / per_tile_bytes).max(TILE_ALIGNMENT) / TILE_ALIGNMENT * TILE_ALIGNMENT;
        block.min(g.batch * self.per_image())
    }

    fn per_image(&self) -> usize {
        self.rows * self.columns
    }

    /// Returns the image, tile row and tile column of tile number `t`.
    fn locate(&self, t: usize) -> (usize, usize, usize) {
        let (n, within) = (t / self.per_image(), t % self.per_image());
        (n, within / self.columns, within % self.columns)
    }
}

/// The input with zeros around it, so that the 4×4 patch of every tile lies inside: row Y and column X
/// of a channel contain input pixel (Y − pad, X − pad), or zero.
struct PaddedInput {
    data: Vec<f32>,
    /// Values per channel and per image.
    plane: usize,
    image: usize,
    columns: usize,
}

impl PaddedInput {
    fn new(input: &[f32], g: &Correlation, tiles: &Tiles, threads: usize) -> Self {
        let (rows, columns) = (2 * tiles.rows + 2, 2 * tiles.columns + 2);
        let planes = g.batch * g.c_in;
        let data = zero_padded_planes(input, planes, (g.h_in, g.w_in), (rows, columns), g.pad, threads);
        let plane = rows * columns;
        Self { data, plane, image: g.c_in * plane, columns }
    }

    /// Returns the offset of the top-left value of tile `t`'s patch in channel 0 of its image.
    fn patch_offset(&self, tiles: &Tiles, t: usize) -> usize {
        let (n, tile_row, tile_column) = tiles.locate(t);
        n * self.image + 2 * tile_row * self.columns + 2 * tile_column
    }
}

/// Output positions of one tile: the image's offset per output channel, the offset of the tile's first
/// pixel within a channel, and which of its 4 pixels lie inside the output.
struct TilePixels {
    /// Offset of the image divided by c_out: image n starts at n · out_pixels · c_out.
    image_offset: usize,
    first: usize,
    inside: [bool; 4],
}

impl TilePixels {
    fn new(tiles: &Tiles, g: &Correlation, t: usize) -> Self {
        let (n, tile_row, tile_column) = tiles.locate(t);
        let (i, j) = (2 * tile_row, 2 * tile_column);
        let inside = [true, j + 1 < g.w_out, i + 1 < g.h_out, i + 1 < g.h_out && j + 1 < g.w_out];
        Self { image_offset: n * g.out_pixels(), first: i * g.w_out + j, inside }
    }

    /// Returns the row-major index (0 to 3) and the offset within a channel of each pixel inside the output.
    fn offsets(&self, g: &Correlation) -> impl Iterator<Item = (usize, usize)> + '_ {
        let steps = [0, 1, g.w_out, g.w_out + 1];
        (0..4).filter(|&index| self.inside[index]).map(move |index| (index, self.first + steps[index]))
    }
}

/// Returns the 16 positions of G g Gᵀ for the 3×3 kernel `k` (row-major), with
/// G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]].
#[inline(always)]
fn kernel_transform(k: [f32; 9]) -> [f32; POSITIONS] {
    // G g: the rows of g combined, 4 rows of 3.
    let mut left = [[0.0f32; 3]; 4];
    for b in 0..3 {
        let (g0, g1, g2) = (k[b], k[3 + b], k[6 + b]);
        left[0][b] = g0;
        left[1][b] = 0.5 * (g0 + g1 + g2);
        left[2][b] = 0.5 * (g0 - g1 + g2);
        left[3][b] = g2;
    }

    // (G g) Gᵀ: the columns combined the same way.
    let mut u = [0.0f32; POSITIONS];
    for (row, &[g0, g1, g2]) in left.iter().enumerate() {
        u[4 * row..4 * row + 4].copy_from_slice(&[g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2]);
    }
    u
}

/// Returns the 16 positions of Bᵀ d B for the 4×4 patch `d` (row-major), with
/// Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]].
#[inline(always)]
fn input_transform(d: [f32; POSITIONS]) -> [f32; POSITIONS] {
    // Bᵀ d: the rows combined.
    let mut rows = [[0.0f32; 4]; 4];
    for b in 0..4 {
        let (d0, d1, d2, d3) = (d[b], d[4 + b], d[8 + b], d[12 + b]);
        rows[0][b] = d0 - d2;
        rows[1][b] = d1 + d2;
        rows[2][b] = d2 - d1;
        rows[3][b] = d1 - d3;
    }

    // (Bᵀ d) B: the columns combined the same way.
    let mut v = [0.0f32; POSITIONS];
    for (row, &[r0, r1, r2, r3]) in rows.iter().enumerate() {
        v[4 * row..4 * row + 4].copy_from_slice(&[r0 - r2, r1 + r2, r2 - r1, r1 - r3]);
    }
    v
}

/// Returns the 2×2 output pixels Aᵀ M A for the 16 positions `m` (row-major), with
/// Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]].
#[inline(always)]
fn output_transform(m: [f32; POSITIONS]) -> [f32; 4] {
    // Aᵀ M: the rows combined.
    let mut rows = [[0.0f32; 4]; 2];
    for b in 0..4 {
        let (m0, m1, m2, m3) = (m[b], m[4 + b], m[8 + b], m[12 + b]);
        rows[0][b] = m0 + m1 + m2;
        rows[1][b] = m1 - m2 - m3;
    }

    // (Aᵀ M) A: the columns combined the same way.
    let [[a0, a1, a2, a3], [b0, b1, b2, b3]] = rows;
    [a0 + a1 + a2, a1 - a2 - a3, b0 + b1 + b2, b1 - b2 - b3]
}

/// Returns the 16 positions of A dY Aᵀ for the 2×2 output gradient `dy` (row-major), the transpose of
/// [`output_transform`], with A = [[1, 0], [1, 1], [1, −1], [0, −1]].
#[inline(always)]
fn output_grad_transform(dy: [f32; 4]) -> [f32; POSITIONS] {
    // A dY: 4 rows of 2.
    let [p0, q0, p1, q1] = dy;
    let rows = [[p0, q0], [p0 + p1, q0 + q1], [p0 - p1, q0 - q1], [-p1, -q1]];

    // (A dY) Aᵀ: the columns combined the same way.
    let mut m = [0.0f32; POSITIONS];
    for (row, &[p, q]) in rows.iter().enumerate() {
        m[4 * row..4 * row + 4].copy_from_slice(&[p, p + q, p - q, -q]);
    }
    m
}

/// Returns the 3×3 kernel gradient Gᵀ dU G for the 16 positions `du` (row-major), the transpose of
/// [`kernel_transform`].
#[inline(always)]
fn kernel_grad_transform(du: [f32; POSITIONS]) -> [f32; 9] {
    // Gᵀ dU: 3 rows of 4.
    let mut rows = [[0.0f32; 4]; 3];
    for j in 0..4 {
        let (u0, u1, u2, u3) = (du[j], du[4 + j], du[8 + j], du[12 + j]);
        rows[0][j] = u0 + 0.5 * (u1 + u2);
        rows[1][j] = 0.5 * (u1 - u2);
        rows[2][j] = 0.5 * (u1 + u2) + u3;
    }

    // (Gᵀ dU) G: the columns combined the same way.
    let mut k = [0.0f32; 9];
    for (row, &[s0, s1, s2, s3]) in rows.iter().enumerate() {
        k[3 * row..3 * row + 3].copy_from_slice(&[s0 + 0.5 * (s1 + s2), 0.5 * (s1 - s2), 0.5 * (s1 + s2) + s3]);
    }
    k
}

/// Values per batch of the transforms: channels for the kernels, tiles for the inputs and outputs. The
/// transforms run on 16 lanes at a time so that the compiler vectorises them.
const LANES: usize = 16;

/// Copies the first `dst.len()` lanes of `src` into `dst`. A full row is a copy of constant size, which
/// the compiler inlines, where a `copy_from_slice` of variable length calls `memmove`.
#[inline(always)]
fn copy_lanes(dst: &mut [f32], src: &[f32; LANES]) {
    if let Ok(full) = <&mut [f32; LANES]>::try_from(&mut *dst) {
        *full = *src;
    } else {
        dst.copy_from_slice(&src[..dst.len()]);
    }
}

/// Writes the first `width` lanes of row ξ of `values` to `dst` at `start + ξ · matrix`, for the 16
/// positions ξ.
///
/// # Safety
/// The 16 runs of `width` values must lie in `dst`'s buffer, and no other thread may access them.
#[inline(always)]
unsafe fn store_positions(
    values: &[[f32; LANES]; POSITIONS],
    (dst, matrix): (SharedMut<f32>, usize),
    start: usize,
    width: usize,
) {
    for (position, row_values) in values.iter().enumerate() {
        let row = std::slice::from_raw_parts_mut(dst.ptr().add(position * matrix + start), width);
        copy_lanes(row, row_values);
    }
}

/// Applies `transform` to each of the 16 lanes of `inputs` (N rows of lanes) and returns its results as
/// M rows of lanes. After inlining, the compiler vectorises the loop over the lanes.
#[inline(always)]
fn per_lane<const N: usize, const M: usize>(
    inputs: &[[f32; LANES]; N],
    transform: impl Fn([f32; N]) -> [f32; M],
) -> [[f32; LANES]; M] {
    let mut outputs = [[0.0f32; LANES]; M];
    for lane in 0..LANES {
        let results = transform(std::array::from_fn(|row| inputs[row][lane]));
        for (row, value) in outputs.iter_mut().zip(results) {
            row[lane] = value;
        }
    }
    outputs
}

/// Returns the transformed kernels U[ξ][o][c] = (G g[o, c] Gᵀ)[ξ], contiguous, where g[o, c] is the 3×3
/// kernel of output channel o and input channel c as `layout` stores it.
fn transform_kernels(weight: &[f32], layout: KernelLayout, g: &Correlation, threads: usize) -> Vec<f32> {
    let matrix = g.c_out * g.c_in;
    // Every value is written below, so the buffer starts uninitialised.
    let mut kernels: Vec<f32> = Vec::with_capacity(POSITIONS * matrix);
    let dst = SharedMut(kernels.as_mut_ptr());
    // Tasks take runs of output channels, and each writes its rows of every position.
    const CHANNELS_PER_TASK: usize = 16;
    run_tasks(g.c_out.div_ceil(CHANNELS_PER_TASK), threads, |_, task| {
        let outputs = task * CHANNELS_PER_TASK..g.c_out.min((task + 1) * CHANNELS_PER_TASK);
        transform_kernel_rows(weight, layout, g, outputs, dst);
    });
    // SAFETY: the tasks wrote every channel pair of every position.
    unsafe { kernels.set_len(POSITIONS * matrix) };
    kernels
}

widest_fn! {
    /// Writes rows `outputs` of every position of [`transform_kernels`]'s result to `dst`.
    fn transform_kernel_rows(
        weight: &[f32],
        layout: KernelLayout,
        g: &Correlation,
        outputs: std::ops::Range<usize>,
        dst: SharedMut<f32>,
    ) {
        let matrix = g.c_out * g.c_in;
        for o in outputs {
            for c0 in (0..g.c_in).step_by(LANES) {
                let width = LANES.min(g.c_in - c0);
                // Kernel c0 + lane starts at first + lane · stride, with its taps reversed in the
                // transposed layout.
                let (first, stride) = match layout {
                    KernelLayout::Direct => ((o * g.c_in + c0) * 9, 9),
                    KernelLayout::Transposed => ((c0 * g.c_out + o) * 9, g.c_out * 9),
                };
                let reversed = layout == KernelLayout::Transposed;
                let span = &weight[first..first + (width - 1) * stride + 9];
                let taps = gather_taps(span, stride, width, reversed);
                let u = per_lane(&taps, kernel_transform);
                // SAFETY: the caller's task owns rows `outputs` of every position.
                unsafe { store_positions(&u, (dst, matrix), o * g.c_in + c0, width) };
            }
        }
    }
}

/// Writes V = Bᵀ d B for the input patch d of every channel and every tile in `tile_range` to
/// `transformed` as [ξ][c][tile − tile_range.start], rows `block` values long (a buffer of
/// 16 · c_in · block values).
fn transform_inputs(
    padded: &PaddedInput,
    g: &Correlation,
    tiles: &Tiles,
    tile_range: std::ops::Range<usize>,
    (dst, block): (SharedMut<f32>, usize),
    threads: usize,
) {
    let offsets: Vec<usize> = tile_range.map(|t| padded.patch_offset(tiles, t)).collect();
    run_tasks(g.c_in, threads, |_, c| {
        transform_input_channel(padded, c, &offsets, dst, g.c_in * block, block);
    });
}

widest_fn! {
    /// Writes row c of every position of [`transform_inputs`]'s result, for the tiles whose patches start
    /// at `offsets`. Positions are `matrix` values apart in `dst`, rows `block` values.
    fn transform_input_channel(
        padded: &PaddedInput,
        c: usize,
        offsets: &[usize],
        dst: SharedMut<f32>,
        matrix: usize,
        block: usize,
    ) {
        let channel = &padded.data[c * padded.plane..];
        for (group, group_offsets) in offsets.chunks(LANES).enumerate() {
            let d = gather_patches(channel, group_offsets, padded.columns);
            let v = per_lane(&d, input_transform);
            // SAFETY: the caller's task owns row c of every position, and the group's tiles lie within the block.
            unsafe { store_positions(&v, (dst, matrix), c * block + group * LANES, group_offsets.len()) };
        }
    }
}

/// Writes Y = Aᵀ M A, the 2×2 output pixels of every output channel and every tile in `tile_range`, to
/// `output`. M gathers the 16 positions of `products` ([ξ][o][tile − tile_range.start], rows `block`
/// values long, written for the tiles of the range). Pixels past an odd output size are dropped.
fn transform_outputs(
    (products, block): (SharedMut<f32>, usize),
    g: &Correlation,
    tiles: &Tiles,
    tile_range: std::ops::Range<usize>,
    output: SharedMut<f32>,
    threads: usize,
) {
    let pixels: Vec<TilePixels> = tile_range.map(|t| TilePixels::new(tiles, g, t)).collect();
    run_tasks(g.c_out, threads, |_, o| {
        transform_output_channel(products, g.c_out * block, block, g, o, &pixels, output);
    });
}

widest_fn! {
    /// Writes channel o of [`transform_outputs`]'s result for the tiles of `pixels`.
    fn transform_output_channel(
        products: SharedMut<f32>,
        matrix: usize,
        block: usize,
        g: &Correlation,
        o: usize,
        pixels: &[TilePixels],
        output: SharedMut<f32>,
    ) {
        let channel = o * g.out_pixels();
        for (group, group_pixels) in pixels.chunks(LANES).enumerate() {
            let width = group_pixels.len();
            let mut m = [[0.0f32; LANES]; POSITIONS];
            for (position, values) in m.iter_mut().enumerate() {
                // SAFETY: the products of these tiles were written, and the row lies in the buffer.
                let row = unsafe {
                    std::slice::from_raw_parts(products.ptr().add(position * matrix + o * block + group * LANES), width)
                };
                match <&[f32; LANES]>::try_from(row) {
                    Ok(full) => *values = *full,
                    Err(_) => values[..width].copy_from_slice(row),
                }
            }
            let y = per_lane(&m, output_transform);
            for (lane, tile) in group_pixels.iter().enumerate() {
                for (index, offset) in tile.offsets(g) {
                    // SAFETY: the caller's task owns channel o of every image, and the pixel lies in it.
                    unsafe { *output.ptr().add(tile.image_offset * g.c_out + channel + offset) = y[index][lane] };
                }
            }
        }
    }
}

/// Writes A dY Aᵀ for the output gradient dY of every output channel and every tile in `tile_range` to
/// `grads` as [ξ][o][tile − tile_range.start], rows `block` values long (a buffer of 16 · c_out · block
/// values). Pixels past an odd output size read zero.
fn transform_output_grads(
    grad: &[f32],
    g: &Correlation,
    tiles: &Tiles,
    tile_range: std::ops::Range<usize>,
    (dst, block): (SharedMut<f32>, usize),
    threads: usize,
) {
    let pixels: Vec<TilePixels> = tile_range.map(|t| TilePixels::new(tiles, g, t)).collect();
    run_tasks(g.c_out, threads, |_, o| {
        transform_output_grad_channel(grad, g, o, &pixels, dst, g.c_out * block, block);
    });
}

widest_fn! {
    /// Writes row o of every position of [`transform_output_grads`]'s result for the tiles of `pixels`.
    fn transform_output_grad_channel(
        grad: &[f32],
        g: &Correlation,
        o: usize,
        pixels: &[TilePixels],
        dst: SharedMut<f32>,
        matrix: usize,
        block: usize,
    ) {
        let channel = o * g.out_pixels();
        for (group, group_pixels) in pixels.chunks(LANES).enumerate() {
            let mut dy = [[0.0f32; LANES]; 4];
            for (lane, tile) in group_pixels.iter().enumerate() {
                for (index, offset) in tile.offsets(g) {
                    dy[index][lane] = grad[tile.image_offset * g.c_out + channel + offset];
                }
            }
            let m = per_lane(&dy, output_grad_transform);
            // SAFETY: the caller's task owns row o of every position, and the group's tiles lie within the block.
            unsafe { store_positions(&m, (dst, matrix), o * block + group * LANES, group_pixels.len()) };
        }
    }
}

/// Returns the kernel gradient (c_out, c_in, 3, 3), contiguous, from the sums dU[ξ][o][c].
fn transform_kernel_grads(sums: &[f32], g: &Correlation, threads: usize) -> Vec<f32> {
    let mut dw = vec![0.0f32; g.c_out * g.c_in * 9];
    let dst = SharedMut(dw.as_mut_ptr());
    const CHANNELS_PER_TASK: usize = 16;
    run_tasks(g.c_out.div_ceil(CHANNELS_PER_TASK), threads, |_, task| {
        let outputs = task * CHANNELS_PER_TASK..g.c_out.min((task + 1) * CHANNELS_PER_TASK);
        transform_kernel_grad_rows(sums, g, outputs, dst);
    });
    dw
}

widest_fn! {
    /// Writes rows `outputs` of [`transform_kernel_grads`]'s result to `dst`.
    fn transform_kernel_grad_rows(sums: &[f32], g: &Correlation, outputs: std::ops::Range<usize>, dst: SharedMut<f32>) {
        let matrix = g.c_out * g.c_in;
        for o in outputs {
            for c0 in (0..g.c_in).step_by(LANES) {
                let width = LANES.min(g.c_in - c0);
                let mut du = [[0.0f32; LANES]; POSITIONS];
                for (position, values) in du.iter_mut().enumerate() {
                    values[..width].copy_from_slice(&sums[position * matrix + o * g.c_in + c0..][..width]);
                }
                let taps = per_lane(&du, kernel_grad_transform);
                // SAFETY: the caller's task owns rows `outputs` of dw.
                let kernels =
                    unsafe { std::slice::from_raw_parts_mut(dst.ptr().add((o * g.c_in + c0) * 9), width * 9) };
                for (lane, kernel) in kernels.chunks_exact_mut(9).enumerate() {
                    for (t, value) in kernel.iter_mut().enumerate() {
                        *value = taps[t][lane];
                    }
                }
            }
        }
    }
}

/// Returns the 9 taps of `width` ≤ 16 kernels as rows of 16 lanes: kernel l starts at `span[l · stride]`,
/// and with `reversed` its taps are read from last to first (a kernel rotated by 180 degrees).
#[inline(always)]
fn gather_taps(span: &[f32], stride: usize, width: usize, reversed: bool) -> [[f32; LANES]; 9] {
    // A gather instruction per row spares writing the 144 values one by one and then loading each row
    // right after its 16 stores (the kernel transform's share of the 512-channel layer in perf: 11 to 8%).
    #[cfg(target_arch = "x86_64")]
    if width == LANES && i32::try_from((LANES - 1) * stride).is_ok() && std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the 16 kernels lie in `span`, the offsets fit an i32, and the CPU supports AVX-512F.
        return unsafe { gather_taps_avx512(span, stride, reversed) };
    }
    let mut taps = [[0.0f32; LANES]; 9];
    for lane in 0..width {
        for (t, &value) in span[lane * stride..][..9].iter().enumerate() {
            taps[if reversed { 8 - t } else { t }][lane] = value;
        }
    }
    taps
}

/// Returns the 4×4 patches that start at `offsets` (at most 16) in `channel`, whose rows are `columns`
/// values apart, as 16 rows of lanes: row 4a + b contains value (a, b) of every patch.
#[inline(always)]
fn gather_patches(channel: &[f32], offsets: &[usize], columns: usize) -> [[f32; LANES]; POSITIONS] {
    // The offsets grow with the lane, so the last patch ends furthest in.
    let end = offsets.last().map_or(0, |&last| last + 3 * columns + 4);
    #[cfg(target_arch = "x86_64")]
    if offsets.len() == LANES
        && end <= channel.len()
        && i32::try_from(end).is_ok()
        && std::is_x86_feature_detected!("avx512f")
    {
        // SAFETY: every patch lies in `channel`, the offsets fit an i32, and the CPU supports AVX-512F.
        return unsafe { gather_patches_avx512(channel, offsets, columns) };
    }
    let mut d = [[0.0f32; LANES]; POSITIONS];
    for (lane, &offset) in offsets.iter().enumerate() {
        for a in 0..4 {
            for (b, &value) in channel[offset + a * columns..][..4].iter().enumerate() {
                d[4 * a + b][lane] = value;
            }
        }
    }
    d
}

/// [`gather_patches`] for 16 patches with AVX-512 gathers.
///
/// # Safety
/// Every patch must lie in `channel`, every offset must fit an `i32`, and the CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_patches_avx512(channel: &[f32], offsets: &[usize], columns: usize) -> [[f32; LANES]; POSITIONS] {
    use std::arch::x86_64::*;
    let lanes: [i32; LANES] = std::array::from_fn(|lane| offsets[lane] as i32);
    let indices = _mm512_loadu_si512(lanes.as_ptr().cast());
    let mut d = [[0.0f32; LANES]; POSITIONS];
    for (position, row) in d.iter_mut().enumerate() {
        let start = channel.as_ptr().add(position / 4 * columns + position % 4);
        _mm512_storeu_ps(row.as_mut_ptr(), _mm512_i32gather_ps::<4>(indices, start));
    }
    d
}

/// [`gather_taps`] for 16 kernels with AVX-512 gathers.
///
/// # Safety
/// `span` must hold the 16 kernels, 15 · `stride` must fit an `i32`, and the CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_taps_avx512(span: &[f32], stride: usize, reversed: bool) -> [[f32; LANES]; 9] {
    use std::arch::x86_64::*;
    debug_assert!(span.len() >= (LANES - 1) * stride + 9);
    let offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(stride as i32),
    );
    let mut taps = [[0.0f32; LANES]; 9];
    for (t, row) in taps.iter_mut().enumerate() {
        let tap = if reversed { 8 - t } else { t };
        _mm512_storeu_ps(row.as_mut_ptr(), _mm512_i32gather_ps::<4>(offsets, span.as_ptr().add(tap)));
    }
    taps
}

#[cfg(test)]
mod tests {
    use super::{correlate_in_blocks, weight_grad_in_blocks, Correlation, KernelLayout, POSITIONS};

    /// Direct correlation in f64: out[n, o, i, j] = Σ input[n, c, i + a − pad, j + b − pad] · weight[o, c, a, b].
    fn direct(input: &[f32], weight: &[f32], g: &Correlation) -> Vec<f64> {
        let mut out = vec![0.0; g.batch * g.c_out * g.out_pixels()];
        for (index, value) in out.iter_mut().enumerate() {
            let (n, o, i, j) = (
                index / (g.c_out * g.out_pixels()),
                index / g.out_pixels() % g.c_out,
                index / g.w_out % g.h_out,
                index % g.w_out,
            );
            for c in 0..g.c_in {
                for (a, b) in (0..3).flat_map(|a| (0..3).map(move |b| (a, b))) {
                    let (y, x) = (i as isize + a as isize - g.pad, j as isize + b as isize - g.pad);
                    if y < 0 || x < 0 || y >= g.h_in as isize || x >= g.w_in as isize {
                        continue;
                    }
                    let pixel = input[((n * g.c_in + c) * g.h_in + y as usize) * g.w_in + x as usize] as f64;
                    *value += pixel * weight[(o * g.c_in + c) * 9 + a * 3 + b] as f64;
                }
            }
        }
        out
    }

    /// Direct weight gradient in f64:
    /// dw[o, c, a, b] = Σ grad[n, o, i, j] · input[n, c, i + a − pad, j + b − pad].
    fn direct_weight_grad(input: &[f32], grad: &[f32], g: &Correlation) -> Vec<f64> {
        let mut dw = vec![0.0; g.c_out * g.c_in * 9];
        for (index, value) in dw.iter_mut().enumerate() {
            let (o, c, a, b) = (index / (g.c_in * 9), index / 9 % g.c_in, index / 3 % 3, index % 3);
            for (n, i, j) in
                (0..g.batch).flat_map(|n| (0..g.h_out).flat_map(move |i| (0..g.w_out).map(move |j| (n, i, j))))
            {
                let (y, x) = (i as isize + a as isize - g.pad, j as isize + b as isize - g.pad);
                if y < 0 || x < 0 || y >= g.h_in as isize || x >= g.w_in as isize {
                    continue;
                }
                let pixel = input[((n * g.c_in + c) * g.h_in + y as usize) * g.w_in + x as usize] as f64;
                *value += pixel * grad[((n * g.c_out + o) * g.h_out + i) * g.w_out + j] as f64;
            }
        }
        dw
    }

    /// Asserts that `actual` matches `expected` to 1e-5 relative to (1 + |expected|).
    fn assert_close(actual: &[f32], expected: &[f64], context: &str) {
        assert_eq!(actual.len(), expected.len(), "{context}: length");
        for (index, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert!((*a as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()), "{context}, value {index}: {a} against {e}");
        }
    }

    /// Checks the correlation and its weight gradient on blocks of 16 tiles (the last one partial) against
    /// the direct sums, with padding, with cropping, and with odd output sizes. The 17 input channels make
    /// one full group of 16 kernels for the kernel transform and a partial one.
    #[test]
    fn winograd_blocks_match_direct_sum() {
        for (h_in, w_in, pad) in [(9, 7, 1), (8, 13, 0), (12, 13, -1)] {
            let (h_out, w_out) = ((h_in as isize + 2 * pad - 2) as usize, (w_in as isize + 2 * pad - 2) as usize);
            let g = Correlation { batch: 2, c_in: 17, h_in, w_in, c_out: 7, k: 3, pad, h_out, w_out };
            let values = |len: usize, seed: usize| -> Vec<f32> {
                (0..len).map(|v| ((v * 7919 + seed) % 201) as f32 / 100.0 - 1.0).collect()
            };
            let input = values(g.batch * g.c_in * g.in_pixels(), 3);
            let weight = values(g.c_out * g.c_in * 9, 11);
            let expected = direct(&input, &weight, &g);
            // The same kernels stored as (c_in, c_out, 3, 3), each rotated by 180 degrees.
            let mut transposed = vec![0.0f32; weight.len()];
            for (o, c, t) in (0..g.c_out).flat_map(|o| (0..g.c_in).flat_map(move |c| (0..9).map(move |t| (o, c, t)))) {
                transposed[(c * g.c_out + o) * 9 + 8 - t] = weight[(o * g.c_in + c) * 9 + t];
            }

            // Room for exactly 16 tiles per block: 16 positions of c_in + c_out values per tile.
            let budget = 16 * 4 * POSITIONS * (g.c_in + g.c_out);
            let tiles = g.batch * h_out.div_ceil(2) * w_out.div_ceil(2);
            assert!(tiles > 32, "{tiles} tiles do not make three blocks");
            let grad = values(g.batch * g.c_out * g.out_pixels(), 5);
            let expected_dw = direct_weight_grad(&input, &grad, &g);
            for threads in [1, 2] {
                let context = format!("{h_in}x{w_in}, pad {pad}, {threads} threads");
                let actual = correlate_in_blocks(&input, (&weight, KernelLayout::Direct), &g, threads, budget);
                assert_close(&actual, &expected, &format!("correlation, {context}"));
                let actual = correlate_in_blocks(&input, (&transposed, KernelLayout::Transposed), &g, threads, budget);
                assert_close(&actual, &expected, &format!("correlation with the transposed kernel, {context}"));
                let dw = weight_grad_in_blocks(&input, &grad, &g, threads, budget);
                assert_close(&dw, &expected_dw, &format!("weight gradient, {context}"));
            }
        }
    }
}
