//! Hardware constants of an XDNA NPU array, each with where it comes from.
//!
//! Sources (README.md lists them in full):
//! - [AM020] AMD, *Versal Adaptive SoC AIE-ML Architecture Manual* (AM020): the AIE-ML tile.
//! - [UG1603] AMD, *AI Engine-ML Kernel and Graph Programming Guide* (UG1603): 64 KB data
//!   memory per tile (8 banks of 512 x 128 bit), 16 KB program memory, 1 KB default stack and
//!   heap, 512 KB memory tiles.
//! - [IRON] Xilinx/mlir-aie (the IRON open toolchain), `Devices` page: `npu1` is Phoenix and
//!   Hawk Point, 4 usable columns x 4 compute rows, one memory-tile row and one shim row ("the
//!   hidden zeroth column of Phoenix NPUs is irregular and no longer exposed"); `npu2` is
//!   Strix / Krackan, 8 x 4.
//! - [RAI] AMD Ryzen AI Software documentation and AMD's published NPU LLM models
//!   (`...-awq-g128-int4-asym-bf16-onnx-ryzen-strix`, "UINT4 weights, BFP16 activations").
//! - [ISSUE] The figures given in the mixq issue "NPU: the XDNA engine model": rated TOPS,
//!   per-tile MAC rates, the 120 GB/s DRAM, the GEMV/GEMM measurements.
//!
//! Where a number is our assumption rather than a published figure, its doc says "Assumption".

/// One XDNA NPU array (the fields a Phoenix / Hawk Point / Strix variant differ in).
#[derive(Debug, Clone, PartialEq)]
pub struct NpuSpec {
    /// Marketing family name.
    pub name: &'static str,
    /// PCI device ID the `amdxdna` driver binds (vendor 0x1022). [amdxdna `MODULE_FIRMWARE`
    /// list: `amdnpu/1502_00` Phoenix/Hawk Point, `amdnpu/17f0_1x` Strix/Krackan]
    pub pci_device: u16,
    /// Physical columns of compute tiles (Phoenix: 5, 20 tiles). [ISSUE], [IRON]
    pub physical_columns: u32,
    /// Columns the open toolchain exposes and this model uses (Phoenix: 4). [IRON]
    pub columns: u32,
    /// Compute-tile rows per column (4). [IRON]
    pub compute_rows: u32,
    /// Data memory per compute tile, bytes (64 KB). [UG1603]
    pub core_data_bytes: u64,
    /// Bytes of data memory a kernel cannot use: default stack (1 KB) + heap (1 KB) [UG1603],
    /// plus 1 KB we reserve for lock/buffer-descriptor alignment slack (Assumption).
    pub core_reserved_bytes: u64,
    /// Memory tiles (one per usable column) and their size (512 KB each). [UG1603], [IRON]
    pub mem_tiles: u32,
    pub mem_tile_bytes: u64,
    /// Core clock, Hz. Phoenix ~1.0 GHz [ISSUE]; it is what makes 20 tiles x 512 int8 ops
    /// reach the rated 10 TOPS.
    pub clock_hz: f64,
    /// Ops (multiply and add count as 2) per tile per cycle: int8 x int8 512, int4 x int8
    /// 1024, bf16 x bf16 256 (fp32 accumulation). [ISSUE], [AM020]
    pub int8_ops_per_cycle: u32,
    pub int4_ops_per_cycle: u32,
    pub bf16_ops_per_cycle: u32,
    /// Rated peak, TOPS (Phoenix 10, Hawk Point 16, Strix 50). [ISSUE], AMD product pages.
    pub rated_tops: f64,
    /// Shim DMA read channels per column (memory-to-stream) and their width: 2 x 32 bit
    /// per cycle. Assumption from the AIE-ML interface-tile DMA (AM020): it sets the NPU's own
    /// ceiling on DRAM reads, `columns * 2 * 4 B * clock`.
    pub shim_mm2s_per_column: u32,
    pub stream_bytes_per_cycle: u32,
    /// Stream-to-memory DMA channels into one compute tile (2 x 32 bit per cycle). [AM020]
    pub core_s2mm_channels: u32,
    /// The laptop's DRAM bandwidth, shared by CPU, iGPU and NPU; the NPU has none of its own.
    /// 120 GB/s = LPDDR5x-7500 x 128 bit. [ISSUE]
    pub dram_bytes_per_s: f64,
}

impl NpuSpec {
    /// AMD Phoenix (Ryzen 7040): XDNA / AIE-ML, `npu1`, 10 TOPS.
    pub fn phoenix() -> NpuSpec {
        NpuSpec {
            name: "Phoenix (XDNA, AIE-ML)",
            pci_device: 0x1502,
            physical_columns: 5,
            columns: 4,
            compute_rows: 4,
            core_data_bytes: 64 * 1024,
            core_reserved_bytes: 3 * 1024,
            mem_tiles: 4,
            mem_tile_bytes: 512 * 1024,
            clock_hz: 1.0e9,
            int8_ops_per_cycle: 512,
            int4_ops_per_cycle: 1024,
            bf16_ops_per_cycle: 256,
            rated_tops: 10.0,
            shim_mm2s_per_column: 2,
            stream_bytes_per_cycle: 4,
            core_s2mm_channels: 2,
            dram_bytes_per_s: 120e9,
        }
    }

    /// AMD Hawk Point (Ryzen 8040): the same `npu1` array, rated 16 TOPS. Assumption: the
    /// extra rating comes from the clock (16/10 x 1.0 GHz = 1.6 GHz); AMD does not publish it.
    pub fn hawk_point() -> NpuSpec {
        NpuSpec {
            name: "Hawk Point (XDNA, AIE-ML)",
            clock_hz: 1.6e9,
            rated_tops: 16.0,
            ..NpuSpec::phoenix()
        }
    }

    /// AMD Strix / Krackan Point (Ryzen AI 300): XDNA2 / AIE-ML v2, `npu2`, 8 x 4 tiles, rated
    /// 50 TOPS. Described for completeness, not calibrated: Assumption 1024 int8 ops per tile
    /// per cycle (twice AIE-ML's) at ~1.5 GHz, which gives 32 x 1024 x 1.5e9 = 49 TOPS.
    pub fn strix() -> NpuSpec {
        NpuSpec {
            name: "Strix (XDNA2, AIE-ML v2)",
            pci_device: 0x17f0,
            physical_columns: 8,
            columns: 8,
            compute_rows: 4,
            mem_tiles: 8,
            clock_hz: 1.5e9,
            int8_ops_per_cycle: 1024,
            int4_ops_per_cycle: 2048,
            bf16_ops_per_cycle: 512,
            rated_tops: 50.0,
            ..NpuSpec::phoenix()
        }
    }

    /// Compute tiles this model uses (Phoenix: 4 x 4 = 16).
    pub fn cores(&self) -> u32 {
        self.columns * self.compute_rows
    }

    /// Data memory a kernel may use in one compute tile.
    pub fn core_usable_bytes(&self) -> u64 {
        self.core_data_bytes - self.core_reserved_bytes
    }

    /// Peak int8 TOPS of the physical array (all columns): the rated figure, recomputed.
    pub fn peak_int8_tops(&self) -> f64 {
        (self.physical_columns * self.compute_rows) as f64
            * self.int8_ops_per_cycle as f64
            * self.clock_hz
            / 1e12
    }

    /// Peak bf16 ops/s of the tiles this model uses.
    pub fn peak_bf16_ops(&self) -> f64 {
        self.cores() as f64 * self.bf16_ops_per_cycle as f64 * self.clock_hz
    }

    /// The NPU's own ceiling on DRAM reads: every usable column's shim read channels.
    pub fn shim_read_bytes_per_s(&self) -> f64 {
        (self.columns * self.shim_mm2s_per_column * self.stream_bytes_per_cycle) as f64
            * self.clock_hz
    }

    /// Bytes per second one compute tile can receive over its input streams.
    pub fn core_stream_bytes_per_s(&self) -> f64 {
        (self.core_s2mm_channels * self.stream_bytes_per_cycle) as f64 * self.clock_hz
    }

    /// Total on-chip data memory of the used array (compute tiles + memory tiles).
    pub fn on_chip_bytes(&self) -> u64 {
        self.cores() as u64 * self.core_data_bytes + self.mem_tiles as u64 * self.mem_tile_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phoenix_constants_reproduce_the_rating() {
        let p = NpuSpec::phoenix();
        assert_eq!(p.cores(), 16);
        // 20 tiles x 512 ops x 1 GHz = 10.24 TOPS: the rated 10.
        assert!((p.peak_int8_tops() - 10.24).abs() < 1e-9);
        assert!((NpuSpec::hawk_point().peak_int8_tops() - 16.384).abs() < 1e-9);
        assert!((NpuSpec::strix().peak_int8_tops() - 49.152).abs() < 1e-9);
        assert_eq!(p.on_chip_bytes(), 16 * 65536 + 4 * 524288);
        assert_eq!(p.shim_read_bytes_per_s(), 32e9);
    }
}
