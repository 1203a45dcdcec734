//! What a manifest must pass before it is converted, beyond the checks the conversion shares with
//! the Kubernetes source: decoding as the API server's strict field validation does (a field the
//! API does not define is an error, a value of the wrong type names its field), and policies
//! that would be read other than as their author meant. The Kubernetes source keeps reading
//! whatever the API server stored.
//!
//! The k8s-openapi types ignore keys they do not define; decoding through them while recording
//! every ignored key gives exactly the fields the API does not define, whatever their value.

use std::net::IpAddr;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use super::convert::{FieldError, Invalid};
use crate::policy::state::Prefix;

/// Why a document does not decode into its kind's type.
#[derive(Debug)]
pub enum DecodeError {
    /// Fields the API does not define, by path.
    Unknown { fields: Vec<String> },
    /// A value that does not fit its field's type.
    Type {
        field: String,
        source: serde_json::Error,
    },
}

/// Decodes `value` into `A`, refusing fields that `A` does not define.
pub fn decode<A: DeserializeOwned>(value: serde_json::Value) -> Result<A, DecodeError> {
    let mut unknown = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(ignored_path(&path));
    let decoded: Result<A, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut record));
    match decoded {
        Err(error) => Err(DecodeError::Type {
            field: error_path(error.path()),
            source: error.into_inner(),
        }),
        Ok(_) if !unknown.is_empty() => Err(DecodeError::Unknown { fields: unknown }),
        Ok(decoded) => Ok(decoded),
    }
}

/// Appends one key: `.key` for plain names, `[key]` for keys that would read as more than one
/// step (`metadata.labels[app.kubernetes.io/name]`), as the API server writes map keys.
fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !plain {
        path.push_str(&format!("[{key}]"));
        return;
    }
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

fn error_path(path: &serde_path_to_error::Path) -> String {
    let mut text = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => text.push_str(&format!("[{index}]")),
            Segment::Map { key } => push_key(&mut text, key),
            Segment::Enum { variant } => push_key(&mut text, variant),
            Segment::Unknown => push_key(&mut text, "?"),
        }
    }
    text
}

fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => {
            let mut text = ignored_path(parent);
            push_key(&mut text, key);
            text
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// A NetworkPolicy that does not say what it means: one without `spec` (which the conversion
/// would read as selecting every pod of its namespace), or an `ipBlock` CIDR with host bits
/// set (`10.244.1.7/8`: the network or the one address? The conversion would silently take the
/// network).
pub fn check_policy(
    policy: &k8s_openapi::api::networking::v1::NetworkPolicy,
) -> Result<(), Invalid> {
    let Some(spec) = &policy.spec else {
        return Err(Invalid {
            field: "spec".to_owned(),
            error: FieldError::Missing,
        });
    };
    let rules = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, rule)| (format!("spec.ingress[{i}].from"), rule.from.as_deref()))
        .chain(
            spec.egress
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, rule)| (format!("spec.egress[{i}].to"), rule.to.as_deref())),
        );
    for (field, peers) in rules {
        for (p, peer) in peers.unwrap_or_default().iter().enumerate() {
            let Some(block) = &peer.ip_block else {
                continue;
            };
            let field = format!("{field}[{p}].ipBlock");
            check_cidr(&block.cidr, format!("{field}.cidr"))?;
            for (e, except) in block.except.iter().flatten().enumerate() {
                check_cidr(except, format!("{field}.except[{e}]"))?;
            }
        }
    }
    Ok(())
}

/// Refuses a CIDR whose address has bits set past its prefix length. Text that is not a CIDR
/// at all is left to the conversion, which names what is wrong with it.
fn check_cidr(text: &str, field: String) -> Result<(), Invalid> {
    let Ok(prefix) = text.parse::<Prefix>() else {
        return Ok(());
    };
    let Some(written) = text
        .split_once('/')
        .and_then(|(addr, _)| addr.parse::<IpAddr>().ok())
    else {
        return Ok(());
    };
    if written == prefix.addr {
        return Ok(());
    }
    Err(Invalid {
        field,
        error: FieldError::HostBits {
            address: written,
            len: prefix.len,
        },
    })
}
