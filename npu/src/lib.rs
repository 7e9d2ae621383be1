//! mixq-npu: the AMD XDNA (Phoenix) NPU side of mixq, emulated on the host.
//!
//! No XDNA hardware or AIE toolchain has ever been used by this project: everything here
//! that "runs on the NPU" runs on the CPU, with the NPU's arithmetic, and a model of its time.
//! README.md beside this crate states plainly what runs where.
//!
//! - [`detect`]: finds a real XDNA device (`/dev/accel/*`, the `amdxdna` driver in sysfs,
//!   firmware) and says what mixq can do with it today (nothing beyond reporting it).
//! - [`spec`]: [`NpuSpec`], the hardware constants of Phoenix (and Hawk Point, Strix), each
//!   with its source.
//! - [`tiling`]: [`TilingPlan`], how one layer's attention block (q/k/v/o projections and
//!   attention over the KV cache) maps onto the compute tiles and memory tiles, fed from the
//!   `.mixq` file's `npu.bank*` sections.
//! - [`exec`]: [`FunctionalExecutor`], bit-exact W4ABF16 semantics (int4 weights, bf16
//!   activations, fp32 accumulation) as the NPU kernels are defined to compute them.
//! - [`timing`]: [`TimingModel`], predicted NPU time per layer and per token for any
//!   Gemma 3 shape, decode or prefill chunk.
//! - [`shapes`]: the published Gemma 3 shapes (270M .. 27B) as configs, for plans and benches.

pub mod bf16;
pub mod detect;
pub mod error;
pub mod exec;
pub mod shapes;
pub mod spec;
pub mod tiling;
pub mod timing;

pub use detect::{detect, detect_at, NpuDetection, NpuDevice};
pub use error::{NpuError, Result};
pub use exec::{AttnPartition, FunctionalExecutor};
pub use spec::NpuSpec;
pub use tiling::{
    AttnDims, AttnQTypes, AttnTiling, DmaTransfer, L1Budget, Proj, ProjTiling, TensorLocation,
    TileMode, TilingPlan,
};
pub use timing::{LayerTime, NpuTimeBreakdown, OpTime, TimingModel};
