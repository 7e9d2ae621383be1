//! What placement did, in words: each tensor section's fill against its budget and what it
//! holds, and every spill (a unit placed outside the region group meant for it), grouped by
//! role and destination. These lines go into the report's notes and `inspect`'s output; they
//! only state what the index shows (SPEC.md §9: never claim a fit the numbers do not show).

use mixq_format::mixq::Index;
use mixq_format::profile::{Device, Plan, Role};
use std::collections::BTreeMap;

/// Every placement note starts with this (the `report` command adds them when missing).
pub const PREFIX: &str = "Placement";

/// A tensor section (a profile region that holds tensors).
#[derive(Debug, Clone)]
pub struct PlacedSection {
    pub name: String,
    pub device: Device,
    pub used: u64,
    pub budget: Option<u64>,
}

/// One tensor's placement.
#[derive(Debug, Clone)]
pub struct PlacedTensor {
    pub name: String,
    pub section: String,
    pub intended: Option<String>,
    pub bytes: u64,
}

/// Placement notes of a written file.
pub fn placement_notes(index: &Index) -> Vec<String> {
    let sections: Vec<PlacedSection> = (index.sections.iter())
        .filter(|s| s.device != Device::Meta)
        .map(|s| PlacedSection {
            name: s.name.clone(),
            device: s.device,
            used: s.length,
            budget: s.budget,
        })
        .collect();
    let tensors: Vec<PlacedTensor> = (index.tensors.iter())
        .map(|t| PlacedTensor {
            name: t.name.clone(),
            section: t.section.clone(),
            intended: t.intended_section.clone(),
            bytes: t.length,
        })
        .collect();
    placement_lines(&index.profile.name, &sections, &tensors)
}

/// Placement notes of a plan (before the file is written).
pub fn placement_notes_from_plan(plan: &Plan) -> Vec<String> {
    let sections: Vec<PlacedSection> = (plan.regions.iter())
        .filter(|r| r.used > 0)
        .map(|r| PlacedSection {
            name: r.region.name.clone(),
            device: r.region.device,
            used: r.used,
            budget: r.region.budget,
        })
        .collect();
    let tensors: Vec<PlacedTensor> = (plan.tensors.iter())
        .map(|(s, p)| PlacedTensor {
            name: s.name.clone(),
            section: p.section.clone(),
            intended: p.intended_section.clone(),
            bytes: p.length,
        })
        .collect();
    placement_lines(&plan.profile, &sections, &tensors)
}

/// The notes: one line per section, a verdict, one line per group of spills.
pub fn placement_lines(
    profile: &str,
    sections: &[PlacedSection],
    tensors: &[PlacedTensor],
) -> Vec<String> {
    let mut out = Vec::new();
    for s in sections {
        let held: Vec<&PlacedTensor> = tensors.iter().filter(|t| t.section == s.name).collect();
        let fill = match s.budget {
            Some(b) => {
                let pct = s.used as f64 * 100.0 / b as f64;
                let digits = if pct < 1.0 { 3 } else { 1 };
                format!(
                    "{} of its {} budget ({pct:.digits$} % full)",
                    fmt_bytes(s.used),
                    fmt_bytes(b),
                )
            }
            None => format!("{} (no budget)", fmt_bytes(s.used)),
        };
        out.push(format!(
            "{PREFIX}: section `{}` ({}) holds {}: {}.",
            s.name,
            device_name(s.device),
            fill,
            describe_contents(&held)
        ));
    }
    // Spills grouped by (role kind, intended region, actual section).
    let mut groups: BTreeMap<(u8, String, String), (Vec<usize>, Vec<String>, u64)> =
        BTreeMap::new();
    for t in tensors {
        let Some(intended) = &t.intended else {
            continue;
        };
        let (kind, layer) = role_kind(&t.name);
        let g = groups
            .entry((kind, intended.clone(), t.section.clone()))
            .or_default();
        match layer {
            Some(l) => g.0.push(l),
            None => g.1.push(t.name.clone()),
        }
        g.2 += t.bytes;
    }
    if groups.is_empty() {
        out.push(format!(
            "{PREFIX}: every tensor sits in the region its role asks for first under the `{profile}` \
             profile (no spills)."
        ));
    } else {
        let n: usize = tensors.iter().filter(|t| t.intended.is_some()).count();
        let bytes: u64 = groups.values().map(|g| g.2).sum();
        out.push(format!(
            "{PREFIX} SPILL: {n} tensors ({}) do not fit the regions meant for them under the \
             `{profile}` profile and were placed in the next region of their chain:",
            fmt_bytes(bytes)
        ));
        // In model order: by role, then by first layer.
        let mut groups: Vec<_> = groups.into_iter().collect();
        groups.sort_by_key(|((kind, _, _), (layers, _, _))| (*kind, layers.iter().min().copied()));
        for ((kind, intended, actual), (layers, names, bytes)) in groups {
            let what = match kind {
                0 => format!("attention of layers {}", ranges(&layers)),
                1 => format!("FFN and norms of layers {}", ranges(&layers)),
                _ => names.join(", "),
            };
            out.push(format!(
                "{PREFIX} SPILL: {what} ({}) did not fit `{intended}` and was placed in `{actual}`.",
                fmt_bytes(bytes)
            ));
        }
    }
    out
}

/// 0 attention, 1 other layer weights, 2 anything else; with the layer.
fn role_kind(name: &str) -> (u8, Option<usize>) {
    match Role::of(name) {
        Role::Attention(l) => (0, Some(l)),
        Role::Layer(l) => (1, Some(l)),
        _ => (2, None),
    }
}

fn describe_contents(held: &[&PlacedTensor]) -> String {
    let (mut attn, mut layer, mut other) = (Vec::new(), Vec::new(), Vec::new());
    for t in held {
        match role_kind(&t.name) {
            (0, Some(l)) => attn.push(l),
            (1, Some(l)) => layer.push(l),
            _ => other.push(t.name.as_str()),
        }
    }
    let mut parts = Vec::new();
    if !attn.is_empty() {
        parts.push(format!("attention of layers {}", ranges(&attn)));
    }
    if !layer.is_empty() {
        parts.push(format!("FFN and norms of layers {}", ranges(&layer)));
    }
    if !other.is_empty() {
        parts.push(other.join(", "));
    }
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join("; ")
    }
}

/// `[0,1,2,3,5,7,8]` -> `0–3, 5, 7–8` (deduplicated, sorted).
pub fn ranges(v: &[usize]) -> String {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}–{}", v[i], v[j])
        });
        i = j + 1;
    }
    parts.join(", ")
}

fn device_name(d: Device) -> &'static str {
    match d {
        Device::Npu => "NPU",
        Device::Vulkan => "Vulkan GPU",
        Device::Host => "host",
        Device::Meta => "meta",
    }
}

/// Bytes in binary units: `512.0 MiB`, `8.49 GiB`.
pub fn fmt_bytes(b: u64) -> String {
    const K: f64 = 1024.0;
    let x = b as f64;
    if x >= K * K * K {
        format!("{:.2} GiB", x / (K * K * K))
    } else if x >= K * K {
        format!("{:.1} MiB", x / (K * K))
    } else if x >= K {
        format!("{:.1} KiB", x / K)
    } else {
        format!("{b} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_compress() {
        assert_eq!(ranges(&[5, 0, 1, 2, 3, 7, 8, 3]), "0–3, 5, 7–8");
        assert_eq!(ranges(&[4]), "4");
    }

    #[test]
    fn bytes_units() {
        assert_eq!(fmt_bytes(512 * 1024 * 1024), "512.0 MiB");
        assert_eq!(fmt_bytes(1000), "1000 B");
    }
}
