//! Device profiles and placement: which section of a `.mixq` file each tensor lives in.
//!
//! A profile names the file's device regions (`npu.bank0..3`, `vulkan.heap0`, `host`) with
//! their budgets, and for each tensor role a chain of region groups to try. [`plan`] is a pure
//! function of (tensor list, profile) -> [`Plan`]; the writer lays the file out from the plan.
//!
//! Placement rule (SPEC.md §"Placement"):
//! - Tensors are grouped into units: a layer's attention tensors (q/k/v/o proj, q/k norm), a
//!   layer's other tensors (MLP and the four layer norms), and every other tensor alone.
//!   A unit is never split across regions.
//! - Units are placed in order: for layer 0, 1, ...: its attention unit, then its other unit;
//!   then the remaining tensors in the order given.
//! - A unit tries the groups of its role's chain in order. Within a group it tries the first
//!   region that is still open; if the unit does not fit that region's budget, the region is
//!   closed for good (fill bank 0, then bank 1, ...; never go back), and the next open region
//!   of the group is tried. A unit that finds no open region with room in any group of its
//!   chain is an error; every built-in chain ends in `host`, which has no budget.
//! - A unit placed outside its chain's first group is a spill: each of its tensors records as
//!   `intended_section` the first-group region it tried last (e.g. `npu.bank3` when all banks
//!   are full).
//! - Inside a region, tensors are appended in placement order at offsets aligned to 256.

use crate::mixq::error::{MixqError, Result};
use crate::mixq::{align_up, TENSOR_ALIGN};
use crate::quant::{QType, Transform};
use serde::{Deserialize, Serialize};

/// The device a section is meant for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// An NPU memory bank.
    Npu,
    /// A Vulkan device heap.
    Vulkan,
    /// Host memory (CPU).
    Host,
    /// Not device data: an embedded blob (tokenizer, reports).
    Meta,
}

/// A device region of a profile: a section of the file when it holds any tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    pub name: String,
    pub device: Device,
    /// Largest section length in bytes; `None` = unlimited.
    pub budget: Option<u64>,
}

/// What a tensor is, for placement (from its HF name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `model.layers.{i}.self_attn.*`
    Attention(usize),
    /// Any other `model.layers.{i}.*` (MLP, layer norms).
    Layer(usize),
    /// `model.embed_tokens.weight` (the gather table; also the tied lm_head).
    Embedding,
    /// Everything else (`model.norm.weight`, an untied `lm_head.weight`, ...).
    Other,
}

impl Role {
    /// The role of a canonical HF tensor name.
    pub fn of(name: &str) -> Role {
        if name == "model.embed_tokens.weight" {
            return Role::Embedding;
        }
        if let Some(rest) = name.strip_prefix("model.layers.") {
            if let Some((idx, tail)) = rest.split_once('.') {
                if let Ok(i) = idx.parse::<usize>() {
                    return if tail.starts_with("self_attn.") {
                        Role::Attention(i)
                    } else {
                        Role::Layer(i)
                    };
                }
            }
        }
        Role::Other
    }
}

/// A device profile: regions, and per role the chain of region groups placement tries.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceProfile {
    pub name: String,
    pub regions: Vec<Region>,
    /// Chains by role: each a list of groups, each group a list of region names.
    pub attention: Vec<Vec<String>>,
    pub layer: Vec<Vec<String>>,
    pub embedding: Vec<Vec<String>>,
    pub other: Vec<Vec<String>>,
}

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

fn chain(groups: &[&[&str]]) -> Vec<Vec<String>> {
    groups
        .iter()
        .map(|g| g.iter().map(|s| s.to_string()).collect())
        .collect()
}

impl DeviceProfile {
    /// The built-in profile of this name: `phoenix`, `gpu` or `cpu`.
    pub fn by_name(name: &str) -> Result<DeviceProfile> {
        match name {
            "phoenix" => Ok(Self::phoenix()),
            "gpu" => Ok(Self::gpu()),
            "cpu" => Ok(Self::cpu()),
            _ => Err(MixqError::UnknownProfile { name: name.into() }),
        }
    }

    /// AMD Phoenix (Ryzen 7040/8040): attention in 4 NPU banks of 512 MiB, the rest of the
    /// layers in an 8 GiB Vulkan heap, the embedding table in host memory. NPU overflow spills
    /// to the heap, heap overflow to host.
    pub fn phoenix() -> DeviceProfile {
        let banks = ["npu.bank0", "npu.bank1", "npu.bank2", "npu.bank3"];
        let mut regions: Vec<Region> = banks
            .iter()
            .map(|b| Region {
                name: b.to_string(),
                device: Device::Npu,
                budget: Some(512 * MIB),
            })
            .collect();
        regions.push(Region {
            name: "vulkan.heap0".into(),
            device: Device::Vulkan,
            budget: Some(8 * GIB),
        });
        regions.push(Region {
            name: "host".into(),
            device: Device::Host,
            budget: None,
        });
        DeviceProfile {
            name: "phoenix".into(),
            regions,
            attention: chain(&[&banks, &["vulkan.heap0"], &["host"]]),
            layer: chain(&[&["vulkan.heap0"], &["host"]]),
            embedding: chain(&[&["host"]]),
            other: chain(&[&["vulkan.heap0"], &["host"]]),
        }
    }

    /// A discrete or integrated GPU: every layer weight in one unlimited Vulkan heap, the
    /// embedding table in host memory.
    pub fn gpu() -> DeviceProfile {
        DeviceProfile {
            name: "gpu".into(),
            regions: vec![
                Region {
                    name: "vulkan.heap0".into(),
                    device: Device::Vulkan,
                    budget: None,
                },
                Region {
                    name: "host".into(),
                    device: Device::Host,
                    budget: None,
                },
            ],
            attention: chain(&[&["vulkan.heap0"]]),
            layer: chain(&[&["vulkan.heap0"]]),
            embedding: chain(&[&["host"]]),
            other: chain(&[&["vulkan.heap0"]]),
        }
    }

    /// CPU only: everything in host memory.
    pub fn cpu() -> DeviceProfile {
        DeviceProfile {
            name: "cpu".into(),
            regions: vec![Region {
                name: "host".into(),
                device: Device::Host,
                budget: None,
            }],
            attention: chain(&[&["host"]]),
            layer: chain(&[&["host"]]),
            embedding: chain(&[&["host"]]),
            other: chain(&[&["host"]]),
        }
    }

    fn chain_of(&self, role: Role) -> &[Vec<String>] {
        match role {
            Role::Attention(_) => &self.attention,
            Role::Layer(_) => &self.layer,
            Role::Embedding => &self.embedding,
            Role::Other => &self.other,
        }
    }
}

/// A tensor the quantizer will write: known (name, type, shape) before any byte is produced.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// Canonical HF name, e.g. `model.layers.3.mlp.gate_proj.weight`.
    pub name: String,
    pub qtype: QType,
    /// `[rows, cols]` (row-major `[out, in]`) or `[n]` for a vector (one row).
    pub shape: Vec<usize>,
    pub transform: Transform,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, qtype: QType, shape: &[usize]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            qtype,
            shape: shape.to_vec(),
            transform: Transform::None,
        }
    }

    /// (rows, cols): a 1-D tensor is one row.
    pub fn rows_cols(&self) -> Result<(usize, usize)> {
        match self.shape[..] {
            [n] if n > 0 => Ok((1, n)),
            [r, c] if r > 0 && c > 0 => Ok((r, c)),
            _ => Err(MixqError::BadShape {
                name: self.name.clone(),
                shape: self.shape.iter().map(|&d| d as u64).collect(),
                problem: "expected 1 or 2 non-zero dimensions".into(),
            }),
        }
    }

    /// Stored bytes (checked; errors name the tensor).
    pub fn bytes(&self) -> Result<u64> {
        let (r, c) = self.rows_cols()?;
        let n = self
            .qtype
            .tensor_bytes(r, c)
            .map_err(|e| MixqError::BadShape {
                name: self.name.clone(),
                shape: self.shape.iter().map(|&d| d as u64).collect(),
                problem: e.to_string(),
            })?;
        self.transform
            .check(c)
            .map_err(|problem| MixqError::BadTransform {
                name: self.name.clone(),
                problem,
            })?;
        if self.shape.len() == 1 && self.transform != Transform::None {
            return Err(MixqError::BadTransform {
                name: self.name.clone(),
                problem: "1-D tensors take no transform".into(),
            });
        }
        Ok(n as u64)
    }
}

/// Where one tensor goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub section: String,
    /// Offset inside the section (a multiple of 256).
    pub offset: u64,
    pub length: u64,
    /// Set for a spill: the region of the first group the unit tried last (its home).
    pub intended_section: Option<String>,
}

/// A region after placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionFill {
    pub region: Region,
    /// Section length: the end of its last tensor (0 = empty, no section in the file).
    pub used: u64,
}

/// The layout of every tensor: what the writer executes and the index records.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub profile: String,
    /// In profile order.
    pub regions: Vec<RegionFill>,
    /// In the order given to [`plan`].
    pub tensors: Vec<(TensorSpec, Placement)>,
}

impl Plan {
    /// Tensors placed outside the region they were meant for.
    pub fn spills(&self) -> impl Iterator<Item = &(TensorSpec, Placement)> {
        self.tensors
            .iter()
            .filter(|(_, p)| p.intended_section.is_some())
    }

    /// Bytes placed in region `name`.
    pub fn used(&self, name: &str) -> u64 {
        self.regions
            .iter()
            .find(|r| r.region.name == name)
            .map_or(0, |r| r.used)
    }
}

/// Places `tensors` into the regions of `profile` (see the module docs for the rule).
pub fn plan(tensors: &[TensorSpec], profile: &DeviceProfile) -> Result<Plan> {
    let perr = |problem: String| MixqError::Plan { problem };
    let mut names = std::collections::HashSet::new();
    let mut sizes = Vec::with_capacity(tensors.len());
    for t in tensors {
        if !names.insert(t.name.as_str()) {
            return Err(MixqError::DuplicateTensor {
                name: t.name.clone(),
            });
        }
        sizes.push(t.bytes()?);
    }
    let region_idx = |name: &str| {
        profile
            .regions
            .iter()
            .position(|r| r.name == name)
            .ok_or_else(|| {
                perr(format!(
                    "profile `{}` routes to unknown region `{name}`",
                    profile.name
                ))
            })
    };

    // Units, in placement order.
    let mut units: Vec<(Role, Vec<usize>)> = Vec::new();
    let mut layered: std::collections::BTreeMap<(usize, u8), Vec<usize>> = Default::default();
    let mut rest = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        match Role::of(&t.name) {
            Role::Attention(l) => layered.entry((l, 0)).or_default().push(i),
            Role::Layer(l) => layered.entry((l, 1)).or_default().push(i),
            _ => rest.push(i),
        }
    }
    for ((l, kind), idx) in layered {
        let role = if kind == 0 {
            Role::Attention(l)
        } else {
            Role::Layer(l)
        };
        units.push((role, idx));
    }
    for i in rest {
        units.push((Role::of(&tensors[i].name), vec![i]));
    }

    let mut used = vec![0u64; profile.regions.len()];
    let mut closed = vec![false; profile.regions.len()];
    let mut placements: Vec<Option<Placement>> = vec![None; tensors.len()];
    for (role, idx) in units {
        // end offset of the unit if appended to a region currently `used` bytes long
        let unit_end = |start: u64| -> Option<u64> {
            let mut end = start;
            for &i in &idx {
                end = align_up(end, TENSOR_ALIGN)?.checked_add(sizes[i])?;
            }
            Some(end)
        };
        // The home of a unit: the region of its chain's first group it tried last (the open
        // one, or the last one when the whole group is closed). Placing it elsewhere is a spill.
        let mut home: Option<usize> = None;
        let mut chosen = None;
        'groups: for (g, group) in profile.chain_of(role).iter().enumerate() {
            for rname in group {
                let r = region_idx(rname)?;
                if g == 0 {
                    home = Some(r);
                }
                if closed[r] {
                    continue;
                }
                let end = unit_end(used[r])
                    .ok_or_else(|| perr(format!("region `{rname}` size overflows")))?;
                if profile.regions[r].budget.is_none_or(|b| end <= b) {
                    chosen = Some(r);
                    break 'groups;
                }
                closed[r] = true;
            }
        }
        let Some(r) = chosen else {
            return Err(perr(format!(
                "tensor `{}` ({role:?}) fits no region of profile `{}`",
                tensors[idx[0]].name, profile.name
            )));
        };
        let intended = home
            .filter(|&h| h != r)
            .map(|h| profile.regions[h].name.clone());
        for &i in &idx {
            let offset = align_up(used[r], TENSOR_ALIGN).expect("checked by unit_end");
            used[r] = offset + sizes[i];
            placements[i] = Some(Placement {
                section: profile.regions[r].name.clone(),
                offset,
                length: sizes[i],
                intended_section: intended.clone(),
            });
        }
    }
    Ok(Plan {
        profile: profile.name.clone(),
        regions: profile
            .regions
            .iter()
            .zip(used)
            .map(|(region, used)| RegionFill {
                region: region.clone(),
                used,
            })
            .collect(),
        tensors: tensors
            .iter()
            .cloned()
            .zip(
                placements
                    .into_iter()
                    .map(|p| p.expect("every unit placed")),
            )
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gemma 3 text-model tensors under the seed's `optimal` recipe (tied embedding: no lm_head).
    fn gemma_optimal(
        layers: usize,
        hidden: usize,
        inter: usize,
        heads: usize,
        kv: usize,
        hd: usize,
        vocab: usize,
    ) -> Vec<TensorSpec> {
        let mut t = vec![TensorSpec::new(
            "model.embed_tokens.weight",
            QType::I8Asym,
            &[vocab, hidden],
        )];
        for l in 0..layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            t.push(TensorSpec::new(
                p("self_attn.q_proj.weight"),
                QType::I4Grouped,
                &[heads * hd, hidden],
            ));
            t.push(TensorSpec::new(
                p("self_attn.k_proj.weight"),
                QType::I4Grouped,
                &[kv * hd, hidden],
            ));
            t.push(TensorSpec::new(
                p("self_attn.v_proj.weight"),
                QType::I4Grouped,
                &[kv * hd, hidden],
            ));
            t.push(TensorSpec::new(
                p("self_attn.o_proj.weight"),
                QType::I4PerChannel,
                &[hidden, heads * hd],
            ));
            t.push(TensorSpec::new(
                p("self_attn.q_norm.weight"),
                QType::I8Sym,
                &[hd],
            ));
            t.push(TensorSpec::new(
                p("self_attn.k_norm.weight"),
                QType::I8Sym,
                &[hd],
            ));
            t.push(TensorSpec::new(
                p("mlp.gate_proj.weight"),
                QType::I2Structured,
                &[inter, hidden],
            ));
            t.push(TensorSpec::new(
                p("mlp.up_proj.weight"),
                QType::I2Structured,
                &[inter, hidden],
            ));
            t.push(TensorSpec::new(
                p("mlp.down_proj.weight"),
                QType::I4Grouped,
                &[hidden, inter],
            ));
            for n in [
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
            ] {
                t.push(TensorSpec::new(
                    p(&format!("{n}.weight")),
                    QType::I8Sym,
                    &[hidden],
                ));
            }
        }
        t.push(TensorSpec::new(
            "model.norm.weight",
            QType::I8Sym,
            &[hidden],
        ));
        t
    }

    fn section_of<'a>(p: &'a Plan, name: &str) -> &'a Placement {
        &p.tensors.iter().find(|(t, _)| t.name == name).unwrap().1
    }

    #[test]
    fn roles() {
        assert_eq!(Role::of("model.embed_tokens.weight"), Role::Embedding);
        assert_eq!(
            Role::of("model.layers.12.self_attn.k_norm.weight"),
            Role::Attention(12)
        );
        assert_eq!(
            Role::of("model.layers.0.mlp.up_proj.weight"),
            Role::Layer(0)
        );
        assert_eq!(
            Role::of("model.layers.3.input_layernorm.weight"),
            Role::Layer(3)
        );
        assert_eq!(Role::of("model.norm.weight"), Role::Other);
        assert_eq!(Role::of("lm_head.weight"), Role::Other);
        assert_eq!(Role::of("model.layers.x.mlp"), Role::Other);
    }

    #[test]
    fn gemma3_270m_fits_phoenix() {
        let t = gemma_optimal(18, 640, 2048, 4, 1, 256, 262144);
        let p = plan(&t, &DeviceProfile::phoenix()).unwrap();
        assert_eq!(p.spills().count(), 0);
        assert_eq!(
            section_of(&p, "model.layers.17.self_attn.o_proj.weight").section,
            "npu.bank0"
        );
        assert_eq!(
            section_of(&p, "model.layers.17.mlp.down_proj.weight").section,
            "vulkan.heap0"
        );
        assert_eq!(section_of(&p, "model.norm.weight").section, "vulkan.heap0");
        assert_eq!(section_of(&p, "model.embed_tokens.weight").section, "host");
        assert_eq!(p.used("npu.bank1"), 0);
        // every offset is aligned, tensors of a region do not overlap, and `used` is exact
        for rf in &p.regions {
            let mut spans: Vec<_> = p
                .tensors
                .iter()
                .filter(|(_, pl)| pl.section == rf.region.name)
                .map(|(_, pl)| (pl.offset, pl.offset + pl.length))
                .collect();
            spans.sort();
            assert!(spans.iter().all(|s| s.0 % TENSOR_ALIGN == 0));
            assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
            assert_eq!(spans.last().map_or(0, |s| s.1), rf.used);
        }
        // deterministic
        assert_eq!(p, plan(&t, &DeviceProfile::phoenix()).unwrap());
    }

    /// Gemma 3 27B (62 layers, hidden 5376, 32 heads x 128, 16 KV heads, FFN 21504): its
    /// attention under `optimal` is 35.8 MB per layer, 2.22 GB in all, more than the four
    /// 512 MiB banks hold; its FFN is 144.5 MB per layer, 8.96 GB, more than the 8 GiB heap.
    #[test]
    fn gemma3_27b_on_phoenix_spills_and_says_so() {
        let t = gemma_optimal(62, 5376, 21504, 32, 16, 128, 262144);
        let p = plan(&t, &DeviceProfile::phoenix()).unwrap();
        let attn_unit: u64 = 12_386_304 + 2 * 6_193_152 + 11_053_056;
        assert_eq!(
            section_of(&p, "model.layers.0.self_attn.q_proj.weight").length,
            12_386_304
        );
        assert_eq!(
            section_of(&p, "model.layers.0.self_attn.o_proj.weight").length,
            11_053_056
        );
        assert!(attn_unit * 15 > 512 * MIB && attn_unit * 14 < 512 * MIB);
        // 14 layers per bank, a layer's attention never split
        for l in 0..62 {
            let secs: std::collections::BTreeSet<_> = p
                .tensors
                .iter()
                .filter(|(s, _)| Role::of(&s.name) == Role::Attention(l))
                .map(|(_, pl)| pl.section.clone())
                .collect();
            assert_eq!(secs.len(), 1, "layer {l} split: {secs:?}");
            let sec = secs.into_iter().next().unwrap();
            let pl = section_of(&p, &format!("model.layers.{l}.self_attn.q_proj.weight"));
            if l < 56 {
                assert_eq!(sec, format!("npu.bank{}", l / 14), "layer {l}");
                assert_eq!(pl.intended_section, None);
            } else {
                assert!(!sec.starts_with("npu."), "layer {l}");
                assert_eq!(
                    pl.intended_section.as_deref(),
                    Some("npu.bank3"),
                    "layer {l}"
                );
            }
        }
        for rf in &p.regions {
            if let Some(b) = rf.region.budget {
                assert!(rf.used <= b, "{} over budget", rf.region.name);
            }
        }
        // the heap fills up with the first layers' FFN; the last layers' FFN spill to host
        let ffn_host: Vec<usize> = (0..62)
            .filter(|l| {
                section_of(&p, &format!("model.layers.{l}.mlp.up_proj.weight")).section == "host"
            })
            .collect();
        assert!(!ffn_host.is_empty());
        for &l in &ffn_host {
            let pl = section_of(&p, &format!("model.layers.{l}.mlp.up_proj.weight"));
            assert_eq!(pl.intended_section.as_deref(), Some("vulkan.heap0"));
        }
        // the spilled attention of layers 56..58 still fits the heap; then the heap closes
        for l in 56..62 {
            let pl = section_of(&p, &format!("model.layers.{l}.self_attn.q_proj.weight"));
            assert_eq!(
                pl.section,
                if l < 59 { "vulkan.heap0" } else { "host" },
                "layer {l}"
            );
        }
        // once closed, a region stays closed: the host layers are a suffix
        assert_eq!(ffn_host, (ffn_host[0]..62).collect::<Vec<_>>());
        let summary: Vec<String> = p
            .regions
            .iter()
            .map(|r| {
                format!(
                    "{} {:.1} MB / {:?}",
                    r.region.name,
                    r.used as f64 / 1e6,
                    r.region.budget
                )
            })
            .collect();
        println!("27B optimal on phoenix: {summary:?}; attention layers 56..61 spill; FFN of layers {:?} in host", ffn_host);
    }

    #[test]
    fn gpu_and_cpu_profiles() {
        let t = gemma_optimal(2, 640, 2048, 4, 1, 256, 1024);
        let p = plan(&t, &DeviceProfile::gpu()).unwrap();
        assert!(p
            .tensors
            .iter()
            .all(|(s, pl)| (pl.section == "host") == (s.name == "model.embed_tokens.weight")));
        let p = plan(&t, &DeviceProfile::cpu()).unwrap();
        assert!(p.tensors.iter().all(|(_, pl)| pl.section == "host"));
        assert_eq!(p.spills().count(), 0);
        assert!(matches!(
            DeviceProfile::by_name("tpu"),
            Err(MixqError::UnknownProfile { .. })
        ));
    }

    #[test]
    fn bad_specs_are_errors() {
        let prof = DeviceProfile::cpu();
        let t = vec![TensorSpec::new("a", QType::I4Grouped, &[4, 96])];
        assert!(matches!(plan(&t, &prof), Err(MixqError::BadShape { .. })));
        let t = vec![TensorSpec::new("a", QType::F32, &[4, 0])];
        assert!(matches!(plan(&t, &prof), Err(MixqError::BadShape { .. })));
        let t = vec![
            TensorSpec::new("a", QType::F32, &[4]),
            TensorSpec::new("a", QType::F32, &[4]),
        ];
        assert!(matches!(
            plan(&t, &prof),
            Err(MixqError::DuplicateTensor { .. })
        ));
        let mut t = TensorSpec::new("a", QType::F32, &[4, 640]);
        t.transform = Transform::BlockHadamard {
            block: 256,
            seed: 1,
        };
        assert!(matches!(
            plan(&[t], &prof),
            Err(MixqError::BadTransform { .. })
        ));
        // a profile whose chain ends in a full region
        let mut tiny = DeviceProfile::cpu();
        tiny.regions[0].budget = Some(100);
        let t = vec![TensorSpec::new("a", QType::F32, &[64])];
        assert!(matches!(plan(&t, &tiny), Err(MixqError::Plan { .. })));
    }
}
