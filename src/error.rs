//! The one error type of pg_clip, and its mapping to SQLSTATEs.
//!
//! Every fallible function in the pure modules returns `Result<T, PgClipError>`; only the SQL layer
//! (`sql_api`) turns an error into an `ErrorReport`. Each variant has one documented SQLSTATE (see the
//! README's "Errors" table), so that applications can branch on the code. pgrx would turn a stray `Err`
//! into 22000 and a panic into XX000: both count as bugs here.

use pgrx::PgSqlErrorCode;
use std::path::PathBuf;

pub type Result<T, E = PgClipError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum PgClipError {
    /// Zero-length input (an empty bytea, or later an empty text).
    #[error("{what} is empty")]
    EmptyInput { what: &'static str },

    /// Bytes that are not an image of any format we know, or an image that is corrupt or truncated.
    #[error("could not decode image: {reason}")]
    InvalidImage { reason: String },

    /// A format we recognise but do not decode (AVIF, HEIC, JPEG XL, SVG, ...), or an unsupported variant.
    #[error("unsupported image format: {format}")]
    UnsupportedImage { format: String },

    /// The input is larger than a configured limit (bytes, or pixels as read from the header).
    #[error("{what} {actual} exceeds the limit of {limit}")]
    LimitExceeded { what: &'static str, actual: u64, limit: u64, setting: &'static str },

    /// A file named by a setting (model directory, manifest, ONNX file, runtime library) does not exist.
    #[error("{what} not found: {}", path.display())]
    FileNotFound { what: &'static str, path: PathBuf, hint: Option<String> },

    /// Model files exist but are unusable: bad manifest, checksum mismatch, a graph with the wrong
    /// inputs, outputs or dimensions, or a runtime library ONNX Runtime cannot use.
    #[error("{what}: {reason}")]
    ModelInvalid { what: String, reason: String },

    /// ONNX Runtime failed while running a model that loaded fine, or an OS call failed.
    #[error("{context}: {reason}")]
    Runtime { context: &'static str, reason: String },

    /// A setting's value cannot be used (e.g. a malformed network in pg_clip.allowed_private_networks).
    #[error("invalid value for {setting}: {reason}")]
    BadSetting { setting: &'static str, reason: String },

    /// A URL that does not parse, or whose scheme is not http or https.
    #[error("invalid URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// The fetch policy refuses the URL: an address class (loopback, private, metadata, ...), a host
    /// outside pg_clip.allowed_hosts, or a redirect to either. Checked on every hop and on the address
    /// actually connected to.
    #[error("fetching {url}: refused: {reason}")]
    FetchRefused { url: String, reason: String, hint: Option<String> },

    /// DNS, connect, TLS, a timeout, or a connection cut mid-body.
    #[error("fetching {url}: {reason}")]
    FetchNetwork { url: String, reason: String },

    /// The server answered with a status other than 2xx (after retries, for 5xx).
    #[error("fetching {url}: HTTP {status}{}", if reason.is_empty() { String::new() } else { format!(" {reason}") })]
    FetchStatus { url: String, status: u16, reason: String },

    /// The response is larger than pg_clip.max_image_bytes (declared or counted while streaming), or a
    /// redirect chain is longer than pg_clip.fetch_max_redirects.
    #[error("fetching {url}: {what}")]
    FetchLimit { url: String, what: String, setting: &'static str },

    /// A download that arrived but is not a usable image: `inner` says why (22P03, 0A000, 54000 ...).
    #[error("fetching {url}: {inner}")]
    Fetched { url: String, status: u16, inner: Box<PgClipError> },

    /// A column a trigger or the auto-embed worker was told about is not there (renamed or dropped since).
    #[error("column {column} does not exist")]
    ColumnMissing { column: String, hint: String },

    /// Something the server must have first: e.g. automatic embedding without the library preloaded.
    #[error("{what}")]
    Prerequisite { what: String, hint: String },

    /// Vectors of one model would meet vectors of another: a vector column recorded as filled by model A
    /// searched or filled with model B, or a model whose dimensions are not the column's.
    #[error("{what}")]
    ModelMismatch { what: String, hint: String },

    /// The caller may not act on this object: acting on a table as its owner needs membership in the
    /// owner's role (a superuser has it).
    #[error("{what}")]
    NotPermitted { what: String, hint: Option<String> },
}

impl PgClipError {
    pub fn invalid_image(reason: impl Into<String>) -> Self {
        PgClipError::InvalidImage { reason: reason.into() }
    }

    pub fn model_invalid(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        PgClipError::ModelInvalid { what: what.into(), reason: reason.to_string() }
    }

    pub fn runtime(context: &'static str, reason: impl std::fmt::Display) -> Self {
        PgClipError::Runtime { context, reason: reason.to_string() }
    }

    /// The SQLSTATE reported for this error; the README's "Errors" table lists the same pairs.
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            PgClipError::EmptyInput { .. } => ERRCODE_INVALID_PARAMETER_VALUE, // 22023
            PgClipError::InvalidImage { .. } => ERRCODE_INVALID_BINARY_REPRESENTATION, // 22P03
            PgClipError::UnsupportedImage { .. } => ERRCODE_FEATURE_NOT_SUPPORTED, // 0A000
            PgClipError::LimitExceeded { .. } => ERRCODE_PROGRAM_LIMIT_EXCEEDED, // 54000
            PgClipError::FileNotFound { .. } => ERRCODE_UNDEFINED_FILE,        // 58P01
            PgClipError::ModelInvalid { .. } => ERRCODE_CONFIG_FILE_ERROR,     // F0000
            PgClipError::Runtime { .. } => ERRCODE_SYSTEM_ERROR,               // 58000
            PgClipError::BadSetting { .. } => ERRCODE_INVALID_PARAMETER_VALUE, // 22023
            PgClipError::InvalidUrl { .. } => ERRCODE_INVALID_PARAMETER_VALUE, // 22023
            PgClipError::FetchRefused { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE, // 42501
            PgClipError::FetchNetwork { .. } => ERRCODE_CONNECTION_FAILURE,    // 08006
            PgClipError::FetchStatus { .. } => ERRCODE_EXTERNAL_ROUTINE_EXCEPTION, // 38000
            PgClipError::FetchLimit { .. } => ERRCODE_PROGRAM_LIMIT_EXCEEDED,  // 54000
            PgClipError::Fetched { inner, .. } => inner.sqlstate(),
            PgClipError::ColumnMissing { .. } => ERRCODE_UNDEFINED_COLUMN, // 42703
            PgClipError::Prerequisite { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, // 55000
            PgClipError::NotPermitted { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE, // 42501
            PgClipError::ModelMismatch { .. } => ERRCODE_DATATYPE_MISMATCH, // 42804
        }
    }

    /// The five-character SQLSTATE, for the try-variants that return the reason as data.
    pub fn sqlstate_code(&self) -> &'static str {
        match self {
            PgClipError::EmptyInput { .. } => "22023",
            PgClipError::InvalidImage { .. } => "22P03",
            PgClipError::UnsupportedImage { .. } => "0A000",
            PgClipError::LimitExceeded { .. } => "54000",
            PgClipError::FileNotFound { .. } => "58P01",
            PgClipError::ModelInvalid { .. } => "F0000",
            PgClipError::Runtime { .. } => "58000",
            PgClipError::BadSetting { .. } => "22023",
            PgClipError::InvalidUrl { .. } => "22023",
            PgClipError::FetchRefused { .. } => "42501",
            PgClipError::FetchNetwork { .. } => "08006",
            PgClipError::FetchStatus { .. } => "38000",
            PgClipError::FetchLimit { .. } => "54000",
            PgClipError::Fetched { inner, .. } => inner.sqlstate_code(),
            PgClipError::ColumnMissing { .. } => "42703",
            PgClipError::Prerequisite { .. } => "55000",
            PgClipError::NotPermitted { .. } => "42501",
            PgClipError::ModelMismatch { .. } => "42804",
        }
    }

    /// The HTTP status of the last response, for errors that got one.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            PgClipError::FetchStatus { status, .. } | PgClipError::Fetched { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether trying again later may succeed: network trouble, 5xx, 429 and 408. A backfill records the
    /// others (404, not an image, refused ...) as permanent and does not retry them unless asked.
    pub fn is_transient(&self) -> bool {
        match self {
            PgClipError::FetchNetwork { .. } => true,
            PgClipError::FetchStatus { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            PgClipError::Runtime { .. } => true,
            _ => false,
        }
    }

    /// A HINT for the user, where one helps: which setting to change.
    pub fn hint(&self) -> Option<String> {
        match self {
            PgClipError::LimitExceeded { setting, .. } => {
                Some(format!("Raise {setting} if inputs this large are expected."))
            }
            PgClipError::FileNotFound { hint, .. } => hint.clone(),
            PgClipError::FetchRefused { hint, .. } => hint.clone(),
            PgClipError::FetchLimit { setting, .. } => Some(format!("Raise {setting} if this is expected.")),
            PgClipError::Fetched { inner, .. } => inner.hint(),
            PgClipError::ColumnMissing { hint, .. }
            | PgClipError::Prerequisite { hint, .. }
            | PgClipError::ModelMismatch { hint, .. } => Some(hint.clone()),
            PgClipError::NotPermitted { hint, .. } => hint.clone(),
            _ => None,
        }
    }
}

/// The five characters of a SQLSTATE that pgrx holds packed as Postgres's MAKE_SQLSTATE does.
pub fn sqlstate_text(code: PgSqlErrorCode) -> String {
    let mut n = code as u32;
    let mut s = String::with_capacity(5);
    for _ in 0..5 {
        s.push((((n & 0x3f) as u8) + b'0') as char);
        n >>= 6;
    }
    s
}

impl PgClipError {
    /// Raises this error as an ERROR with its SQLSTATE, message and hint, from `function`. Never returns.
    /// The one place where pg_clip's errors become Postgres errors.
    pub fn raise(&self, function: &'static str) -> ! {
        let mut report = pgrx::pg_sys::panic::ErrorReport::new(self.sqlstate(), format!("pg_clip: {self}"), function);
        if let Some(hint) = self.hint() {
            report = report.set_hint(hint);
        }
        report.report(pgrx::PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_codes_agree_with_pgrx_codes() {
        let samples = [
            PgClipError::EmptyInput { what: "image" },
            PgClipError::invalid_image("x"),
            PgClipError::UnsupportedImage { format: "AVIF".into() },
            PgClipError::LimitExceeded { what: "image size", actual: 2, limit: 1, setting: "pg_clip.max_image_bytes" },
            PgClipError::FileNotFound { what: "model", path: "/nope".into(), hint: None },
            PgClipError::model_invalid("model", "bad"),
            PgClipError::runtime("inference", "bad"),
            PgClipError::BadSetting { setting: "pg_clip.allowed_hosts", reason: "bad".into() },
            PgClipError::InvalidUrl { url: "x".into(), reason: "bad".into() },
            PgClipError::FetchRefused { url: "x".into(), reason: "bad".into(), hint: None },
            PgClipError::FetchNetwork { url: "x".into(), reason: "bad".into() },
            PgClipError::FetchStatus { url: "x".into(), status: 404, reason: "Not Found".into() },
            PgClipError::FetchLimit { url: "x".into(), what: "big".into(), setting: "pg_clip.max_image_bytes" },
            PgClipError::Fetched { url: "x".into(), status: 200, inner: Box::new(PgClipError::invalid_image("x")) },
            PgClipError::ColumnMissing { column: "x".into(), hint: "h".into() },
            PgClipError::Prerequisite { what: "x".into(), hint: "h".into() },
            PgClipError::NotPermitted { what: "x".into(), hint: None },
            PgClipError::ModelMismatch { what: "x".into(), hint: "h".into() },
        ];
        for e in samples {
            let s = sqlstate_text(e.sqlstate());
            assert_eq!(s, e.sqlstate_code(), "{e}");
            assert_ne!(s, "XX000");
        }
    }
}
