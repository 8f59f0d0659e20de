//! The host's service manager, as `yurt fleet exec` serves it to the command it runs
//! (see `yurt_core::host`): start, stop and restart requests for the host's processes,
//! carried out by the fleet from the host's units, like `systemctl` on a machine.
//!
//! Who may call: whoever can open the socket, which is root on this machine only (mode
//! 0600, in the host's folder; a pod's mount namespace does not hold the fleet's data
//! folder). Each connection carries one request line of at most
//! [`yurt_core::host::MAX_LINE`] bytes, read within a deadline; anything else is answered
//! with an error and the connection closed. Requests run one at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;
use yurt_core::host::{MAX_LINE, ServiceRequest};

use super::Fleet;
use crate::error::{Error, Result};
use crate::spec::HostId;

/// How long a client may take to send its request line.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// Where the service manager of `host` listens.
pub fn socket_path(fleet: &Fleet, host: &HostId) -> PathBuf {
    fleet.paths().host(host).run().join("service-manager.sock")
}

/// Binds the service manager's socket for `host` (mode 0600). A socket left by a
/// process that is gone is replaced; one another process serves is refused.
///
/// # Errors
/// [`Error::Invalid`] if another `yurt fleet exec` serves the host; I/O errors.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::Invalid(format!(
                "another `yurt fleet exec` serves this host's service manager ({})",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
    }
    // Created private: no moment in which another user could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = tokio::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    listener.map_err(|e| Error::io(path, e))
}

/// Serves requests for `host` on `listener` until `stop`.
pub async fn serve(
    fleet: Arc<tokio::sync::Mutex<Fleet>>,
    host: HostId,
    listener: tokio::net::UnixListener,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "service manager: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (fleet, host) = (fleet.clone(), host.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(&fleet, &host, stream).await {
                tracing::warn!(error = %e, "service manager: a request went unanswered");
            }
        });
    }
}

async fn answer(
    fleet: &tokio::sync::Mutex<Fleet>,
    host: &HostId,
    mut stream: tokio::net::UnixStream,
) -> std::io::Result<()> {
    let mut line = Vec::new();
    let read = tokio::time::timeout(
        REQUEST_DEADLINE,
        (&mut stream)
            .take(MAX_LINE as u64 + 1)
            .read_to_end(&mut line),
    )
    .await;
    let reply = match read {
        Err(_) => "error no request within the deadline".to_owned(),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) if line.len() > MAX_LINE => "error request too long".to_owned(),
        Ok(Ok(_)) => match String::from_utf8_lossy(&line)
            .trim()
            .parse::<ServiceRequest>()
        {
            Err(why) => format!("error {why}"),
            Ok(request) => {
                let mut fleet = fleet.lock().await;
                match carry_out(&mut fleet, host, &request).await {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => format!("error {}", e.to_string().replace('\n', " ")),
                }
            }
        },
    };
    stream.write_all(format!("{reply}\n").as_bytes()).await?;
    stream.shutdown().await
}

async fn carry_out(fleet: &mut Fleet, host: &HostId, request: &ServiceRequest) -> Result<()> {
    fleet.refresh()?;
    let name = host.to_string();
    tracing::info!(host = %name, request = %request, "service manager");
    match request {
        ServiceRequest::Start(p) => fleet.start_process(&name, p).await,
        ServiceRequest::Stop(p) => fleet.stop_process(&name, p),
        ServiceRequest::Restart(p) => {
            fleet.stop_process(&name, p)?;
            fleet.start_process(&name, p).await
        }
    }
}
