//! Length-prefixed frames for peer traffic.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of
//! payload. The payload is encoded with the storage crate's single bincode
//! configuration (version byte + size-limited bincode), so there is exactly
//! one decoder for untrusted bytes in the whole daemon.
//!
//! The length is checked against [`MAX_FRAME`] *before* any buffer is
//! allocated: a peer that announces a huge frame costs us four bytes of
//! reading, not an allocation. Below the limit, [`read_frame`]'s buffer
//! grows with the bytes that arrive, so announcing 32 MiB and sending less
//! does not cost 32 MiB either.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest payload a frame may carry (32 MiB). Append batches are bounded by
/// `max_payload_entries` and the API's value size limit so that they stay
/// well below it; snapshot chunks are 1 MiB.
pub const MAX_FRAME: usize = 32 * 1024 * 1024;

/// Payload bytes [`read_frame`] allocates before any of them has arrived;
/// a larger frame's buffer doubles as it fills. Heartbeats and most append
/// batches fit in it.
const FIRST_READ: usize = 64 * 1024;

/// What can go wrong while reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a frame larger than [`MAX_FRAME`].
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload did not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The connection ended cleanly between frames.
    #[error("connection closed")]
    Closed,
    /// Transport error (including a connection cut inside a frame).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Outcome of trying to decode a frame from a byte buffer.
#[derive(Debug, PartialEq)]
pub enum Decoded<T> {
    /// A whole frame was decoded; `used` bytes of the buffer were consumed.
    Frame {
        /// The decoded value.
        value: T,
        /// Bytes consumed from the buffer.
        used: usize,
    },
    /// More bytes are needed: this is the normal case for a partial read.
    Incomplete,
}

/// Encodes `value` as one frame (length prefix + payload).
///
/// # Errors
/// [`FrameError::Malformed`] if the value cannot be encoded, [`FrameError::TooLarge`]
/// if its encoding exceeds [`MAX_FRAME`].
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    let payload =
        tandem_storage::encode(value).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if payload.len() > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max: MAX_FRAME,
        });
    }
    let mut out = Vec::with_capacity(4 + payload.len());
    // Cannot truncate: checked against MAX_FRAME (< u32::MAX) just above.
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decodes one frame from the front of `buf`, if it holds a whole one.
///
/// # Errors
/// [`FrameError::TooLarge`] for an announced length over the limit (checked
/// before looking at the payload), [`FrameError::Malformed`] for a payload that
/// does not decode.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Decoded<T>, FrameError> {
    let Some(len_bytes) = buf.get(..4) else {
        return Ok(Decoded::Incomplete);
    };
    let mut len4 = [0u8; 4];
    len4.copy_from_slice(len_bytes);
    let len = u32::from_be_bytes(len4) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    let Some(payload) = buf.get(4..4 + len) else {
        return Ok(Decoded::Incomplete);
    };
    let value =
        tandem_storage::decode(payload).map_err(|e| FrameError::Malformed(e.to_string()))?;
    Ok(Decoded::Frame {
        value,
        used: 4 + len,
    })
}

/// Reads one frame from a stream.
///
/// # Errors
/// [`FrameError::Closed`] on a clean end of stream before a frame starts,
/// [`FrameError::TooLarge`] before allocating for an oversized frame,
/// [`FrameError::Malformed`] or [`FrameError::Io`] otherwise.
pub async fn read_frame<T, R>(reader: &mut R) -> Result<T, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut len4 = [0u8; 4];
    match reader.read_exact(&mut len4).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len4) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    let mut payload = Vec::new();
    while payload.len() < len {
        let at = payload.len();
        let step = (len - at).min(at.max(FIRST_READ));
        payload.reserve_exact(step);
        payload.resize(at + step, 0);
        reader.read_exact(&mut payload[at..]).await?;
    }
    tandem_storage::decode(&payload).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Writes one frame and flushes it.
///
/// # Errors
/// Encoding errors as in [`encode_frame`], or the transport's I/O error.
pub async fn write_frame<T, W>(writer: &mut W, value: &T) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let bytes = encode_frame(value)?;
    writer.write_all(&bytes).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Msg {
        id: u64,
        name: String,
        data: Vec<u8>,
    }

    fn sample() -> Msg {
        Msg {
            id: 7,
            name: "node-a".into(),
            data: vec![1, 2, 3],
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode_frame(&sample()).expect("encodes");
        match decode_frame::<Msg>(&bytes).expect("decodes") {
            Decoded::Frame { value, used } => {
                assert_eq!(value, sample());
                assert_eq!(used, bytes.len());
            }
            Decoded::Incomplete => panic!("a whole frame was given"),
        }
    }

    #[test]
    fn truncated_is_incomplete_not_an_error() {
        let bytes = encode_frame(&sample()).expect("encodes");
        for cut in 0..bytes.len() {
            assert_eq!(
                decode_frame::<Msg>(&bytes[..cut]).expect("a prefix is not an error"),
                Decoded::Incomplete,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn oversized_length_refused_before_allocation() {
        // 14 bytes announcing a 4 GiB frame: must be refused from the prefix alone.
        let mut bytes = u32::MAX.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 10]);
        assert!(matches!(
            decode_frame::<Msg>(&bytes),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        let payload = [0xffu8; 16];
        let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        assert!(matches!(
            decode_frame::<Msg>(&bytes),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn huge_inner_length_is_refused_by_the_bincode_limit() {
        // A small frame whose payload claims a vector of 2^60 bytes must not
        // allocate: bincode's configured limit refuses it.
        let mut payload = vec![1u8]; // version byte
        payload.push(7); // id = 7 (varint)
        payload.push(1); // name length 1
        payload.push(b'a');
        payload.push(0xff); // u64 varint marker
        payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        assert!(matches!(
            decode_frame::<Msg>(&bytes),
            Err(FrameError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn a_large_frame_reads_whole_and_a_cut_one_is_an_io_error() {
        let big = Msg {
            id: 1,
            name: "big".into(),
            data: vec![5; 3 * FIRST_READ + 17],
        };
        let bytes = encode_frame(&big).expect("encodes");
        let got: Msg = read_frame(&mut &bytes[..]).await.expect("reads");
        assert_eq!(got, big);
        // A peer that announces the whole frame and stops short.
        let cut = &bytes[..bytes.len() - 1];
        assert!(matches!(
            read_frame::<Msg, _>(&mut &cut[..]).await,
            Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof
        ));
    }

    #[tokio::test]
    async fn stream_round_trip_and_clean_close() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, &sample()).await.expect("writes");
        drop(a);
        let got: Msg = read_frame(&mut b).await.expect("reads");
        assert_eq!(got, sample());
        assert!(matches!(
            read_frame::<Msg, _>(&mut b).await,
            Err(FrameError::Closed)
        ));
    }
}
