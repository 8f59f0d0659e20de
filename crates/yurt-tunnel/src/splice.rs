//! One tunnelled connection carried over one HTTP/2 stream. Flow control is what keeps
//! one stalled reader from slowing every other stream of the agent: window goes back
//! to the sender only once the bytes are written on this side, so a reader that stops
//! holds at most one stream window of data in flight, and the connection's window is
//! released as the stream's is.

use std::future::poll_fn;

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The most read from the local side at once.
const CHUNK: usize = 64 * 1024;

/// Why a tunnelled connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// The local socket failed.
    #[error("local connection: {0}")]
    Io(#[from] std::io::Error),
    /// The stream was reset or the tunnel connection failed.
    #[error("tunnel stream: {0}")]
    Stream(#[from] h2::Error),
    /// The stream closed while data was still to be sent.
    #[error("tunnel stream closed by the other side")]
    Closed,
}

/// Bytes carried each way by a finished splice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    /// From the local side into the tunnel.
    pub out: u64,
    /// From the tunnel to the local side.
    pub r#in: u64,
}

/// Carries bytes both ways between a local connection (`reader`, `writer`) and a
/// tunnel stream until both directions have ended. `early` are bytes already read
/// from the local side (after a CONNECT head) to send first. End of input on either
/// side half-closes the other; an error on either resets the stream and ends both.
///
/// # Errors
/// The first error of either direction; the stream is then reset.
pub async fn splice<R, W>(
    mut reader: R,
    writer: W,
    early: Bytes,
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
) -> Result<Carried, SpliceError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let outward = async {
        let mut out = early.len() as u64;
        send_all(&mut send, early).await?;
        let mut buf = BytesMut::with_capacity(CHUNK);
        loop {
            buf.reserve(CHUNK);
            if reader.read_buf(&mut buf).await? == 0 {
                send.send_data(Bytes::new(), true)?;
                return Ok::<_, SpliceError>(out);
            }
            let data = buf.split().freeze();
            out += data.len() as u64;
            send_all(&mut send, data).await?;
        }
    };
    let inward = receive_all(&mut recv, writer);
    match tokio::try_join!(outward, inward) {
        Ok((out, r#in)) => Ok(Carried { out, r#in }),
        Err(e) => {
            send.send_reset(Reason::CANCEL);
            Err(e)
        }
    }
}

/// Sends `data` as the peer's window allows.
async fn send_all(send: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), SpliceError> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(granted) => granted?,
            None => return Err(SpliceError::Closed),
        };
        if granted == 0 {
            continue;
        }
        let chunk = data.split_to(granted.min(data.len()));
        send.send_data(chunk, false)?;
    }
    Ok(())
}

/// Writes what the stream carries to `writer`, releasing window only after each
/// write, then half-closes `writer` at the end of the stream.
async fn receive_all<W: AsyncWrite + Unpin>(
    recv: &mut RecvStream,
    mut writer: W,
) -> Result<u64, SpliceError> {
    let mut total = 0u64;
    while let Some(data) = recv.data().await {
        let data = data?;
        writer.write_all(&data).await?;
        recv.flow_control().release_capacity(data.len())?;
        total += data.len() as u64;
    }
    writer.shutdown().await?;
    Ok(total)
}
