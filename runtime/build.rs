//! Compiles the GLSL compute shaders in `shaders/` to SPIR-V with `glslc` (Debian package
//! `glslc`) and writes `$OUT_DIR/shaders.rs`: `SHADERS`, a table of (name, SPIR-V bytes).
//!
//! `SHADERS` below is the one list of what is built: each entry is a pipeline the Vulkan backend
//! dispatches (shaders/README.md explains each). Names follow `<op>_<weight>_<act>` /
//! `<op>_<act>`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Weight formats with their shader define and name part (formats/src/quant QType names).
const WEIGHT_FORMATS: [(&str, &str); 10] = [
    ("f32", "W_F32"),
    ("f16", "W_F16"),
    ("bf16", "W_BF16"),
    ("i8sym", "W_I8_SYM"),
    ("i8asym", "W_I8_ASYM"),
    ("i4grouped", "W_I4_GROUPED"),
    ("i4perchannel", "W_I4_PER_CHANNEL"),
    ("i2structured", "W_I2_STRUCTURED"),
    ("i4grouped32", "W_I4_GROUPED32"),
    ("i4grouped16", "W_I4_GROUPED16"),
];

/// Ops with one variant per weight format: (op, source file, extra define).
const WEIGHT_OPS: [(&str, &str, &str); 5] = [
    ("matvec", "matvec.comp", ""),
    // q, k and v projections in one dispatch (matvec.comp, FUSE_QKV).
    ("matvec3", "matvec.comp", "FUSE_QKV"),
    // gelu_tanh(gate) * up in one dispatch (matvec.comp, FUSE_GELU).
    ("matvec_gelu", "matvec.comp", "FUSE_GELU"),
    ("matmul", "matmul.comp", ""),
    ("embed", "embed.comp", ""),
];

/// Decode ops on int8 activations (matvec.comp / matvec_sg.comp with Q8X; `{op}_{w}_q8`), for
/// the integer weight formats only: x is quantized once per input by quantize_x_f32 or by the
/// op that produced it.
const Q8_OPS: [(&str, &str, &str); 6] = [
    ("matvec", "matvec.comp", ""),
    ("matvec3", "matvec.comp", "FUSE_QKV"),
    ("matvec_gelu", "matvec.comp", "FUSE_GELU"),
    // One subgroup per row (the default on int8 activations; vulkan/mod.rs `use_sg`).
    ("matvecsg", "matvec_sg.comp", ""),
    ("matvecsg3", "matvec_sg.comp", "FUSE_QKV"),
    ("matvecsg_gelu", "matvec_sg.comp", "FUSE_GELU"),
];
const Q8_FORMATS: [(&str, &str); 7] = [
    ("i8sym", "W_I8_SYM"),
    ("i8asym", "W_I8_ASYM"),
    ("i4grouped", "W_I4_GROUPED"),
    ("i4perchannel", "W_I4_PER_CHANNEL"),
    ("i2structured", "W_I2_STRUCTURED"),
    ("i4grouped32", "W_I4_GROUPED32"),
    ("i4grouped16", "W_I4_GROUPED16"),
];

/// Tensor-core prefill (matmul_coop.comp, GL_NV_cooperative_matrix): one variant per weight
/// format and tile shape, `matmul_coop_{w}_f32_{tile}`. (tile, WM, WN, FM, FN, BK): WM x WN
/// subgroups of 32, each FM x FN fragments of 16 x 16 (rows x tokens), k in steps of BK. Only
/// dispatched where the device has VK_NV_cooperative_matrix (vulkan/device.rs `coop_prefill`);
/// vulkan/mod.rs `COOP_TILES` lists the same names.
///
/// The backend picks 128x64 up to 128 tokens and 128x128s8 above; the other two are for
/// measurements (`MIXQ_VK_COOP_TILE`). Measured on the H100 and dropped: BK = 64 variants of
/// each (slower everywhere: fewer workgroups fit, the same latency per step).
const COOP_TILES: [(&str, u32, u32, u32, u32, u32); 4] = [
    ("128x64", 4, 2, 2, 2, 32),
    ("128x128s8", 4, 2, 2, 4, 32),
    ("64x64", 2, 2, 2, 2, 32),
    ("128x128", 2, 2, 4, 4, 32),
];

/// Ops on f32 activations only.
const F32_OPS: [&str; 15] = [
    // f16 input of matmul_coop (per-token power-of-two scale) and its split-k sums.
    "quantize_x16_f32",
    "sum_splits_f32",
    "quantize_x_f32",
    "copy_f32",
    // measure_sync_costs: a dependent dispatch vs a device-wide barrier in one dispatch.
    "sync_probe_f32",
    "add_rms_norm_f32",
    "norm_rope_f32",
    "attention_combine_f32",
    "hadamard_f32",
    "rms_norm_f32",
    "rope_f32",
    "attention_f32",
    "gelu_mul_f32",
    "add_f32",
    "top_k_f32",
];

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../shaders");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", root.display());
    println!("cargo:rerun-if-changed=build.rs");

    let mut jobs: Vec<(String, String, Vec<String>)> = Vec::new();
    for (op, src, extra) in WEIGHT_OPS {
        for (w, define) in WEIGHT_FORMATS {
            let mut defines = vec![define.to_string()];
            if !extra.is_empty() {
                defines.push(extra.to_string());
            }
            jobs.push((format!("{op}_{w}_f32"), src.to_string(), defines));
        }
    }
    for (op, src, extra) in Q8_OPS {
        for (w, define) in Q8_FORMATS {
            let mut defines = vec![define.to_string(), "Q8X".to_string()];
            if !extra.is_empty() {
                defines.push(extra.to_string());
            }
            jobs.push((format!("{op}_{w}_q8"), src.to_string(), defines));
        }
    }
    for (tile, wm, wn, fm, fn_, bk) in COOP_TILES {
        for (w, define) in WEIGHT_FORMATS {
            let defines = vec![
                define.to_string(),
                format!("WM={wm}"),
                format!("WN={wn}"),
                format!("FM={fm}"),
                format!("FN={fn_}"),
                format!("BK={bk}"),
            ];
            jobs.push((
                format!("matmul_coop_{w}_f32_{tile}"),
                "matmul_coop.comp".to_string(),
                defines,
            ));
        }
    }
    for op in F32_OPS {
        jobs.push((op.to_string(), format!("{op}.comp"), vec![]));
    }

    check_glslc();
    let mut table = String::from(
        "/// (name, SPIR-V) of every compute shader, generated by runtime/build.rs.\n",
    );
    table.push_str("pub const SHADERS: &[(&str, &[u8])] = &[\n");
    for (name, src, defines) in &jobs {
        let spv = out.join(format!("{name}.spv"));
        compile(&root.join(src), defines, &spv);
        table.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            spv.display().to_string()
        ));
    }
    table.push_str("];\n");
    std::fs::write(out.join("shaders.rs"), table).unwrap();
}

fn check_glslc() {
    if Command::new("glslc").arg("--version").output().is_err() {
        panic!(
            "\n\nglslc not found: the Vulkan backend's shaders are compiled at build time.\n\
             Install it with `make setup` (or `sudo apt-get install glslc`).\n\n"
        );
    }
}

fn compile(src: &Path, defines: &[String], out: &Path) {
    let mut cmd = Command::new("glslc");
    cmd.args(["-fshader-stage=compute", "--target-env=vulkan1.2", "-O"]);
    for d in defines {
        cmd.arg(format!("-D{d}"));
    }
    cmd.arg(src).arg("-o").arg(out);
    let res = cmd.output().expect("running glslc");
    if !res.status.success() {
        panic!(
            "glslc failed on {}:\n{:?}\n{}",
            src.display(),
            cmd,
            String::from_utf8_lossy(&res.stderr)
        );
    }
}
