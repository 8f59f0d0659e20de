//! The host's service manager, as `yurt fleet exec` serves it to the command it runs
//! (see `yurt_core::host`): start, stop and restart requests for the host's processes,
//! carried out by the fleet from the host's units, like `systemctl` on a machine.
//!
//! Who may call: whoever can open the socket, which is root on this machine only (in a
//! folder of mode 0700 in the host's folder), and a privileged pod that mounts its host's
//! `/` (which sees the machine's filesystem, the fleet's data folder included, and could
//! as well edit the units and kill the processes itself). Each `yurt fleet exec` has its own socket, so execs on one host
//! run side by side. Each connection carries one request line of at most
//! [`yurt_core::host::MAX_LINE`] bytes, read within a deadline; anything else is answered
//! with an error and the connection closed. Requests run one at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;
use yurt_core::host::{MAX_LINE, ServiceRequest};

use super::{Fleet, Readiness};
use crate::error::{Error, Result};
use crate::spec::HostId;

/// How long a client may take to send its request line.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// Where this process serves the service manager of `host`: a socket named after its
/// pid in the host's `run/service-managers`.
pub fn socket_path(fleet: &Fleet, host: &HostId) -> PathBuf {
    fleet
        .paths()
        .host(host)
        .run()
        .join("service-managers")
        .join(format!("{}.sock", std::process::id()))
}

/// Binds the service manager's socket at `path`, in a folder only root may enter
/// (0700), after removing the sockets of execs that are gone.
///
/// # Errors
/// I/O errors.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path
        .parent()
        .ok_or_else(|| Error::Invalid(format!("{} has no folder", path.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(dir, e))?;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let gone = entry
                .path()
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<i32>().ok())
                .is_none_or(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
            if gone {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let _ = std::fs::remove_file(path);
    tokio::net::UnixListener::bind(path).map_err(|e| Error::io(path, e))
}

/// The socket on which a supervised fleet serves `host`'s service manager
/// ([`yurt_core::host::PERSISTENT_SOCKET`] in its folder).
pub fn persistent_socket(fleet: &Fleet, host: &HostId) -> PathBuf {
    fleet
        .paths()
        .host(host)
        .root()
        .join(yurt_core::host::PERSISTENT_SOCKET)
}

/// Binds a persistent socket (mode 0600), replacing a stale one.
fn bind_persistent(path: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| Error::io(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(path, e))?;
    Ok(listener)
}

/// How often the hosts served are matched with the fleet's (added and removed hosts).
const HOSTS_RESCAN: Duration = Duration::from_secs(2);

/// Serves the service manager of every edge host of the fleet in `data_dir` on its
/// [`persistent_socket`] until `stop`, following hosts added and removed meanwhile:
/// what keeps a host's `systemctl` working for tools that run on it from a pod (the
/// conversion Job's servant). Run by whoever supervises the fleet, or on its own by
/// `yurt fleet service-manager` (which restarts nothing).
///
/// Who may call: root on this machine, and a pod that mounts its host's `/`, which
/// could as well write the host's units and kill its processes.
///
/// # Errors
/// If the fleet cannot be opened.
pub async fn serve_every_host(
    machine: &super::MachineConfig,
    data_dir: &Path,
    stop: CancellationToken,
) -> Result<()> {
    // Its own view of the fleet to find hosts, and one per host to carry out requests,
    // so a slow start on one host holds up no other.
    let mut fleet = Fleet::open(machine, data_dir)?;
    let mut served: std::collections::HashMap<HostId, (PathBuf, CancellationToken)> =
        std::collections::HashMap::new();
    let mut handles: std::collections::HashMap<HostId, Arc<tokio::sync::Mutex<Fleet>>> =
        std::collections::HashMap::new();
    loop {
        // The processes each host's handle started and that ended since (a busy handle
        // is reaped at its next request).
        for own in handles.values() {
            if let Ok(own) = own.try_lock() {
                own.reap();
            }
        }
        let hosts: Vec<(HostId, PathBuf)> = {
            let f = &mut fleet;
            match f.refresh() {
                Ok(()) => f
                    .plan()
                    .hosts()
                    .into_iter()
                    .filter(|h| matches!(h, HostId::Edge(_)))
                    .map(|h| {
                        let socket = persistent_socket(f, &h);
                        (h, socket)
                    })
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "service manager: reading the fleet");
                    served
                        .iter()
                        .map(|(h, (s, _))| (h.clone(), s.clone()))
                        .collect()
                }
            }
        };
        for (host, socket) in &hosts {
            if let Some((_, token)) = served.get(host) {
                // A host removed and added again between two scans has a new folder.
                if socket.exists() {
                    continue;
                }
                token.cancel();
            }
            let bound =
                Fleet::open(machine, data_dir).and_then(|own| Ok((own, bind_persistent(socket)?)));
            match bound {
                Ok((own, listener)) => {
                    let token = stop.child_token();
                    let own = Arc::new(tokio::sync::Mutex::new(own));
                    handles.insert(host.clone(), own.clone());
                    tokio::spawn(serve(own, host.clone(), listener, token.clone()));
                    served.insert(host.clone(), (socket.clone(), token));
                }
                Err(e) => tracing::warn!(host = %host, error = %e, "service manager: binding"),
            }
        }
        handles.retain(|host, _| hosts.iter().any(|(h, _)| h == host));
        served.retain(|host, (socket, token)| {
            let keep = hosts.iter().any(|(h, _)| h == host);
            if !keep {
                token.cancel();
                let _ = std::fs::remove_file(socket);
            }
            keep
        });
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(HOSTS_RESCAN) => {}
        }
    }
    for (socket, token) in served.values() {
        token.cancel();
        let _ = std::fs::remove_file(socket);
    }
    Ok(())
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
                let done = {
                    let mut fleet = fleet.lock().await;
                    // Processes this handle started earlier and that ended since.
                    fleet.reap();
                    carry_out(&mut fleet, host, &request).await
                };
                // A blocking start waits for readiness with no lock held: requests
                // for other hosts, and reboots, go on meanwhile.
                let done = match done {
                    Ok(Some(readiness)) => readiness.wait().await,
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                match done {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => format!("error {}", e.to_string().replace('\n', " ")),
                }
            }
        },
    };
    stream.write_all(format!("{reply}\n").as_bytes()).await?;
    stream.shutdown().await
}

/// Carries out `request`; for a blocking start, what is left to wait for once the fleet
/// is released.
async fn carry_out(
    fleet: &mut Fleet,
    host: &HostId,
    request: &ServiceRequest,
) -> Result<Option<Readiness>> {
    // Each request is carried out on the fleet as it is now (another exec, a reboot or
    // the supervisor may have changed it).
    fleet.refresh()?;
    let name = host.to_string();
    tracing::info!(host = %name, request = %request, "service manager");
    match request {
        ServiceRequest::Start(p) => fleet.begin_start(&name, p).await,
        ServiceRequest::Stop(p) => fleet.stop_process_async(&name, p).await.map(|()| None),
        ServiceRequest::Restart(p) => {
            fleet.stop_process_async(&name, p).await?;
            fleet.begin_start(&name, p).await
        }
        ServiceRequest::StartNoBlock(p) => fleet.launch_process(&name, p).await.map(|()| None),
        ServiceRequest::RestartNoBlock(p) => {
            fleet.stop_process_async(&name, p).await?;
            fleet.launch_process(&name, p).await.map(|()| None)
        }
    }
}
