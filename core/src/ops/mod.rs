//! Tensor operations shared by the models: the convolution entry points every layer calls, the stride-2
//! convolutions built on them, a single-pass leaky ReLU, the convolution with bias and leaky ReLU of
//! eval-mode layers, and a fused training-mode batch norm.

pub mod batch_norm;
pub mod conv;
pub mod conv_leaky_relu;
mod implicit_gemm;
mod implicit_weight_grad;
pub mod leaky_relu;
pub mod stride2;
mod winograd;

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;

pub use conv::{conv2d, conv2d_input_grad, conv2d_weight_grad, num_threads, set_num_threads};
pub use conv_leaky_relu::conv2d_bias_leaky_relu;
pub use leaky_relu::{leaky_relu, leaky_relu_derivative, leaky_relu_input_grad};
pub use stride2::{conv2d_stride2, conv2d_stride2_input_grad, conv_transpose2d_stride2};

/// Returns the contiguous f32 data of a custom op argument, or an error naming `what` (for example
/// "convolution input") when it is not f32 or not contiguous.
pub(crate) fn f32_data<'a>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    cpu_values::<f32>(storage, layout, what)
}

/// Returns the contiguous values of element type `T` of a custom op argument, or an error naming
/// `tensor_name` when it has another element type or is not contiguous.
pub(crate) fn cpu_values<'a, T: candle_core::WithDType>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
    tensor_name: &str,
) -> candle_core::Result<&'a [T]> {
    let Ok(data) = storage.as_slice::<T>() else {
        candle_core::bail!(
            "pegan's CPU kernels take {:?} tensors here, but the {tensor_name} is {:?}",
            T::DTYPE,
            candle_core::backend::BackendStorage::dtype(storage)
        );
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!(
            "pegan's CPU kernels take contiguous tensors, but the {tensor_name} has strides {:?}",
            layout.stride()
        );
    };
    Ok(&data[start..end])
}

/// Defines a function whose body is compiled twice, for the baseline x86-64 target (where the compiler
/// vectorises element-wise loops 4 values wide) and for AVX-512F (16 values), and which runs the AVX-512
/// copy when the CPU has it. The arguments must be plain names.
///
/// A generic wrapper that takes the loop as a closure does not do this reliably: the closure stays a
/// function of its own, compiled for the baseline, whenever the compiler judges it too large to inline.
macro_rules! widest_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F.
                    return unsafe { wide($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use widest_fn;

/// Raw output pointer shared by tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T>(pub(crate) *mut T);
// SAFETY: every task writes a region no other task touches, and the buffer outlives the tasks.
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// Returns the pointer. Closures call this rather than reading the field, so that they capture
    /// the whole `Sync` wrapper instead of the bare pointer.
    pub(crate) fn ptr(self) -> *mut T {
        self.0
    }
}

/// Runs `task(worker, index)` for every index in `0..n_tasks` on at most `threads` threads.
///
/// Uses candle's persistent CPU worker pool, whose lock serializes concurrent callers, so calls
/// from several host threads never run more than the pool's threads at once. `worker` is below
/// `threads`, no two tasks with the same worker run at the same time, and the tasks of a worker
/// do not depend on timing.
///
/// A panic in a task stops that worker's remaining tasks and is raised again on the calling thread once
/// the pool is idle. It never unwinds through the pool itself, whose lock a panic would poison for every
/// later call in the process.
pub(crate) fn run_tasks(n_tasks: usize, threads: usize, task: impl Fn(usize, usize) + Sync) {
    let pool = candle_core::utils::barrier_pool();
    let pool_threads = pool.n_workers() + 1;
    let threads = threads.min(n_tasks).min(pool_threads);
    if threads <= 1 {
        for index in 0..n_tasks {
            task(0, index);
        }
        return;
    }

    let panic: Mutex<Option<Box<dyn Any + Send>>> = Mutex::new(None);
    pool.execute(|thread_id| {
        // The calling thread runs as the pool's last id; give it worker 0 so it always takes part.
        let worker = if thread_id + 1 == pool_threads { 0 } else { thread_id + 1 };
        if worker >= threads {
            return;
        }
        // A fixed, strided assignment: worker w always runs tasks w, w + threads, ... in order, so
        // per-worker partial sums, and hence the results, are the same on every run.
        let run = || {
            for index in (worker..n_tasks).step_by(threads) {
                task(worker, index);
            }
        };
        if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(run)) {
            panic.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get_or_insert(payload);
        }
    });
    if let Some(payload) = panic.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()) {
        std::panic::resume_unwind(payload);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::run_tasks;

    /// Checks that a panicking task reaches the caller and leaves the pool usable: the next call runs
    /// every task, and so does a convolution that runs on the pool.
    #[test]
    fn task_panic_reaches_caller_and_pool_survives() {
        let result = std::panic::catch_unwind(|| {
            run_tasks(8, 2, |_, index| {
                if index == 5 {
                    panic!("task 5 failed");
                }
            })
        });
        let payload = result.expect_err("the panic of task 5 reaches the caller");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"task 5 failed"));

        let sum = AtomicUsize::new(0);
        run_tasks(8, 2, |_, index| {
            sum.fetch_add(index, Ordering::Relaxed);
        });
        assert_eq!(sum.into_inner(), 28, "the tasks of the next call");

        let device = candle_core::Device::Cpu;
        let x = candle_core::Tensor::ones((1, 64, 16, 16), candle_core::DType::F32, &device).unwrap();
        let w = candle_core::Tensor::ones((128, 64, 3, 3), candle_core::DType::F32, &device).unwrap();
        let y = super::conv2d(&x, &w, 1).unwrap();
        let center: f32 = y.get(0).unwrap().get(0).unwrap().get(8).unwrap().get(8).unwrap().to_scalar().unwrap();
        assert_eq!(center, 576.0, "a convolution after the panic");
    }
}
