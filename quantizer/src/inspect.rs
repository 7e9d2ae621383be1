//! `inspect`: what a `.mixq` file holds (header, config, recipe, profile, sections with budget
//! and fill, spills, every tensor, totals by class). `verify`: every checksum.
//!
//! Both only state what the file's index and bytes show.

use crate::report::placement::{fmt_bytes, placement_notes, PREFIX};
use crate::report::{bpw, tensor_class, ClassSize, QualityReport, SizeSummary, RETENTION_METRIC};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mixq_format::mixq::{MixqFile, Recipe, HEADER_LEN};
use mixq_format::profile::Device;
use mixq_format::quant::Transform;
use serde::Serialize;
use std::fmt::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct InspectArgs {
    /// The .mixq file.
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The .mixq file.
    pub file: PathBuf,
}

/// Everything `inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub file: String,
    pub file_bytes: u64,
    pub version: u32,
    pub minor_version: u32,
    /// The index's resolved Gemma 3 config.
    pub config: serde_json::Value,
    pub recipe: Recipe,
    pub profile: String,
    /// Every region of the profile in profile order, then the blobs; empty regions have no
    /// section in the file (`offset` = None).
    pub sections: Vec<SectionRow>,
    pub spills: Vec<SpillRow>,
    /// Placement in words (fill of each section, spills).
    pub placement: Vec<String>,
    pub tensors: Vec<TensorRow>,
    pub classes: Vec<ClassSize>,
    pub params: u64,
    pub tensor_bytes: u64,
    pub bits_per_weight: f64,
    /// One line about the embedded quality report, if any.
    pub report: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SectionRow {
    pub name: String,
    pub device: Device,
    pub offset: Option<u64>,
    pub length: u64,
    pub budget: Option<u64>,
    /// length / budget x 100.
    pub fill_pct: Option<f64>,
    pub tensors: usize,
    pub crc32: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpillRow {
    pub tensor: String,
    pub intended_section: String,
    pub section: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TensorRow {
    pub name: String,
    pub class: String,
    pub qtype: String,
    pub shape: Vec<u64>,
    pub params: u64,
    pub bytes: u64,
    pub bits_per_weight: f64,
    pub section: String,
    pub offset: u64,
    pub transform: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intended_section: Option<String>,
}

/// Gathers what `inspect` shows from an open (validated) file.
pub fn inspect(file: &MixqFile) -> Result<Inspection> {
    let ix = file.index();
    let file_bytes = file.bytes().len() as u64;
    let mut sections = Vec::new();
    for region in &ix.profile.regions {
        let s = ix.sections.iter().find(|s| s.name == region.name);
        let length = s.map_or(0, |s| s.length);
        sections.push(SectionRow {
            name: region.name.clone(),
            device: region.device,
            offset: s.map(|s| s.offset),
            length,
            budget: region.budget,
            fill_pct: region.budget.map(|b| length as f64 * 100.0 / b as f64),
            tensors: ix
                .tensors
                .iter()
                .filter(|t| t.section == region.name)
                .count(),
            crc32: s.map(|s| s.crc32),
        });
    }
    for s in ix.sections.iter().filter(|s| s.device == Device::Meta) {
        sections.push(SectionRow {
            name: s.name.clone(),
            device: s.device,
            offset: Some(s.offset),
            length: s.length,
            budget: None,
            fill_pct: None,
            tensors: 0,
            crc32: Some(s.crc32),
        });
    }
    let tensors: Vec<TensorRow> = (ix.tensors.iter())
        .map(|t| {
            let params: u64 = t.shape.iter().product();
            TensorRow {
                name: t.name.clone(),
                class: tensor_class(&t.name).into(),
                qtype: t
                    .qtype()
                    .map_or(format!("#{}", t.qtype), |q| q.name().into()),
                shape: t.shape.clone(),
                params,
                bytes: t.length,
                bits_per_weight: bpw(t.length, params),
                section: t.section.clone(),
                offset: t.offset,
                transform: match t.transform {
                    Transform::None => "none".into(),
                    Transform::BlockHadamard { block, seed } => {
                        format!("hadamard(block {block}, seed {seed})")
                    }
                },
                intended_section: t.intended_section.clone(),
            }
        })
        .collect();
    let spills = (ix.tensors.iter())
        .filter_map(|t| {
            Some(SpillRow {
                tensor: t.name.clone(),
                intended_section: t.intended_section.clone()?,
                section: t.section.clone(),
                bytes: t.length,
            })
        })
        .collect();
    let size = SizeSummary::from_index(ix, file_bytes);
    let report = QualityReport::from_file(file)?.map(|r| match &r.end_to_end {
        Some(e) => format!(
            "{RETENTION_METRIC} {:.2} % (PPL_ref {:.3}, PPL_quant {:.3}) on {} tokens of `{}`; \
             `mixq-quantize report` shows all of it",
            e.retention_ppl_pct, e.ppl_ref, e.ppl_quant, e.tokens, e.eval_source
        ),
        None => "present, without end-to-end figures; `mixq-quantize report` shows it".into(),
    });
    Ok(Inspection {
        file: file.path().display().to_string(),
        file_bytes,
        version: ix.version,
        minor_version: ix.minor_version,
        config: ix.config.clone(),
        recipe: ix.recipe.clone(),
        profile: ix.profile.name.clone(),
        sections,
        spills,
        placement: placement_notes(ix),
        tensor_bytes: size.classes.iter().map(|c| c.bytes).sum(),
        params: size.params,
        bits_per_weight: size.bits_per_weight,
        classes: size.classes,
        tensors,
        report,
    })
}

/// The text `inspect` prints.
pub fn render_inspection(i: &Inspection) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: mixq format {}.{}, {} ({} bytes)",
        i.file,
        i.version,
        i.minor_version,
        fmt_bytes(i.file_bytes),
        i.file_bytes
    );
    let c = &i.config;
    let g = |k: &str| c.get(k).map_or("?".to_string(), |v| v.to_string());
    let (mut sliding, mut full) = (0, 0);
    if let Some(kinds) = c.get("layer_types").and_then(|v| v.as_array()) {
        for k in kinds {
            match k.as_str() {
                Some("Sliding") => sliding += 1,
                _ => full += 1,
            }
        }
    }
    let _ = writeln!(
        s,
        "model: Gemma 3, {} layers ({sliding} sliding-window of {}, {full} global), hidden {}, \
         FFN {}, {} heads / {} KV heads x {}, vocab {}, tied embedding {}",
        g("num_hidden_layers"),
        g("sliding_window"),
        g("hidden_size"),
        g("intermediate_size"),
        g("num_attention_heads"),
        g("num_key_value_heads"),
        g("head_dim"),
        g("vocab_size"),
        g("tie_word_embeddings")
    );
    let _ = writeln!(
        s,
        "recipe: {}{}",
        i.recipe.name,
        if i.recipe.options.is_null() {
            String::new()
        } else {
            format!(" {}", i.recipe.options)
        }
    );
    let _ = writeln!(s, "profile: {}", i.profile);
    if let Some(r) = &i.report {
        let _ = writeln!(s, "quality report: {r}");
    }

    let _ = writeln!(s, "\nsections:");
    let mut rows = vec![row(&[
        "name", "device", "offset", "size", "bytes", "budget", "fill", "tensors", "crc32",
    ])];
    for r in &i.sections {
        rows.push(vec![
            r.name.clone(),
            format!("{:?}", r.device).to_lowercase(),
            r.offset.map_or("(empty)".into(), |o| o.to_string()),
            fmt_bytes(r.length),
            r.length.to_string(),
            r.budget.map_or("none".into(), fmt_bytes),
            r.fill_pct.map_or("–".into(), fmt_pct),
            r.tensors.to_string(),
            r.crc32.map_or("–".into(), |c| format!("{c:08x}")),
        ]);
    }
    table(
        &mut s,
        &rows,
        &[false, false, true, true, true, true, true, true, false],
    );

    let _ = writeln!(s, "\nplacement:");
    for n in &i.placement {
        let _ = writeln!(
            s,
            "  {}",
            n.strip_prefix(PREFIX)
                .map_or(n.as_str(), |t| t.trim_start_matches(':').trim_start())
        );
    }
    if !i.spills.is_empty() {
        let _ = writeln!(s, "\nspills ({}):", i.spills.len());
        let mut rows = vec![row(&["tensor", "intended", "placed in", "bytes"])];
        for p in &i.spills {
            rows.push(vec![
                p.tensor.clone(),
                p.intended_section.clone(),
                p.section.clone(),
                fmt_bytes(p.bytes),
            ]);
        }
        table(&mut s, &rows, &[false, false, false, true]);
    }

    let _ = writeln!(s, "\ntensors ({}):", i.tensors.len());
    let mut rows = vec![row(&[
        "name",
        "type",
        "shape",
        "bytes",
        "bpw",
        "section",
        "offset",
        "transform",
    ])];
    for t in &i.tensors {
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        let section = match &t.intended_section {
            Some(home) => format!("{} (spilled from {home})", t.section),
            None => t.section.clone(),
        };
        rows.push(vec![
            t.name.clone(),
            t.qtype.clone(),
            format!("[{}]", shape.join(", ")),
            t.bytes.to_string(),
            format!("{:.3}", t.bits_per_weight),
            section,
            t.offset.to_string(),
            t.transform.clone(),
        ]);
    }
    table(
        &mut s,
        &rows,
        &[false, false, false, true, true, false, true, false],
    );

    let _ = writeln!(s, "\ntotals by class:");
    let mut rows = vec![row(&["class", "params", "bytes", "size", "bpw"])];
    for c in &i.classes {
        rows.push(vec![
            c.class.clone(),
            c.params.to_string(),
            c.bytes.to_string(),
            fmt_bytes(c.bytes),
            format!("{:.3}", c.bits_per_weight),
        ]);
    }
    rows.push(vec![
        "total".into(),
        i.params.to_string(),
        i.tensor_bytes.to_string(),
        fmt_bytes(i.tensor_bytes),
        format!("{:.3}", i.bits_per_weight),
    ]);
    table(&mut s, &rows, &[false, true, true, true, true]);
    s
}

/// A fill percentage with enough digits to show a small fill as non-zero.
fn fmt_pct(f: f64) -> String {
    if f > 0.0 && f < 1.0 {
        format!("{f:.3} %")
    } else {
        format!("{f:.1} %")
    }
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Aligned columns, two spaces apart, indented by two; `right[i]` right-aligns column i.
fn table(s: &mut String, rows: &[Vec<String>], right: &[bool]) {
    let n = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |x| x.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::from(" ");
        for (c, cell) in r.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            line.push(' ');
            if right.get(c).copied().unwrap_or(false) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if c + 1 < r.len() {
                    line.push_str(&" ".repeat(pad));
                }
            }
            line.push(' ');
        }
        let _ = writeln!(s, "{}", line.trim_end());
    }
}

pub fn run_inspect(a: InspectArgs) -> Result<()> {
    let file = MixqFile::open(&a.file)?;
    let i = inspect(&file)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&i)?);
    } else {
        print!("{}", render_inspection(&i));
    }
    Ok(())
}

/// The outcome of [`verify`] for one section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionCheck {
    pub name: String,
    pub length: u64,
    pub expected: u32,
    pub actual: u32,
}

/// What [`verify`] found: every section's CRC-32 and where padding is not zero.
#[derive(Debug, Clone)]
pub struct Verification {
    pub sections: Vec<SectionCheck>,
    /// File offsets of the first non-zero byte in each non-zero padding gap.
    pub bad_padding: Vec<u64>,
    pub index_len: u64,
    pub tensors: usize,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.bad_padding.is_empty() && self.sections.iter().all(|c| c.expected == c.actual)
    }
}

/// Checks every section's CRC-32 and that every padding byte is zero (SPEC.md §7, §8), after
/// the checks of opening (header, index CRC, every bound). Unlike [`MixqFile::verify`] it does
/// not stop at the first bad section: it lists them all.
pub fn verify(file: &MixqFile, progress: bool) -> Verification {
    let ix = file.index();
    let bytes = file.bytes();
    let total: u64 = ix.sections.iter().map(|s| s.length).sum();
    let bar = if progress {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template(
                "verifying {bar:30} {bytes}/{total_bytes} [{elapsed_precise} < {eta_precise}]",
            )
            .expect("static template"),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut sections = Vec::new();
    let mut bad_padding = Vec::new();
    let mut pad_start = HEADER_LEN as u64;
    let check_pad = |from: u64, to: u64, bad: &mut Vec<u64>| {
        if let Some(i) = bytes[from as usize..to as usize]
            .iter()
            .position(|&b| b != 0)
        {
            bad.push(from + i as u64);
        }
    };
    for s in &ix.sections {
        check_pad(pad_start, s.offset, &mut bad_padding);
        let content = &bytes[s.offset as usize..(s.offset + s.length) as usize];
        let mut h = crc32fast::Hasher::new();
        for chunk in content.chunks(16 << 20) {
            h.update(chunk);
            bar.inc(chunk.len() as u64);
        }
        sections.push(SectionCheck {
            name: s.name.clone(),
            length: s.length,
            expected: s.crc32,
            actual: h.finalize(),
        });
        pad_start = s.offset + s.length;
    }
    check_pad(pad_start, file.header().index_offset, &mut bad_padding);
    bar.finish_and_clear();
    Verification {
        sections,
        bad_padding,
        index_len: file.header().index_len,
        tensors: ix.tensors.len(),
    }
}

pub fn run_verify(a: VerifyArgs) -> Result<()> {
    let file = MixqFile::open(&a.file).with_context(|| {
        format!(
            "verify FAILED: {} did not pass the checks of opening",
            a.file.display()
        )
    })?;
    println!(
        "{}: header (magic, version {}, lengths) ok; index {} bytes, CRC-32 {:08x} ok; {} sections and {} tensors within bounds, aligned, not overlapping",
        a.file.display(),
        file.header().version,
        file.header().index_len,
        file.header().index_crc32,
        file.index().sections.len(),
        file.index().tensors.len()
    );
    let v = verify(&file, true);
    for c in &v.sections {
        let verdict = if c.expected == c.actual {
            "ok".to_string()
        } else {
            format!("MISMATCH (index says {:08x})", c.expected)
        };
        println!(
            "  section {:<18} {:>12} bytes  CRC-32 {:08x}  {verdict}",
            c.name, c.length, c.actual
        );
    }
    for off in &v.bad_padding {
        println!("  padding: non-zero byte at file offset {off}");
    }
    let checked: u64 = v.sections.iter().map(|c| c.length).sum();
    if !v.ok() {
        let bad: Vec<&str> = (v.sections.iter())
            .filter(|c| c.expected != c.actual)
            .map(|c| c.name.as_str())
            .collect();
        bail!(
            "verify FAILED: {}: {} of {} sections have a wrong CRC-32{}{}; the file is corrupt",
            a.file.display(),
            bad.len(),
            v.sections.len(),
            if bad.is_empty() {
                String::new()
            } else {
                format!(" ({})", bad.join(", "))
            },
            if v.bad_padding.is_empty() {
                String::new()
            } else {
                format!(", {} padding gaps are not zero", v.bad_padding.len())
            }
        );
    }
    println!(
        "OK: {} sections ({}, {checked} bytes) match their CRC-32; all padding is zero",
        v.sections.len(),
        fmt_bytes(checked)
    );
    Ok(())
}
