//! File-format tests: write/read round trip, golden file, and every validation rule against
//! truncated, corrupted and hostile files. Deterministic data only.

use super::*;
use crate::config::Gemma3Config;
use crate::profile::{plan, DeviceProfile, TensorSpec};
use crate::quant::{quantize_row, QType, Transform};
use std::path::Path;

const CONFIG_JSON: &str = r#"{"model_type": "gemma3_text", "hidden_size": 128, "intermediate_size": 256,
 "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
 "vocab_size": 256, "max_position_embeddings": 512, "torch_dtype": "bfloat16"}"#;

fn meta() -> FileMeta {
    FileMeta {
        config: Gemma3Config::from_json_str(CONFIG_JSON, Path::new("test")).unwrap(),
        config_json: CONFIG_JSON.into(),
        recipe: Recipe {
            name: "optimal".into(),
            options: serde_json::json!({"gptq": false}),
        },
    }
}

/// A one-layer Gemma-3-shaped tensor list under the optimal recipe.
fn tiny_specs() -> Vec<TensorSpec> {
    let mut v = vec![
        TensorSpec::new("model.embed_tokens.weight", QType::I8Asym, &[256, 128]),
        TensorSpec::new(
            "model.layers.0.self_attn.q_proj.weight",
            QType::I4Grouped,
            &[128, 128],
        ),
        TensorSpec::new(
            "model.layers.0.self_attn.k_proj.weight",
            QType::I4Grouped,
            &[64, 128],
        ),
        TensorSpec::new(
            "model.layers.0.self_attn.v_proj.weight",
            QType::I4Grouped,
            &[64, 128],
        ),
        TensorSpec::new(
            "model.layers.0.self_attn.o_proj.weight",
            QType::I4PerChannel,
            &[128, 128],
        ),
        TensorSpec::new(
            "model.layers.0.self_attn.q_norm.weight",
            QType::I8Sym,
            &[64],
        ),
        TensorSpec::new(
            "model.layers.0.self_attn.k_norm.weight",
            QType::I8Sym,
            &[64],
        ),
        TensorSpec::new(
            "model.layers.0.mlp.gate_proj.weight",
            QType::I2Structured,
            &[256, 128],
        ),
        TensorSpec::new(
            "model.layers.0.mlp.up_proj.weight",
            QType::I2Structured,
            &[256, 128],
        ),
        TensorSpec::new(
            "model.layers.0.mlp.down_proj.weight",
            QType::I4Grouped,
            &[128, 256],
        ),
        TensorSpec::new(
            "model.layers.0.input_layernorm.weight",
            QType::I8Sym,
            &[128],
        ),
        TensorSpec::new("model.norm.weight", QType::F32, &[128]),
    ];
    v[7].transform = Transform::BlockHadamard {
        block: 128,
        seed: 7,
    };
    v
}

/// Deterministic stored bytes of a tensor.
fn tensor_bytes(spec: &TensorSpec) -> Vec<u8> {
    let (rows, cols) = spec.rows_cols().unwrap();
    let rb = spec.qtype.row_bytes(cols).unwrap();
    let mut out = vec![0u8; rows * rb];
    let mut state = spec.name.len() as u64;
    for r in 0..rows {
        let src: Vec<f32> = (0..cols)
            .map(|_| {
                let z = crate::quant::hadamard::splitmix64(&mut state);
                ((z >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
            })
            .collect();
        quantize_row(spec.qtype, &src, None, &mut out[r * rb..(r + 1) * rb]).unwrap();
    }
    out
}

/// Fixed byte pattern of a tensor's length: the golden file pins the container, not the
/// quantizer's fitting.
fn pattern_bytes(spec: &TensorSpec) -> Vec<u8> {
    let n = spec.bytes().unwrap() as usize;
    (0..n).map(|i| (i * 7 + spec.name.len()) as u8).collect()
}

/// Writes the tiny model with `profile`, tensors in reverse order (exercises the re-read).
fn write_tiny(dir: &Path, profile: &DeviceProfile) -> std::path::PathBuf {
    write_tiny_with(dir, profile, tensor_bytes)
}

fn write_tiny_with(
    dir: &Path,
    profile: &DeviceProfile,
    bytes: fn(&TensorSpec) -> Vec<u8>,
) -> std::path::PathBuf {
    let specs = tiny_specs();
    let p = plan(&specs, profile).unwrap();
    let out = dir.join("tiny.mixq");
    let mut w = MixqWriter::create(&out, p, meta()).unwrap();
    for s in specs.iter().rev() {
        w.write_tensor(&s.name, &bytes(s)).unwrap();
    }
    w.add_blob(BLOB_TOKENIZER, br#"{"model": "tiny"}"#).unwrap();
    w.add_blob(BLOB_REPORT, br#"{"retention": 0.97}"#).unwrap();
    w.finish().unwrap()
}

fn tiny_file_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::read(write_tiny(dir.path(), &DeviceProfile::phoenix())).unwrap()
}

/// Opens an in-memory image through a temporary file.
fn open_bytes(b: &[u8]) -> Result<MixqFile> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.mixq");
    std::fs::write(&p, b).unwrap();
    MixqFile::open(&p)
}

/// Rebuilds a file with its index edited by `f` (header fields updated to stay consistent).
fn with_index(b: &[u8], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let h = Header::parse(b).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&b[h.index_offset as usize..]).unwrap();
    f(&mut v);
    let json = serde_json::to_vec(&v).unwrap();
    let mut out = b[..h.index_offset as usize].to_vec();
    out.extend_from_slice(&json);
    let h2 = Header {
        index_len: json.len() as u64,
        index_crc32: crc32fast::hash(&json),
        file_len: out.len() as u64,
        ..h
    };
    out[..64].copy_from_slice(&h2.to_bytes());
    out
}

fn with_header(b: &[u8], f: impl FnOnce(&mut Header)) -> Vec<u8> {
    let mut h = Header::parse(b).unwrap();
    f(&mut h);
    let mut out = b.to_vec();
    out[..64].copy_from_slice(&h.to_bytes());
    out
}

#[test]
fn write_then_read_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tiny(dir.path(), &DeviceProfile::phoenix());
    assert!(!dir.path().join("tiny.mixq.tmp").exists());
    let f = MixqFile::open(&path).unwrap();
    assert_eq!(f.config().hidden_size, 128);
    assert_eq!(f.index().recipe.name, "optimal");
    assert_eq!(f.index().tensor_count, 12);
    for spec in tiny_specs() {
        let t = f.tensor(&spec.name).unwrap();
        assert_eq!(t.qtype, spec.qtype);
        assert_eq!(t.bytes, &tensor_bytes(&spec)[..], "{}", spec.name);
        assert_eq!(t.transform, spec.transform);
        assert_eq!(t.intended_section, None);
        // every tensor is 256-aligned in the file (sections are 64 KiB-aligned)
        assert_eq!(
            (t.bytes.as_ptr() as usize - f.bytes().as_ptr() as usize) % 256,
            0
        );
    }
    let q = f.tensor("model.layers.0.self_attn.q_proj.weight").unwrap();
    assert_eq!(q.section, "npu.bank0");
    assert_eq!((q.rows, q.cols), (128, 128));
    assert_eq!(q.row(1).len(), QType::I4Grouped.row_bytes(128).unwrap());
    assert_eq!(
        f.tensor("model.layers.0.mlp.up_proj.weight")
            .unwrap()
            .section,
        "vulkan.heap0"
    );
    assert_eq!(
        f.tensor("model.embed_tokens.weight").unwrap().section,
        "host"
    );
    assert_eq!(f.blob(BLOB_TOKENIZER).unwrap(), br#"{"model": "tiny"}"#);
    assert!(matches!(
        f.blob("npu.bank0"),
        Err(MixqError::NoSuchBlob { .. })
    ));
    assert!(matches!(
        f.blob(BLOB_CALIBRATION),
        Err(MixqError::NoSuchBlob { .. })
    ));
    assert!(matches!(
        f.tensor("nope"),
        Err(MixqError::NoSuchTensor { .. })
    ));
    let names: Vec<_> = f.index().sections.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "npu.bank0",
            "vulkan.heap0",
            "host",
            "meta.tokenizer",
            "meta.report"
        ]
    );
    let r = f.verify().unwrap();
    assert_eq!((r.sections, r.tensors), (5, 12));
    assert_eq!(f.tensors().count(), 12);
}

/// The golden file: the tiny model under the `cpu` profile, tensors holding fixed byte
/// patterns. Its header and index are
/// committed as text (tests/golden/tiny.header.hex, tiny.index.json) and the whole file as a
/// SHA-256, so any change of layout or encoding shows up here. (The embedded config follows
/// `Gemma3Config`'s serde form: a field added there changes this file too, as it should.)
#[test]
fn golden_file() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let b = std::fs::read(write_tiny_with(
        dir.path(),
        &DeviceProfile::cpu(),
        pattern_bytes,
    ))
    .unwrap();
    let h = Header::parse(&b).unwrap();
    let header_hex: String = b[..64].iter().map(|x| format!("{x:02x}")).collect();
    let index = std::str::from_utf8(&b[h.index_offset as usize..]).unwrap();
    let sha: String = sha2::Sha256::digest(&b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let want_header = std::fs::read_to_string(golden.join("tiny.header.hex")).unwrap_or_default();
    let want_index = std::fs::read_to_string(golden.join("tiny.index.json")).unwrap_or_default();
    let want_sha = std::fs::read_to_string(golden.join("tiny.sha256")).unwrap_or_default();
    if header_hex != want_header.trim() || index != want_index.trim_end() || sha != want_sha.trim()
    {
        let got = std::env::temp_dir().join("mixq-golden-actual");
        std::fs::create_dir_all(&got).unwrap();
        std::fs::write(got.join("tiny.header.hex"), format!("{header_hex}\n")).unwrap();
        std::fs::write(got.join("tiny.index.json"), format!("{index}\n")).unwrap();
        std::fs::write(got.join("tiny.sha256"), format!("{sha}\n")).unwrap();
        panic!("golden file differs; actual written to {}", got.display());
    }
    assert_eq!(b.len() as u64, h.file_len);
}

#[test]
fn truncated_files_do_not_open() {
    let b = tiny_file_bytes();
    let h = Header::parse(&b).unwrap();
    for cut in [
        0usize,
        10,
        63,
        64,
        4096,
        65536,
        70000,
        h.index_offset as usize,
        b.len() - 1,
    ] {
        let err = open_bytes(&b[..cut]).unwrap_err();
        assert!(
            matches!(
                err,
                MixqError::TooSmall { .. } | MixqError::FileLength { .. }
            ),
            "cut {cut}: {err}"
        );
    }
    // appended bytes are caught too
    let mut longer = b.clone();
    longer.push(0);
    assert!(matches!(
        open_bytes(&longer),
        Err(MixqError::FileLength { .. })
    ));
    // a crash before the header is written leaves zeros where the magic goes
    let mut crashed = b.clone();
    crashed[..64].fill(0);
    assert!(matches!(
        open_bytes(&crashed),
        Err(MixqError::BadMagic { .. })
    ));
}

#[test]
fn corruption_is_caught() {
    let b = tiny_file_bytes();
    let f = open_bytes(&b).unwrap();
    let s = f.index().sections[1].clone();
    // a flipped byte in a section: opens (fast path), verify names the section
    let mut c = b.clone();
    c[(s.offset + 100) as usize] ^= 0x10;
    let f = open_bytes(&c).unwrap();
    match f.verify() {
        Err(MixqError::SectionChecksum { name, .. }) => assert_eq!(name, s.name),
        other => panic!("{other:?}"),
    }
    // a flipped byte in padding
    let mut c = b.clone();
    c[(s.offset + s.length + 1) as usize] = 1;
    assert!(matches!(
        open_bytes(&c).unwrap().verify(),
        Err(MixqError::PaddingNotZero { .. })
    ));
    // a flipped byte in the index
    let h = Header::parse(&b).unwrap();
    let mut c = b.clone();
    c[h.index_offset as usize + 20] ^= 0x01;
    assert!(matches!(
        open_bytes(&c),
        Err(MixqError::IndexChecksum { .. })
    ));
}

#[test]
fn bad_headers() {
    let b = tiny_file_bytes();
    let mut c = b.clone();
    c[0] = b'G';
    assert!(matches!(open_bytes(&c), Err(MixqError::BadMagic { .. })));
    let c = with_header(&b, |h| h.version = 2);
    assert!(matches!(
        open_bytes(&c),
        Err(MixqError::UnsupportedVersion {
            found: 2,
            supported: 1
        })
    ));
    let c = with_header(&b, |h| h.flags = 1);
    assert!(matches!(
        open_bytes(&c),
        Err(MixqError::UnknownFlags { .. })
    ));
    let c = with_header(&b, |h| h.section_align = 4096);
    assert!(matches!(
        open_bytes(&c),
        Err(MixqError::BadAlignment { .. })
    ));
    let mut c = b.clone();
    c[60] = 1;
    assert!(matches!(
        open_bytes(&c),
        Err(MixqError::ReservedNotZero { offset: 60 })
    ));
    let c = with_header(&b, |h| h.index_len = u64::MAX);
    assert!(matches!(
        open_bytes(&c),
        Err(MixqError::IndexTooLarge { .. })
    ));
    let c = with_header(&b, |h| h.index_offset = u64::MAX - 3);
    assert!(matches!(open_bytes(&c), Err(MixqError::IndexBounds { .. })));
    let c = with_header(&b, |h| h.index_offset -= 1);
    assert!(matches!(open_bytes(&c), Err(MixqError::IndexBounds { .. })));
    let c = with_header(&b, |h| h.file_len = u64::MAX);
    assert!(matches!(open_bytes(&c), Err(MixqError::FileLength { .. })));
}

#[test]
fn hostile_indexes() {
    let b = tiny_file_bytes();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, fn(&MixqError) -> bool)> = vec![
        (
            "not json",
            Box::new(|v| *v = serde_json::json!([1, 2])),
            |e| matches!(e, MixqError::IndexJson { .. }),
        ),
        ("format", Box::new(|v| v["format"] = "gguf".into()), |e| {
            matches!(e, MixqError::IndexFormat { .. })
        }),
        ("version", Box::new(|v| v["version"] = 7.into()), |e| {
            matches!(e, MixqError::IndexVersion { .. })
        }),
        (
            "tensor_count",
            Box::new(|v| v["tensor_count"] = 11.into()),
            |e| matches!(e, MixqError::TensorCount { .. }),
        ),
        (
            "shape overflow",
            Box::new(|v| v["tensors"][1]["shape"] = serde_json::json!([u64::MAX, 1u64 << 40])),
            |e| matches!(e, MixqError::BadShape { .. }),
        ),
        (
            "3-D shape",
            Box::new(|v| v["tensors"][1]["shape"] = serde_json::json!([2, 2, 64])),
            |e| matches!(e, MixqError::BadShape { .. }),
        ),
        (
            "zero dim",
            Box::new(|v| v["tensors"][1]["shape"] = serde_json::json!([0, 128])),
            |e| matches!(e, MixqError::BadShape { .. }),
        ),
        (
            "cols not multiple",
            Box::new(|v| v["tensors"][1]["shape"] = serde_json::json!([128, 96])),
            |e| matches!(e, MixqError::BadShape { .. }),
        ),
        (
            "length",
            Box::new(|v| v["tensors"][1]["length"] = 12.into()),
            |e| matches!(e, MixqError::TensorLength { .. }),
        ),
        (
            "qtype",
            Box::new(|v| v["tensors"][1]["qtype"] = 99.into()),
            |e| matches!(e, MixqError::UnknownQType { qtype: 99, .. }),
        ),
        (
            "offset beyond EOF",
            Box::new(|v| v["tensors"][1]["offset"] = (1u64 << 62).into()),
            |e| matches!(e, MixqError::TensorBounds { .. }),
        ),
        (
            "offset overflow",
            Box::new(|v| v["tensors"][1]["offset"] = (u64::MAX - 255).into()),
            |e| matches!(e, MixqError::TensorBounds { .. }),
        ),
        (
            "misaligned tensor",
            Box::new(|v| v["tensors"][2]["offset"] = 8.into()),
            |e| matches!(e, MixqError::TensorMisaligned { .. }),
        ),
        (
            "overlapping tensors",
            Box::new(|v| {
                let o = v["tensors"][1]["offset"].clone();
                v["tensors"][2]["offset"] = o;
            }),
            |e| matches!(e, MixqError::TensorOverlap { .. }),
        ),
        (
            "duplicate tensor",
            Box::new(|v| v["tensors"][2]["name"] = v["tensors"][1]["name"].clone()),
            |e| matches!(e, MixqError::DuplicateTensor { .. }),
        ),
        (
            "unknown section",
            Box::new(|v| v["tensors"][1]["section"] = "npu.bank9".into()),
            |e| matches!(e, MixqError::TensorSection { .. }),
        ),
        (
            "tensor in blob",
            Box::new(|v| v["tensors"][1]["section"] = "meta.tokenizer".into()),
            |e| matches!(e, MixqError::TensorSection { .. }),
        ),
        (
            "bad transform",
            Box::new(|v| {
                v["tensors"][7]["transform"] =
                    serde_json::json!({"kind": "block_hadamard", "block": 96, "seed": 1})
            }),
            |e| matches!(e, MixqError::BadTransform { .. }),
        ),
        (
            "transform on 1-D",
            Box::new(|v| {
                v["tensors"][5]["transform"] =
                    serde_json::json!({"kind": "block_hadamard", "block": 64, "seed": 1})
            }),
            |e| matches!(e, MixqError::BadTransform { .. }),
        ),
        (
            "section beyond EOF",
            Box::new(|v| v["sections"][4]["length"] = (1u64 << 40).into()),
            |e| matches!(e, MixqError::SectionBounds { .. }),
        ),
        (
            "section length overflow",
            Box::new(|v| v["sections"][4]["length"] = u64::MAX.into()),
            |e| matches!(e, MixqError::SectionBounds { .. }),
        ),
        (
            "section overlap",
            Box::new(|v| v["sections"][1]["offset"] = 65536.into()),
            |e| matches!(e, MixqError::SectionOverlap { .. }),
        ),
        (
            "section gap",
            Box::new(|v| v["sections"][1]["offset"] = (65536u64 * 9).into()),
            |e| matches!(e, MixqError::SectionGap { .. }),
        ),
        (
            "section misaligned",
            Box::new(|v| v["sections"][1]["offset"] = 65537.into()),
            |e| matches!(e, MixqError::SectionMisaligned { .. }),
        ),
        (
            "empty section",
            Box::new(|v| v["sections"][4]["length"] = 0.into()),
            |e| matches!(e, MixqError::EmptySection { .. }),
        ),
        (
            "duplicate section",
            Box::new(|v| v["sections"][4]["name"] = "meta.tokenizer".into()),
            |e| matches!(e, MixqError::DuplicateSection { .. }),
        ),
        (
            "over budget",
            Box::new(|v| {
                v["sections"][0]["budget"] = 10.into();
                v["profile"]["regions"][0]["budget"] = 10.into();
            }),
            |e| matches!(e, MixqError::OverBudget { .. }),
        ),
        (
            "section not in profile",
            Box::new(|v| v["sections"][0]["name"] = "npu.bank7".into()),
            |e| matches!(e, MixqError::Index { .. }),
        ),
        (
            "index after gap",
            Box::new(|v| {
                v["sections"]
                    .as_array_mut()
                    .unwrap()
                    .pop()
                    .map(|_| ())
                    .unwrap()
            }),
            |e| matches!(e, MixqError::IndexPlacement { .. }),
        ),
    ];
    for (what, edit, ok) in cases {
        let c = with_index(&b, |v| edit(v));
        match open_bytes(&c) {
            Err(e) => assert!(ok(&e), "{what}: unexpected error {e}"),
            Ok(_) => panic!("{what}: opened"),
        }
    }
    // an untouched rebuild still opens
    open_bytes(&with_index(&b, |_| {}))
        .unwrap()
        .verify()
        .unwrap();
}

#[test]
fn writer_misuse() {
    let dir = tempfile::tempdir().unwrap();
    let specs = tiny_specs();
    let p = plan(&specs, &DeviceProfile::gpu()).unwrap();
    let out = dir.path().join("w.mixq");
    let mut w = MixqWriter::create(&out, p.clone(), meta()).unwrap();
    assert!(w.write_tensor("nope", &[0]).is_err());
    assert!(w.write_tensor(&specs[0].name, &[0; 3]).is_err());
    w.write_tensor(&specs[0].name, &tensor_bytes(&specs[0]))
        .unwrap();
    assert!(w
        .write_tensor(&specs[0].name, &tensor_bytes(&specs[0]))
        .is_err());
    assert!(w.add_blob("tokenizer", b"x").is_err());
    assert!(w.add_blob("meta.empty", b"").is_err());
    // finishing with tensors missing fails and leaves nothing behind
    assert!(matches!(w.finish(), Err(MixqError::Writer { .. })));
    assert!(!out.exists());
    assert!(!dir.path().join("w.mixq.tmp").exists());
    // an abandoned writer (a crash, in effect) leaves no file at the output path
    let w = MixqWriter::create(&out, p, meta()).unwrap();
    assert!(dir.path().join("w.mixq.tmp").exists());
    drop(w);
    assert!(!out.exists() && !dir.path().join("w.mixq.tmp").exists());
}

/// A tensor rewritten after its section's checksum ran ahead still verifies, and reads back
/// as the new bytes; rewriting needs a first write of the planned length.
#[test]
fn rewritten_tensors_verify() {
    let dir = tempfile::tempdir().unwrap();
    let specs = tiny_specs();
    let p = plan(&specs, &DeviceProfile::gpu()).unwrap();
    let out = dir.path().join("r.mixq");
    let mut w = MixqWriter::create(&out, p, meta()).unwrap();
    assert!(w
        .rewrite_tensor(&specs[0].name, &tensor_bytes(&specs[0]))
        .is_err());
    for s in &specs {
        w.write_tensor(&s.name, &tensor_bytes(s)).unwrap();
    }
    let new = pattern_bytes(&specs[0]);
    assert!(w.rewrite_tensor(&specs[0].name, &new[1..]).is_err());
    w.rewrite_tensor(&specs[0].name, &new).unwrap();
    w.add_blob(BLOB_TOKENIZER, br#"{"model": "tiny"}"#).unwrap();
    let path = w.finish().unwrap();
    let f = MixqFile::open(&path).unwrap();
    f.verify().unwrap();
    assert_eq!(f.tensor(&specs[0].name).unwrap().bytes, &new[..]);
}

#[test]
fn spills_are_recorded_in_the_index() {
    let specs = tiny_specs();
    let mut prof = DeviceProfile::phoenix();
    for r in prof
        .regions
        .iter_mut()
        .filter(|r| r.name.starts_with("npu."))
    {
        r.budget = Some(1000); // no attention block fits
    }
    let p = plan(&specs, &prof).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.mixq");
    let mut w = MixqWriter::create(&out, p, meta()).unwrap();
    for s in &specs {
        w.write_tensor(&s.name, &tensor_bytes(s)).unwrap();
    }
    let f = MixqFile::open(w.finish().unwrap()).unwrap();
    let q = f.tensor("model.layers.0.self_attn.q_proj.weight").unwrap();
    assert_eq!(
        (q.section, q.intended_section),
        ("vulkan.heap0", Some("npu.bank3"))
    );
    assert_eq!(f.index().profile.regions.len(), 6);
    f.verify().unwrap();
}
