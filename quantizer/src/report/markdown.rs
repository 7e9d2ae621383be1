//! The report as Markdown (the `.report.md` file and `mixq-quantize report`), and the few
//! lines `convert` prints when it is done.
//!
//! Every retention figure is printed next to the name of its metric (PPL ratio =
//! PPL_ref / PPL_quant); emulated figures say so in their heading and on every summary line.

use super::placement::fmt_bytes;
use super::{per_layer, EndToEnd, QualityReport};
use std::fmt::Write;

/// The name of the retention metric, printed wherever a retention figure appears.
pub const RETENTION_METRIC: &str = "retention (PPL ratio = PPL_ref / PPL_quant)";
/// Heading qualifier of the NPU figures.
pub const NPU_LABEL: &str =
    "Emulated NPU: the NPU engine model's arithmetic in attention (int4 weights, bf16 activations), EMULATED on the host CPU, not measured on NPU hardware";

/// The whole report.
pub fn render_markdown(r: &QualityReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Quality-retention report: {}\n", r.model);
    let _ = writeln!(
        s,
        "Recipe `{}`, device profile `{}`. Calibration: {} tokens ({} sequences of {}) from `{}`{}.\n",
        r.recipe,
        r.profile,
        r.calibration.tokens,
        r.calibration.sequences,
        r.calibration.seq_len,
        r.calibration.source,
        methods(r)
    );

    let _ = writeln!(s, "## End to end\n");
    match &r.end_to_end {
        Some(e) => s.push_str(&render_end_to_end(e, "CPU path (f32 activations)")),
        None => {
            let _ = writeln!(
                s,
                "Not measured: this report has no end-to-end figures (run `mixq-quantize report FILE \
                 --eval TEXT` to compute them).\n"
            );
        }
    }
    if let Some(e) = &r.end_to_end_npu {
        s.push('\n');
        s.push_str(&render_end_to_end(e, NPU_LABEL));
    }

    size_section(&mut s, r);
    per_layer_section(&mut s, r);
    per_tensor_section(&mut s, r);

    let _ = writeln!(s, "\n## Notes\n");
    if r.notes.is_empty() {
        let _ = writeln!(s, "- (none)");
    }
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    let _ = writeln!(
        s,
        "- Definitions: relative RMSE = ‖W − Q(W)‖_F / ‖W‖_F; SNR = 10·log10(‖W‖² / ‖W − Q(W)‖²) dB; \
         output error = tr(E H Eᵀ) / tr(W H Wᵀ) on the calibration activations (H = their second \
         moments); perplexity = exp(mean next-token NLL in nats); KL in nats."
    );
    s
}

/// One end-to-end block: a metric table with the metrics named, and how it was measured.
pub fn render_end_to_end(e: &EndToEnd, title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### {title}\n");
    let windows = if e.windows > 0 {
        format!(
            " in {} window(s) of up to {} tokens (each with `<bos>` and a fresh KV cache)",
            e.windows, e.window
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "Evaluation text `{}` (not the calibration text): {} predicted tokens{}.\n",
        e.eval_source, e.tokens, windows
    );
    let _ = writeln!(s, "| metric | value |\n|---|---|");
    let _ = writeln!(
        s,
        "| perplexity of the reference, PPL_ref | {:.4} |",
        e.ppl_ref
    );
    let _ = writeln!(
        s,
        "| perplexity of the quantized model, PPL_quant | {:.4} |",
        e.ppl_quant
    );
    let _ = writeln!(
        s,
        "| **{RETENTION_METRIC}** | **{:.2} %**{} |",
        e.retention_ppl_pct,
        ci(e)
    );
    let _ = writeln!(
        s,
        "| KL divergence KL(P_ref ‖ P_quant), mean per token | {:.5} nats |",
        e.kl_mean
    );
    let _ = writeln!(
        s,
        "| KL divergence KL(P_ref ‖ P_quant), p99 over tokens | {:.5} nats |",
        e.kl_p99
    );
    let _ = writeln!(
        s,
        "| top-1 agreement (same argmax as the reference) | {:.2} % |",
        e.top1_agreement * 100.0
    );
    let _ = writeln!(
        s,
        "\nCaveat: {} tokens of one text. The 95 % interval above treats tokens as independent, \
         which is optimistic; differences between recipes smaller than it are noise.",
        e.tokens
    );
    s
}

/// The lines `convert` prints at the end.
pub fn render_summary(r: &QualityReport) -> String {
    let mut s = String::new();
    let z = &r.size;
    let classes: Vec<String> = (z.classes.iter())
        .map(|c| format!("{} {:.2}", c.class, c.bits_per_weight))
        .collect();
    let _ = writeln!(
        s,
        "size: {} file, {:.1} M parameters, {:.3} bits/weight ({})",
        fmt_bytes(z.file_bytes),
        z.params as f64 / 1e6,
        z.bits_per_weight,
        classes.join(", ")
    );
    let line = |s: &mut String, e: &EndToEnd, label: &str| {
        let _ = writeln!(
            s,
            "{label}{RETENTION_METRIC}: {:.2} %{}  (PPL_ref {:.3}, PPL_quant {:.3}; {} tokens of {})",
            e.retention_ppl_pct,
            ci(e),
            e.ppl_ref,
            e.ppl_quant,
            e.tokens,
            e.eval_source
        );
        let _ = writeln!(
            s,
            "{label}KL(P_ref ‖ P_quant): mean {:.5} nats, p99 {:.5} nats; top-1 agreement {:.2} %",
            e.kl_mean,
            e.kl_p99,
            e.top1_agreement * 100.0
        );
    };
    match &r.end_to_end {
        Some(e) => line(&mut s, e, ""),
        None => {
            let _ = writeln!(s, "end-to-end figures: not measured");
        }
    }
    if let Some(e) = &r.end_to_end_npu {
        line(
            &mut s,
            e,
            "[emulated NPU: the engine model's arithmetic, EMULATED on the host CPU] ",
        );
    }
    let spills = r.notes.iter().filter(|n| n.contains("SPILL")).count();
    if spills > 0 {
        let _ = writeln!(
            s,
            "placement: tensors spilled out of their intended regions (see the report's notes)"
        );
    }
    s
}

/// SNR in dB, `∞ (exact)` for a tensor stored without error.
pub fn fmt_snr(db: f64) -> String {
    if db.is_infinite() && db > 0.0 {
        "∞ (exact)".into()
    } else {
        format!("{db:.1}")
    }
}

fn ci(e: &EndToEnd) -> String {
    match e.retention_ppl_ci95 {
        Some((lo, hi)) => format!(" (95 % interval {lo:.2}–{hi:.2} %)"),
        None => String::new(),
    }
}

fn methods(r: &QualityReport) -> String {
    if r.calibration.methods.is_empty() {
        return String::new();
    }
    let m: Vec<String> = (r.calibration.methods.iter())
        .map(|(t, m)| format!("{t}: {m}"))
        .collect();
    format!("; methods {}", m.join(", "))
}

fn size_section(s: &mut String, r: &QualityReport) {
    let z = &r.size;
    let _ = writeln!(s, "\n## Size\n");
    let _ = writeln!(
        s,
        "File {} ({} bytes); {} parameters stored in {} of tensors: **{:.3} bits per weight** \
         (scales and minimums included; the file's header, index, tokenizer and report excluded).\n",
        fmt_bytes(z.file_bytes),
        z.file_bytes,
        z.params,
        fmt_bytes(z.classes.iter().map(|c| c.bytes).sum()),
        z.bits_per_weight
    );
    let total: u64 = z.classes.iter().map(|c| c.bytes).sum::<u64>().max(1);
    let _ = writeln!(
        s,
        "| class | parameters | bytes | bits per weight | share of tensor bytes |\n|---|---:|---:|---:|---:|"
    );
    for c in &z.classes {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} | {:.1} % |",
            c.class,
            c.params,
            fmt_bytes(c.bytes),
            c.bits_per_weight,
            c.bytes as f64 * 100.0 / total as f64
        );
    }
}

fn per_layer_section(s: &mut String, r: &QualityReport) {
    let pl = per_layer(r);
    let _ = writeln!(s, "\n## Per-layer error\n");
    if pl.rows.is_empty() {
        let _ = writeln!(s, "No per-layer tensors in this report.");
        return;
    }
    let _ = writeln!(
        s,
        "Relative RMSE of the weights by class (the parameter-weighted mean over the class's \
         tensors in the layer; norms are listed per tensor below), and the layer's lowest SNR.\n"
    );
    let head: Vec<String> = pl
        .classes
        .iter()
        .map(|c| format!("{c} rel. RMSE"))
        .collect();
    let _ = writeln!(
        s,
        "| layer | {} | min SNR (dB) |\n|---:|{}---:|",
        head.join(" | "),
        "---:|".repeat(pl.classes.len())
    );
    for row in &pl.rows {
        let cells: Vec<String> = (row.rel_rmse.iter())
            .map(|v| v.map_or("–".into(), |x| format!("{:.2} %", x * 100.0)))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            row.layer,
            cells.join(" | "),
            fmt_snr(row.min_snr_db)
        );
    }
}

fn per_tensor_section(s: &mut String, r: &QualityReport) {
    let _ = writeln!(s, "\n## Per tensor\n");
    let _ = writeln!(
        s,
        "| tensor | class | type | method | rel. RMSE | SNR (dB) | output error | params | bytes | section |\n\
         |---|---|---|---|---:|---:|---:|---:|---:|---|"
    );
    for t in &r.tensors {
        let out = t.out_rel_err.map_or("–".into(), |x| format!("{x:.2e}"));
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {:.3} % | {} | {} | {} | {} | {} |",
            t.name,
            t.class,
            t.qtype,
            t.method,
            t.rel_rmse * 100.0,
            fmt_snr(t.snr_db),
            out,
            t.params,
            t.bytes,
            t.section
        );
    }
}
