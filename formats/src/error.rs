use std::path::PathBuf;

/// Every way reading or writing model files can fail. Variants name the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: malformed JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: config field `{field}`: {problem}")]
    Config {
        path: PathBuf,
        field: String,
        problem: String,
    },
    #[error("{path}: {problem}")]
    Checkpoint { path: PathBuf, problem: String },
    #[error("tensor `{name}`: {problem}")]
    Tensor { name: String, problem: String },
    #[error("{path}: tokenizer: {problem}")]
    Tokenizer { path: PathBuf, problem: String },
    /// A tensor the Gemma 3 text model needs is absent (after prefix canonicalisation).
    #[error("{path}: missing tensor `{name}` (needed by the Gemma 3 text model)")]
    MissingTensor { path: PathBuf, name: String },
    /// A tensor's stored shape disagrees with the one config.json implies.
    #[error("{path}: {name}: shape {found:?} but config implies {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    /// The tensor is stored in a dtype the reader does not convert.
    #[error("{path}: tensor `{name}` has dtype {dtype}; only BF16, F16 and F32 are supported")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
}

pub type Result<T> = std::result::Result<T, FormatError>;

impl FormatError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn config(path: impl Into<PathBuf>, field: &str, problem: impl Into<String>) -> Self {
        FormatError::Config {
            path: path.into(),
            field: field.to_string(),
            problem: problem.into(),
        }
    }
}
