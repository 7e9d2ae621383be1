//! Recipes: which quant type, algorithm and rotation each tensor gets.
//!
//! A recipe is an ordered list of rules; each rule matches tensors by a glob over their HF
//! name (`*` matches any run of characters) and optionally by layer range, and sets any of the
//! type, the method and the Hadamard rotation. Later rules override earlier ones, field by
//! field. The result is a plan as data: one [`TensorChoice`] per stored tensor, printed and
//! recorded in the file before anything is quantized.
//!
//! Built-in recipes:
//! - `optimal` (default, the seed's recipe): embedding I8_ASYM (min/max round-to-nearest); q/k/v I4_GROUPED; o
//!   I4_PER_CHANNEL; gate/up I2_STRUCTURED with a 128-block Hadamard rotation; down
//!   I4_GROUPED; norms F32; an untied lm_head I8_ASYM (Gemma 3 ties it: stored once).
//! - `int8`: every linear I8_ASYM (embedding I8_ASYM, norms F32).
//! - `int4`: every linear 4-bit: gate/up I4_GROUPED16 (groups of 16, 6.0 bpw), the others
//!   I4_GROUPED32 (groups of 32, 5.0 bpw); embedding I8_ASYM, norms F32. On the 270M (8192
//!   scored tokens, quantizer/README.md): groups of 32 everywhere kept 96.6-97.2 % of the
//!   perplexity; 16 on gate/up keeps 98.1 % and cuts the KL divergence by 23 %, for 0.57 bit
//!   more per linear weight.
//! - `compact`: every tensor I4_GROUPED32, the tied embedding too, GPTQ-fitted as the lm_head
//!   it also is (src/head.rs); norms F32. At 270M the embedding is 63 % of the parameters, so
//!   this is the small file (192 MiB against int4's 268), at 92-94 % retention (quantizer/README.md).
//!
//! **Norms are stored exactly (F32), not I8_SYM as the seed says.** Gemma 3 scales by
//! `(1 + w)` and its norm weights span -1 .. 584 within one tensor (270M, layer 3
//! `post_feedforward_layernorm`): a 32-element I8_SYM group holding a 584 has a step of 4.6,
//! so a channel with `w = -0.99` (gain 0.01) comes back with gain 0 or 4.6. Measured: the
//! `int8` recipe with I8_SYM norms keeps 55 % of the perplexity (1024 eval tokens); see
//! quantizer/README.md. The norms are 0.02 % of the parameters (about 0.2 MB at 270M).
//!
//! A TOML file (any path ending in `.toml`):
//!
//! ```toml
//! name = "optimal-edges"       # optional; default: the file's stem
//! base = "optimal"             # optional built-in to start from; default: none
//!
//! [[rule]]
//! tensors = "*.mlp.gate_proj.weight"   # glob over HF names
//! layers = "0-1,16-17"                 # optional: layer indices, ranges inclusive; -1 = last
//! type = "i4_grouped"                  # optional: a SPEC.md type name
//! method = "gptq"                      # optional: gptq | search | rtn
//! hadamard = 128                       # optional: rotation block, 0 = none
//! equalize = true                      # optional: channel equalization into the norm
//!                                      # (q/k/v and gate/up only; ignored elsewhere)
//! ```
//!
//! Every tensor must end up with a type; a method left unset takes the type's default
//! ([`default_method`]).

use anyhow::{anyhow, bail, Context, Result};
use mixq_format::quant::{QType, Transform};
use mixq_format::Gemma3Config;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The linears whose input is an RMSNorm output (src/equalize.rs folds into it).
pub const NORM_FED: [&str; 5] = [
    ".self_attn.q_proj.weight",
    ".self_attn.k_proj.weight",
    ".self_attn.v_proj.weight",
    ".mlp.gate_proj.weight",
    ".mlp.up_proj.weight",
];

/// The built-in recipe names.
pub const BUILTIN: [&str; 4] = ["optimal", "int8", "int4", "compact"];

/// Seed of every Hadamard rotation the quantizer writes (any fixed value works; the file
/// records it per tensor).
pub const HADAMARD_SEED: u64 = 0x6d69_7871; // "mixq"

/// How a tensor's codes and parameters are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Round to nearest, parameters fitted to the plain squared error (no calibration data).
    Rtn,
    /// Parameters fitted to the importance-weighted squared error, importance = the input
    /// channel's mean square activation on the calibration text.
    Search,
    /// GPTQ: columns quantized in order, each one's error compensated on the columns not yet
    /// quantized through the calibration Hessian.
    Gptq,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Search => "search",
            Method::Gptq => "gptq",
        }
    }
    pub fn from_name(s: &str) -> Result<Method> {
        match s.to_ascii_lowercase().as_str() {
            "rtn" => Ok(Method::Rtn),
            "search" => Ok(Method::Search),
            "gptq" => Ok(Method::Gptq),
            _ => bail!("unknown method `{s}` (valid: gptq, search, rtn)"),
        }
    }
}

/// The default method of a type when the recipe does not say (see quantizer/README.md for the
/// measurements behind it): GPTQ for the 4- and 2-bit types, the importance-weighted search
/// for 8 bits (GPTQ's gain is within noise there and it costs a Cholesky per layer).
pub fn default_method(q: QType) -> Method {
    match q {
        QType::I4Grouped
        | QType::I4PerChannel
        | QType::I2Structured
        | QType::I4Grouped32
        | QType::I4Grouped16 => Method::Gptq,
        _ => Method::Search,
    }
}

/// The layer index of `model.layers.{i}.*`.
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?
        .split_once('.')?
        .0
        .parse()
        .ok()
}

/// One rule of a recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Glob over HF tensor names (`*` = any run of characters).
    pub tensors: String,
    /// Layer indices: `"0-3,17"`, negative counts from the end (`"-2--1"` = last two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub qtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Hadamard block size (power of two dividing the columns); 0 = no rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hadamard: Option<u32>,
    /// Channel equalization folded into the preceding norm (src/equalize.rs); only q/k/v and
    /// gate/up can take it, and a site is equalized only when all its linears ask for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equalize: Option<bool>,
}

impl Rule {
    fn new(tensors: &str, qtype: &str) -> Rule {
        Rule {
            tensors: tensors.into(),
            layers: None,
            qtype: Some(qtype.into()),
            method: None,
            hadamard: None,
            equalize: None,
        }
    }
    fn with_method(mut self, m: Method) -> Rule {
        self.method = Some(m.name().into());
        self
    }
    fn rotated(mut self, block: u32) -> Rule {
        self.hadamard = Some(block);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    base: Option<String>,
    #[serde(default)]
    rule: Vec<Rule>,
}

/// A recipe: a name and its rules, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub name: String,
    pub rules: Vec<Rule>,
}

/// What one tensor becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorChoice {
    pub name: String,
    pub shape: Vec<usize>,
    pub qtype: QType,
    pub method: Method,
    pub transform: Transform,
    /// Whether this linear's input channels are equalized into the preceding norm.
    pub equalize: bool,
}

impl Recipe {
    /// A built-in name (`optimal`, `int8`, `int4`, `compact`) or a path to a TOML file.
    pub fn load(spec: &str) -> Result<Recipe> {
        if let Some(r) = Recipe::builtin(spec) {
            return Ok(r);
        }
        let path = Path::new(spec);
        if spec.ends_with(".toml") || path.exists() {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading recipe file {}", path.display()))?;
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| spec.into());
            return Recipe::from_toml(&text, &stem)
                .with_context(|| format!("recipe file {}", path.display()));
        }
        bail!(
            "unknown recipe `{spec}`: use one of {} or a path to a .toml recipe file",
            BUILTIN.join(", ")
        )
    }

    /// The built-in recipe of this name.
    pub fn builtin(name: &str) -> Option<Recipe> {
        const NORMS: &str = "*norm.weight";
        const EMBED: &str = "model.embed_tokens.weight";
        const HEAD: &str = "lm_head.weight";
        let rules = match name {
            "optimal" => vec![
                Rule::new(EMBED, "i8_asym").with_method(Method::Rtn),
                Rule::new(HEAD, "i8_asym").with_method(Method::Rtn),
                Rule::new(NORMS, "f32"),
                Rule::new("*.self_attn.q_proj.weight", "i4_grouped"),
                Rule::new("*.self_attn.k_proj.weight", "i4_grouped"),
                Rule::new("*.self_attn.v_proj.weight", "i4_grouped"),
                Rule::new("*.self_attn.o_proj.weight", "i4_per_channel"),
                Rule::new("*.mlp.gate_proj.weight", "i2_structured").rotated(128),
                Rule::new("*.mlp.up_proj.weight", "i2_structured").rotated(128),
                Rule::new("*.mlp.down_proj.weight", "i4_grouped"),
            ],
            "int8" => vec![Rule::new("*.weight", "i8_asym"), Rule::new(NORMS, "f32")],
            "int4" => vec![
                Rule::new("*.weight", "i4_grouped32"),
                Rule::new("*.mlp.gate_proj.weight", "i4_grouped16"),
                Rule::new("*.mlp.up_proj.weight", "i4_grouped16"),
                Rule::new(EMBED, "i8_asym").with_method(Method::Rtn),
                Rule::new(HEAD, "i8_asym").with_method(Method::Rtn),
                Rule::new(NORMS, "f32"),
            ],
            "compact" => vec![
                Rule::new("*.weight", "i4_grouped32"),
                Rule::new(EMBED, "i4_grouped32").with_method(Method::Gptq),
                Rule::new(HEAD, "i4_grouped32").with_method(Method::Gptq),
                Rule::new(NORMS, "f32"),
            ],
            _ => return None,
        };
        Some(Recipe {
            name: name.into(),
            rules,
        })
    }

    /// Parses a TOML recipe (format in the module docs); `default_name` names it when the
    /// file does not.
    pub fn from_toml(text: &str, default_name: &str) -> Result<Recipe> {
        let f: RecipeFile = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
        let mut rules = match &f.base {
            Some(b) => {
                Recipe::builtin(b)
                    .ok_or_else(|| {
                        anyhow!("unknown base recipe `{b}` (valid: {})", BUILTIN.join(", "))
                    })?
                    .rules
            }
            None => Vec::new(),
        };
        for (i, r) in f.rule.iter().enumerate() {
            let ctx = || format!("rule {} (tensors = \"{}\")", i + 1, r.tensors);
            if let Some(q) = &r.qtype {
                parse_qtype(q).with_context(ctx)?;
            }
            if let Some(m) = &r.method {
                Method::from_name(m).with_context(ctx)?;
            }
            if let Some(l) = &r.layers {
                parse_layers(l, 1 << 20).with_context(ctx)?;
            }
        }
        rules.extend(f.rule);
        Ok(Recipe {
            name: f.name.unwrap_or_else(|| default_name.to_string()),
            rules,
        })
    }

    /// Applies the recipe to every tensor of the model (checkpoint order), with optional
    /// per-type method overrides (`--method i4_grouped=search`).
    pub fn resolve(
        &self,
        config: &Gemma3Config,
        tensors: &[(String, Vec<usize>)],
        method_override: &[(QType, Method)],
    ) -> Result<Vec<TensorChoice>> {
        let n_layers = config.num_hidden_layers;
        let mut out = Vec::with_capacity(tensors.len());
        for (name, shape) in tensors {
            let (mut qtype, mut method, mut hadamard, mut equalize) = (None, None, None, None);
            for r in &self.rules {
                if !glob_match(&r.tensors, name) {
                    continue;
                }
                if let Some(l) = &r.layers {
                    match layer_of(name) {
                        Some(i) if parse_layers(l, n_layers)?.contains(&i) => {}
                        _ => continue,
                    }
                }
                if let Some(q) = &r.qtype {
                    qtype = Some(parse_qtype(q)?);
                    // a new type resets what belonged to the old one
                    method = None;
                    hadamard = None;
                }
                if let Some(m) = &r.method {
                    method = Some(Method::from_name(m)?);
                }
                if let Some(h) = r.hadamard {
                    hadamard = Some(h);
                }
                if let Some(e) = r.equalize {
                    equalize = Some(e);
                }
            }
            let qtype = qtype.ok_or_else(|| {
                anyhow!("recipe `{}` gives no type to tensor `{name}`", self.name)
            })?;
            let cols = *shape.last().unwrap_or(&0);
            if cols % qtype.block_size() != 0 {
                bail!(
                    "recipe `{}`: tensor `{name}` has {cols} columns, not a multiple of {}'s block of {}",
                    self.name,
                    qtype.name(),
                    qtype.block_size()
                );
            }
            let mut method = method.unwrap_or_else(|| default_method(qtype));
            // Tensors without calibration statistics (norms, an untied lm_head) cannot use
            // GPTQ; overrides apply to the decoder layers' linear layers only. A tied embedding
            // is also the lm_head: GPTQ / search fit it to the lm_head's input (src/head.rs).
            let linear = layer_of(name).is_some() && shape.len() == 2;
            let tied_head = name == "model.embed_tokens.weight" && config.tie_word_embeddings;
            if let Some((_, m)) = method_override.iter().find(|(q, _)| *q == qtype) {
                if linear {
                    method = *m;
                }
            }
            if !linear && !tied_head && method == Method::Gptq {
                method = Method::Search;
            }
            if !qtype.is_quantized() {
                method = Method::Rtn;
            }
            let transform = match hadamard {
                Some(b) if b > 0 && linear => {
                    let t = Transform::BlockHadamard {
                        block: b,
                        seed: HADAMARD_SEED,
                    };
                    t.check(cols).map_err(|e| {
                        anyhow!("recipe `{}`, tensor `{name}`: hadamard {e}", self.name)
                    })?;
                    t
                }
                _ => Transform::None,
            };
            let equalize = equalize.unwrap_or(false)
                && linear
                && qtype.is_quantized()
                && NORM_FED.iter().any(|t| name.ends_with(t));
            out.push(TensorChoice {
                name: name.clone(),
                shape: shape.clone(),
                qtype,
                method,
                transform,
                equalize,
            });
        }
        Ok(out)
    }
}

/// A SPEC type name, case-insensitive, `-` or `_`.
pub fn parse_qtype(s: &str) -> Result<QType> {
    QType::from_name(s).ok_or_else(|| {
        anyhow!(
            "unknown quant type `{s}` (valid: {})",
            QType::ALL.map(|q| q.name().to_ascii_lowercase()).join(", ")
        )
    })
}

/// `"0-3,17"` -> {0,1,2,3,17}; negative numbers count from the end (`-1` = last layer).
/// Ranges are inclusive.
pub fn parse_layers(spec: &str, n_layers: usize) -> Result<Vec<usize>> {
    let idx = |s: &str| -> Result<usize> {
        let v: i64 = s
            .trim()
            .parse()
            .map_err(|_| anyhow!("bad layer index `{s}` in `{spec}`"))?;
        let i = if v < 0 { n_layers as i64 + v } else { v };
        if i < 0 || i >= n_layers as i64 {
            bail!("layer {v} in `{spec}` is outside 0..{n_layers}");
        }
        Ok(i as usize)
    };
    let mut out = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        // a range's dash is the first '-' that is not a leading sign
        let split = part
            .char_indices()
            .skip(1)
            .find(|&(i, c)| c == '-' && part.as_bytes()[i - 1] != b'-')
            .map(|(i, _)| i);
        match split {
            Some(i) => {
                let (a, b) = (idx(&part[..i])?, idx(&part[i + 1..])?);
                if a > b {
                    bail!("empty layer range `{part}` in `{spec}`");
                }
                out.extend(a..=b);
            }
            None => out.push(idx(part)?),
        }
    }
    if out.is_empty() {
        bail!("no layers in `{spec}`");
    }
    Ok(out)
}

/// Glob match with `*` (any run, possibly empty); every other character is literal.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixq_format::checkpoint::expected_tensors;

    fn config() -> Gemma3Config {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/gemma-3-270m/config.json"
        ));
        match text {
            Ok(t) => Gemma3Config::from_json_str(&t, Path::new("config.json")).unwrap(),
            Err(_) => panic!("models/gemma-3-270m/config.json missing: run `make test-model`"),
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match(
            "*.mlp.gate_proj.weight",
            "model.layers.3.mlp.gate_proj.weight"
        ));
        assert!(!glob_match(
            "*.mlp.gate_proj.weight",
            "model.layers.3.mlp.up_proj.weight"
        ));
        assert!(glob_match("*norm.weight", "model.norm.weight"));
        assert!(glob_match(
            "*norm.weight",
            "model.layers.0.self_attn.q_norm.weight"
        ));
        assert!(glob_match(
            "model.layers.1*.weight",
            "model.layers.17.mlp.up_proj.weight"
        ));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*b", "ac"));
    }

    #[test]
    fn layer_ranges() {
        assert_eq!(parse_layers("0-2,5", 18).unwrap(), vec![0, 1, 2, 5]);
        assert_eq!(parse_layers("-1", 18).unwrap(), vec![17]);
        assert_eq!(parse_layers("-2--1", 18).unwrap(), vec![16, 17]);
        assert_eq!(parse_layers("16--1", 18).unwrap(), vec![16, 17]);
        assert!(parse_layers("18", 18).is_err());
        assert!(parse_layers("3-1", 18).is_err());
        assert!(parse_layers("x", 18).is_err());
    }

    #[test]
    fn optimal_is_the_seed_recipe() {
        let c = config();
        let t = expected_tensors(&c);
        let plan = Recipe::load("optimal")
            .unwrap()
            .resolve(&c, &t, &[])
            .unwrap();
        let of = |n: &str| plan.iter().find(|p| p.name == n).unwrap();
        assert_eq!(of("model.embed_tokens.weight").qtype, QType::I8Asym);
        assert_eq!(of("model.embed_tokens.weight").method, Method::Rtn);
        assert_eq!(
            of("model.layers.0.self_attn.q_proj.weight").qtype,
            QType::I4Grouped
        );
        assert_eq!(
            of("model.layers.0.self_attn.o_proj.weight").qtype,
            QType::I4PerChannel
        );
        let g = of("model.layers.5.mlp.gate_proj.weight");
        assert_eq!(g.qtype, QType::I2Structured);
        assert_eq!(g.method, Method::Gptq);
        assert!(matches!(
            g.transform,
            Transform::BlockHadamard { block: 128, .. }
        ));
        assert_eq!(
            of("model.layers.5.mlp.down_proj.weight").qtype,
            QType::I4Grouped
        );
        assert_eq!(
            of("model.layers.5.input_layernorm.weight").qtype,
            QType::F32
        );
        assert_eq!(of("model.norm.weight").qtype, QType::F32);
        // tied lm_head: not a tensor of its own
        assert!(plan.iter().all(|p| p.name != "lm_head.weight"));
        let int8 = Recipe::load("int8").unwrap().resolve(&c, &t, &[]).unwrap();
        assert!(int8
            .iter()
            .all(|p| matches!(p.qtype, QType::I8Asym | QType::F32)));
        // int4: groups of 16 on gate/up, 32 on the other linears, GPTQ by default
        let int4 = Recipe::load("int4").unwrap().resolve(&c, &t, &[]).unwrap();
        let linears: Vec<_> = int4
            .iter()
            .filter(|p| p.name.ends_with("_proj.weight"))
            .collect();
        assert_eq!(linears.len(), 7 * c.num_hidden_layers);
        for p in linears {
            let ffn_in = p.name.ends_with("gate_proj.weight") || p.name.ends_with("up_proj.weight");
            let q = if ffn_in {
                QType::I4Grouped16
            } else {
                QType::I4Grouped32
            };
            assert_eq!((p.qtype, p.method), (q, Method::Gptq), "{}", p.name);
        }
        // compact: the tied embedding too, fitted by GPTQ as the lm_head (src/head.rs)
        let compact = Recipe::load("compact")
            .unwrap()
            .resolve(&c, &t, &[])
            .unwrap();
        let emb = compact
            .iter()
            .find(|p| p.name == "model.embed_tokens.weight")
            .unwrap();
        assert_eq!((emb.qtype, emb.method), (QType::I4Grouped32, Method::Gptq));
        assert!(compact
            .iter()
            .filter(|p| p.name.ends_with("norm.weight"))
            .all(|p| p.qtype == QType::F32));
    }

    #[test]
    fn toml_rules_override_by_layer() {
        let c = config();
        let t = expected_tensors(&c);
        let r = Recipe::from_toml(
            r#"
            base = "optimal"
            [[rule]]
            tensors = "*.mlp.gate_proj.weight"
            layers = "0,-1"
            type = "i4_grouped"
            [[rule]]
            tensors = "*.self_attn.q_proj.weight"
            method = "search"
            "#,
            "edges",
        )
        .unwrap();
        assert_eq!(r.name, "edges");
        let plan = r.resolve(&c, &t, &[]).unwrap();
        let of = |n: &str| plan.iter().find(|p| p.name == n).unwrap();
        let g0 = of("model.layers.0.mlp.gate_proj.weight");
        assert_eq!(
            (g0.qtype, g0.transform),
            (QType::I4Grouped, Transform::None)
        );
        assert_eq!(
            of("model.layers.17.mlp.gate_proj.weight").qtype,
            QType::I4Grouped
        );
        assert_eq!(
            of("model.layers.1.mlp.gate_proj.weight").qtype,
            QType::I2Structured
        );
        assert_eq!(
            of("model.layers.1.self_attn.q_proj.weight").method,
            Method::Search
        );
    }

    #[test]
    fn equalize_reaches_norm_fed_linears_only() {
        let c = config();
        let t = expected_tensors(&c);
        let r = Recipe::from_toml(
            "base = \"int4\"\n[[rule]]\ntensors = \"*\"\nequalize = true",
            "eq",
        )
        .unwrap();
        let plan = r.resolve(&c, &t, &[]).unwrap();
        let of = |n: &str| plan.iter().find(|p| p.name == n).unwrap().equalize;
        for n in ["q_proj", "k_proj", "v_proj"] {
            assert!(of(&format!("model.layers.3.self_attn.{n}.weight")));
        }
        assert!(of("model.layers.0.mlp.gate_proj.weight"));
        assert!(of("model.layers.0.mlp.up_proj.weight"));
        assert!(!of("model.layers.0.self_attn.o_proj.weight"));
        assert!(!of("model.layers.0.mlp.down_proj.weight"));
        assert!(!of("model.layers.0.input_layernorm.weight"));
        assert!(!of("model.embed_tokens.weight"));
    }

    #[test]
    fn bad_recipes_say_what_is_valid() {
        let e = Recipe::load("int3").unwrap_err().to_string();
        assert!(e.contains("optimal, int8, int4, compact"), "{e}");
        let e = format!(
            "{:#}",
            Recipe::from_toml("[[rule]]\ntensors='*'\ntype='i3'", "x").unwrap_err()
        );
        assert!(e.contains("i4_grouped"), "{e}");
        assert!(Recipe::from_toml("[[rule]]\ntensors='*'\nbogus=1", "x").is_err());
        let e = Recipe::from_toml("[[rule]]\ntensors='*'\ntype='i8_sym'", "x")
            .unwrap()
            .resolve(&config(), &expected_tensors(&config()), &[]);
        assert!(e.is_ok());
        let e = Recipe::from_toml("[[rule]]\ntensors='*proj*'\ntype='i8_sym'", "x")
            .unwrap()
            .resolve(&config(), &expected_tensors(&config()), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no type"), "{e}");
    }
}
