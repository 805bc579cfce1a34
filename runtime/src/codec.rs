//! The one binary codec of everything that crosses a process boundary:
//! control frames ([`crate::protocol`]), handshake frames
//! ([`crate::transport::tcp`]) and kernel parameters ([`crate::Task::param`]).
//!
//! It is [postcard](https://docs.rs/postcard) (serde, varint integers,
//! no field names), kept behind this module: callers see bytes and a
//! [`CodecError`], never the codec's own types. Every encoding and decoding
//! takes a limit in bytes; a decoder refuses input over it before reading
//! any of it, and refuses bytes left over after the value (a frame means
//! exactly one value). Sequence lengths read from the input never size an
//! allocation beyond what the input can hold: serde preallocates at most
//! 1 MiB per sequence, and every element needs at least one byte.
//!
//! ```
//! use tessera_runtime::codec::{decode, encode};
//! let bytes = encode(&(7u32, "x".to_string()), 64).unwrap();
//! assert_eq!(decode::<(u32, String)>(&bytes, 64).unwrap(), (7, "x".to_string()));
//! assert!(decode::<(u32, String)>(&bytes, 2).is_err());
//! ```

use std::cell::RefCell;
use std::fmt::Display;

use serde::{Deserialize, Serialize};

thread_local! {
    /// Why a `Deserialize` impl of this crate refused its input (the codec
    /// keeps no text of its own for such errors).
    static REFUSED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The error a `Deserialize` impl returns when it refuses what it read
/// (a block header that disagrees with its bytes): [`decode`] reports
/// `reason` as the cause.
pub(crate) fn refuse<E: serde::de::Error>(reason: impl Display) -> E {
    let reason = reason.to_string();
    let e = E::custom(&reason);
    REFUSED.with(|r| *r.borrow_mut() = Some(reason));
    e
}

/// Why bytes could not be encoded or decoded. Its text says what and why;
/// the codec behind it is not part of the API.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{0}")]
pub struct CodecError(String);

impl CodecError {
    pub(crate) fn new(reason: impl Into<String>) -> CodecError {
        CodecError(reason.into())
    }
}

/// Encodes `value`, refusing an encoding longer than `limit` bytes.
pub fn encode<T: Serialize + ?Sized>(value: &T, limit: u64) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(value, &mut out, limit)?;
    Ok(out)
}

/// Appends the encoding of `value` to `out`, refusing one longer than
/// `limit` bytes (`out` is left as it was then).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>, limit: u64) -> Result<(), CodecError> {
    let start = out.len();
    let taken = std::mem::take(out);
    *out = postcard::to_extend(value, taken).map_err(|e| CodecError(e.to_string()))?;
    let len = (out.len() - start) as u64;
    if len > limit {
        out.truncate(start);
        return Err(too_long(len, limit));
    }
    Ok(())
}

/// Decodes one value that fills `bytes` exactly, refusing input longer than
/// `limit` bytes before reading it.
pub fn decode<'de, T: Deserialize<'de>>(bytes: &'de [u8], limit: u64) -> Result<T, CodecError> {
    if bytes.len() as u64 > limit {
        return Err(too_long(bytes.len() as u64, limit));
    }
    REFUSED.with(|r| r.borrow_mut().take());
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| match e {
        postcard::Error::SerdeDeCustom => CodecError(REFUSED.with(|r| r.borrow_mut().take()).unwrap_or(e.to_string())),
        e => CodecError(e.to_string()),
    })?;
    if !rest.is_empty() {
        return Err(CodecError(format!("{} bytes left over after the value", rest.len())));
    }
    Ok(value)
}

fn too_long(len: u64, limit: u64) -> CodecError {
    CodecError(format!("{len} bytes exceed the limit of {limit}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_both_ways_and_leftovers_are_refused() {
        let v: Vec<u64> = (0..100).collect();
        let bytes = encode(&v, 1000).unwrap();
        assert_eq!(decode::<Vec<u64>>(&bytes, 1000).unwrap(), v);
        let err = encode(&v, 10).unwrap_err().to_string();
        assert!(err.contains("exceed the limit of 10"), "{err}");
        assert!(decode::<Vec<u64>>(&bytes, 10).unwrap_err().to_string().contains("limit of 10"));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<Vec<u64>>(&longer, 1000).unwrap_err().to_string().contains("1 bytes left over"));
        // Appending keeps what was there, also when refused.
        let mut out = vec![9u8];
        encode_into(&5u32, &mut out, 8).unwrap();
        assert_eq!(out, [9, 5]);
        assert!(encode_into(&v, &mut out, 8).is_err());
        assert_eq!(out, [9, 5]);
    }

    #[test]
    fn a_length_prefix_larger_than_the_input_allocates_nothing_big() {
        // A varint of 2^56 elements with no elements after it.
        let hostile = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
        assert!(decode::<Vec<u64>>(&hostile, 64).is_err());
        assert!(decode::<String>(&hostile, 64).is_err());
    }
}
