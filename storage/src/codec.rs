//! The one binary encoding of the crate: a format-version byte followed by
//! bincode (serde) with [`BINCODE_CONFIG`].
//!
//! Every value this crate writes to sled or into a snapshot header, and every
//! Raft log entry, goes through [`encode`]/[`encode_into`] and comes back
//! through [`decode`]. The node crate reuses the same two functions for the
//! payload of its wire frames, so there is exactly one configuration (and one
//! size limit) in the whole program.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest encoded payload (without the version byte) that is accepted, in
/// bytes. Decoding never allocates more than this for one value.
pub const BINCODE_LIMIT: usize = 64 * 1024 * 1024;

/// The single bincode configuration used for every encode and decode.
pub const BINCODE_CONFIG: Configuration<LittleEndian, Varint, Limit<BINCODE_LIMIT>> =
    bincode::config::standard().with_limit::<BINCODE_LIMIT>();

/// Version byte written in front of every encoded value. A reader that meets
/// another value refuses it instead of guessing; a later format adds a new
/// version and keeps decoding this one.
pub const FORMAT_VERSION: u8 = 1;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The input was empty: not even a version byte.
    #[error("empty input")]
    Empty,
    /// The version byte is not one this build understands.
    #[error("unknown format version {0}")]
    UnknownVersion(u8),
    /// The value is larger than [`BINCODE_LIMIT`].
    #[error("value of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Encoded length (or the length seen so far).
        len: usize,
        /// The limit that was exceeded.
        limit: usize,
    },
    /// Bytes were left over after the value: the input is not one value.
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    /// bincode refused the payload (truncated, malformed, over the limit).
    #[error("malformed value: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// bincode could not encode the value (e.g. a serde type that needs
    /// self-describing formats).
    #[error("cannot encode value: {0}")]
    Encode(#[from] bincode::error::EncodeError),
}

/// Encodes `value` as `[FORMAT_VERSION] ++ bincode(value)`.
///
/// # Errors
/// [`CodecError::TooLarge`] when the payload exceeds [`BINCODE_LIMIT`],
/// [`CodecError::Encode`] when serde/bincode refuse the value.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut buf = Vec::with_capacity(64);
    encode_into(&mut buf, value)?;
    Ok(buf)
}

/// Appends `[FORMAT_VERSION] ++ bincode(value)` to `buf`, so hot paths can
/// reuse one buffer instead of allocating per value. On error `buf` is left
/// as it was.
///
/// # Errors
/// As [`encode`].
pub fn encode_into<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) -> Result<(), CodecError> {
    let start = buf.len();
    buf.push(FORMAT_VERSION);
    match bincode::serde::encode_into_std_write(value, buf, BINCODE_CONFIG) {
        Ok(len) if len <= BINCODE_LIMIT => Ok(()),
        Ok(len) => {
            buf.truncate(start);
            Err(CodecError::TooLarge {
                len,
                limit: BINCODE_LIMIT,
            })
        }
        Err(e) => {
            buf.truncate(start);
            Err(e.into())
        }
    }
}

/// Decodes one value written by [`encode`]. The whole input must be that one
/// value.
///
/// # Errors
/// [`CodecError::Empty`], [`CodecError::UnknownVersion`],
/// [`CodecError::TooLarge`] (checked before any decoding),
/// [`CodecError::Decode`] for malformed bytes, and
/// [`CodecError::TrailingBytes`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, payload) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    if payload.len() > BINCODE_LIMIT {
        return Err(CodecError::TooLarge {
            len: payload.len(),
            limit: BINCODE_LIMIT,
        });
    }
    let (value, used) = bincode::serde::decode_from_slice(payload, BINCODE_CONFIG)?;
    if used != payload.len() {
        return Err(CodecError::TrailingBytes(payload.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        a: u64,
        b: String,
        c: Vec<u8>,
    }

    #[test]
    fn round_trip() {
        let v = Sample {
            a: 7,
            b: "x".into(),
            c: vec![1, 2, 3],
        };
        let bytes = encode(&v).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<Sample>(&bytes).unwrap(), v);

        let mut buf = vec![9, 9];
        encode_into(&mut buf, &v).unwrap();
        assert_eq!(&buf[2..], &bytes[..]);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(decode::<Sample>(&[]), Err(CodecError::Empty)));
        assert!(matches!(
            decode::<Sample>(&[42, 1, 2]),
            Err(CodecError::UnknownVersion(42))
        ));
        assert!(matches!(
            decode::<Sample>(&[FORMAT_VERSION, 0xff, 0xff]),
            Err(CodecError::Decode(_))
        ));
        let mut bytes = encode(&5u64).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<u64>(&bytes),
            Err(CodecError::TrailingBytes(1))
        ));
    }

    #[test]
    fn oversized_is_refused() {
        // A length prefix that claims 1 GiB of bytes: refused by the limit
        // before anything is allocated.
        let mut bytes = vec![FORMAT_VERSION];
        bytes.push(0xfc); // varint: u32 follows
        bytes.extend_from_slice(&(1u32 << 30).to_le_bytes());
        bytes.extend_from_slice(&[0u8; 16]);
        assert!(matches!(
            decode::<Vec<u8>>(&bytes),
            Err(CodecError::Decode(_))
        ));

        // An input longer than the limit is refused without decoding.
        let big = vec![0u8; BINCODE_LIMIT + 2];
        assert!(matches!(
            decode::<Vec<u8>>(&big[..]).map(|_| ()),
            Err(CodecError::UnknownVersion(0))
        ));
        let mut big = big;
        big[0] = FORMAT_VERSION;
        assert!(matches!(
            decode::<Vec<u8>>(&big),
            Err(CodecError::TooLarge { .. })
        ));

        // Encoding a value over the limit is refused too.
        let huge = "a".repeat(BINCODE_LIMIT + 1);
        let mut buf = vec![1];
        assert!(matches!(
            encode_into(&mut buf, &huge),
            Err(CodecError::TooLarge { .. })
        ));
        assert_eq!(buf, vec![1]);
    }
}
