//! Length-delimited frames: a 4-byte big-endian payload length, then the
//! payload.
//!
//! Parsing is pure ([`parse_frame`], [`encode_frame`]) so it can be tested
//! without sockets; [`FrameReader`] adds the buffered reading from a stream.
//! An incomplete frame is not an error: the parser answers `Ok(None)` and the
//! reader reads more.

use bytes::{Buf, Bytes, BytesMut};
use std::ops::Range;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Size of the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

/// How much the reader asks the socket for when it does not yet know the
/// length of the next frame. Small enough to keep idle connections cheap,
/// large enough that a burst of small frames needs few reads.
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// A frame that must not be accepted. The connection carrying it is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is above the limit.
    #[error("frame of {payload_bytes} bytes exceeds the limit of {frame_bytes_max} bytes")]
    TooLarge {
        /// The announced payload length.
        payload_bytes: u64,
        /// The limit in force.
        frame_bytes_max: usize,
    },
    /// The length prefix is zero; no message encodes to nothing.
    #[error("zero-length frame")]
    Empty,
}

/// Looks for one complete frame at the start of `buffer`.
///
/// Returns `Ok(None)` when more bytes are needed, and otherwise the range of
/// the payload inside `buffer`; the frame ends where the range ends. A bad
/// length is reported as soon as the 4 header bytes are there, without
/// waiting for a payload that would never be accepted.
pub fn parse_frame(
    buffer: &[u8],
    frame_bytes_max: usize,
) -> Result<Option<Range<usize>>, FrameError> {
    let Some(header) = buffer.first_chunk::<FRAME_HEADER_BYTES>() else {
        return Ok(None);
    };
    let payload_bytes = u32::from_be_bytes(*header);
    if payload_bytes == 0 {
        return Err(FrameError::Empty);
    }
    // A u32 always fits in a u64; comparing there avoids any truncation.
    if u64::from(payload_bytes) > frame_bytes_max as u64 {
        return Err(FrameError::TooLarge {
            payload_bytes: u64::from(payload_bytes),
            frame_bytes_max,
        });
    }
    let frame_end = FRAME_HEADER_BYTES + payload_bytes as usize;
    if buffer.len() < frame_end {
        return Ok(None);
    }
    Ok(Some(FRAME_HEADER_BYTES..frame_end))
}

/// Appends one frame carrying `payload` to `out`.
///
/// Refuses what [`parse_frame`] would refuse on the other side, so a node
/// never sends a frame that its peer must reject.
pub fn encode_frame(
    payload: &[u8],
    out: &mut Vec<u8>,
    frame_bytes_max: usize,
) -> Result<(), FrameError> {
    if payload.is_empty() {
        return Err(FrameError::Empty);
    }
    let too_large = || FrameError::TooLarge {
        payload_bytes: payload.len() as u64,
        frame_bytes_max,
    };
    if payload.len() > frame_bytes_max {
        return Err(too_large());
    }
    let length = u32::try_from(payload.len()).map_err(|_| too_large())?;
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Why [`FrameReader::read_frame`] could not return a frame.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    /// The peer sent a frame that must not be accepted.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The connection closed in the middle of a frame.
    #[error("connection closed inside a frame ({buffered_bytes} bytes buffered)")]
    ClosedMidFrame {
        /// Bytes of the unfinished frame.
        buffered_bytes: usize,
    },
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads frames from a stream through a buffer. The buffer never grows past
/// one frame plus one read chunk.
#[derive(Debug)]
pub struct FrameReader<R> {
    /// The stream frames come from.
    stream: R,
    /// Bytes read but not yet returned as frames.
    buffer: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader with an empty buffer.
    pub fn new(stream: R) -> FrameReader<R> {
        FrameReader {
            stream,
            buffer: BytesMut::with_capacity(READ_CHUNK_BYTES),
        }
    }

    /// The stream, for writing on it (the handshake replies on the socket
    /// it reads from).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.stream
    }

    /// The next frame's payload, or `None` when the peer closed the
    /// connection cleanly between frames.
    ///
    /// Cancel safe: all progress lives in the buffer, so dropping the future
    /// loses no bytes.
    pub async fn read_frame(
        &mut self,
        frame_bytes_max: usize,
    ) -> Result<Option<Bytes>, ReadFrameError> {
        loop {
            if let Some(payload) = parse_frame(&self.buffer, frame_bytes_max)? {
                let frame_end = payload.end;
                let mut frame = self.buffer.split_to(frame_end);
                frame.advance(FRAME_HEADER_BYTES);
                return Ok(Some(frame.freeze()));
            }
            self.reserve_for_next_frame();
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                if self.buffer.is_empty() {
                    return Ok(None);
                }
                return Err(ReadFrameError::ClosedMidFrame {
                    buffered_bytes: self.buffer.len(),
                });
            }
        }
    }

    /// Makes room for the rest of the current frame when its length is
    /// known (it has passed `parse_frame`'s limit check), else for one chunk.
    fn reserve_for_next_frame(&mut self) {
        let wanted_bytes = match self.buffer.first_chunk::<FRAME_HEADER_BYTES>() {
            Some(header) => FRAME_HEADER_BYTES + u32::from_be_bytes(*header) as usize,
            None => READ_CHUNK_BYTES,
        };
        let missing_bytes = wanted_bytes.saturating_sub(self.buffer.len());
        self.buffer.reserve(missing_bytes.max(FRAME_HEADER_BYTES));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(payload, &mut out, 1024).unwrap();
        out
    }

    #[test]
    fn incomplete_header_is_none() {
        assert_eq!(parse_frame(&[], 1024), Ok(None));
        assert_eq!(parse_frame(&[0, 0, 0], 1024), Ok(None));
    }

    #[test]
    fn incomplete_payload_is_none() {
        let bytes = frame(b"hello");
        assert_eq!(parse_frame(&bytes[..bytes.len() - 1], 1024), Ok(None));
    }

    #[test]
    fn exact_frame_is_parsed() {
        let bytes = frame(b"hello");
        assert_eq!(bytes.len(), FRAME_HEADER_BYTES + 5);
        let payload = parse_frame(&bytes, 1024).unwrap().unwrap();
        assert_eq!(&bytes[payload], b"hello");
    }

    #[test]
    fn two_frames_in_one_buffer_parse_one_after_the_other() {
        let mut bytes = frame(b"first");
        bytes.extend(frame(b"second!"));
        let first = parse_frame(&bytes, 1024).unwrap().unwrap();
        assert_eq!(&bytes[first.clone()], b"first");
        let rest = &bytes[first.end..];
        let second = parse_frame(rest, 1024).unwrap().unwrap();
        assert_eq!(&rest[second.clone()], b"second!");
        assert_eq!(second.end, rest.len());
    }

    #[test]
    fn oversize_is_an_error_before_the_payload_arrives() {
        let header = 1025u32.to_be_bytes();
        assert_eq!(
            parse_frame(&header, 1024),
            Err(FrameError::TooLarge {
                payload_bytes: 1025,
                frame_bytes_max: 1024
            })
        );
        let largest = 1024u32.to_be_bytes();
        assert_eq!(parse_frame(&largest, 1024), Ok(None));
        assert!(parse_frame(&u32::MAX.to_be_bytes(), usize::MAX).is_ok());
    }

    #[test]
    fn zero_length_is_an_error() {
        assert_eq!(parse_frame(&[0, 0, 0, 0], 1024), Err(FrameError::Empty));
    }

    #[test]
    fn encode_refuses_what_parse_refuses() {
        let mut out = Vec::new();
        assert_eq!(encode_frame(&[], &mut out, 4), Err(FrameError::Empty));
        assert!(encode_frame(&[1; 5], &mut out, 4).is_err());
        assert!(out.is_empty(), "a refused frame leaves no bytes behind");
    }

    #[tokio::test]
    async fn reader_splits_a_stream_into_frames_and_sees_clean_close() {
        let mut bytes = frame(b"one");
        bytes.extend(frame(&[7; 300]));
        let mut reader = FrameReader::new(&bytes[..]);
        assert_eq!(&reader.read_frame(1024).await.unwrap().unwrap()[..], b"one");
        assert_eq!(reader.read_frame(1024).await.unwrap().unwrap().len(), 300);
        assert!(reader.read_frame(1024).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn reader_reports_a_close_inside_a_frame() {
        let bytes = frame(b"truncated");
        let mut reader = FrameReader::new(&bytes[..bytes.len() - 2]);
        assert!(matches!(
            reader.read_frame(1024).await,
            Err(ReadFrameError::ClosedMidFrame { .. })
        ));
    }

    #[tokio::test]
    async fn reader_rejects_oversize() {
        let bytes = frame(&[1; 100]);
        let mut reader = FrameReader::new(&bytes[..]);
        assert!(matches!(
            reader.read_frame(99).await,
            Err(ReadFrameError::Frame(FrameError::TooLarge { .. }))
        ));
    }
}
