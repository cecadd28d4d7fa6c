//! `gateway upgrade`: a new gateway process takes over from the running one without a request
//! lost (pingora's graceful upgrade).
//!
//! 1. The new process is started with `run --upgrade`: it builds everything, then waits on
//!    [`Settings::upgrade_sock`] for the listening sockets instead of binding its own.
//! 2. Once that socket exists, the running process gets `SIGQUIT`: it hands its listening
//!    sockets over and keeps accepting on them for 5 s beside the new one (pingora's
//!    `CLOSE_TIMEOUT`), so a connection is always accepted by one of the two.
//! 3. Its realtime clients are told to come back at once, on `SIGQUIT` ([`on_sigquit`]):
//!    WebSocket close 1001, the Engine.IO sessions closed so Socket.IO clients reconnect (new
//!    handshakes are refused with 503 here, so they land on the new process), SSE streams ended
//!    after their `retry:`. Draining them only when it stops accepting, 5 s later, would let a
//!    Socket.IO polling client's requests reach both processes in turn, the one without its
//!    session answering "Session ID unknown" each time. Then HTTP requests in flight get
//!    `grace_period_s` to finish, and it exits.
//!
//! The new process writes its pid to the pid file once it serves: that is when this command
//! reports success.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::settings::Settings;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(transparent)]
    Running(#[from] crate::reload::RequestError),
    #[error("cannot find this program's own path to start the new process: {0}")]
    Exe(std::io::Error),
    #[error("cannot start the new process ({}): {source}", .exe.display())]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("the new process exited before taking over ({0}); the running gateway is unchanged")]
    NewExited(std::process::ExitStatus),
    #[error("the new process did not get ready to take over within {0:?}; it was stopped and the running gateway is unchanged")]
    NotReady(Duration),
    #[error("sent SIGQUIT to process {0}, but the new process did not announce itself within {1:?}: see both logs")]
    NoTakeover(i32, Duration),
}

/// Drain the realtime clients when `SIGQUIT` (pingora's graceful upgrade) arrives, beside
/// pingora's own handling of it (both are registered with signal-hook's registry).
pub fn on_sigquit(drain: crate::server::Drain) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGQUIT])?;
    std::thread::Builder::new()
        .name("upgrade".to_string())
        .spawn(move || {
            if signals.forever().next().is_some() {
                tracing::info!("upgrade: the listening sockets go to the new process; realtime clients are told to reconnect there");
                drain.now();
            }
        })?;
    Ok(())
}

/// Whether this program's file is another one than the running gateway's (in `pid_file`): a
/// new version was installed since it started. Installing a binary replaces the file (a
/// running one cannot be written over), so the two differ by inode; unknown counts as no.
pub fn binary_changed(pid_file: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(pid) = crate::reload::running_pid(pid_file) else {
        return false;
    };
    let running = std::fs::metadata(format!("/proc/{pid}/exe"));
    let installed = std::env::current_exe().and_then(std::fs::metadata);
    match (running, installed) {
        (Ok(r), Ok(i)) => (r.dev(), r.ino()) != (i.dev(), i.ino()),
        _ => false,
    }
}

/// Start `exe` as the new gateway for `config` and hand it the running one's sockets; the
/// (old, new) process ids.
pub fn run(settings: &Settings, config: &Path, wait: Duration) -> Result<(i32, u32), UpgradeError> {
    let old = crate::reload::running_pid(&settings.pid_file)?;
    let exe = std::env::current_exe().map_err(UpgradeError::Exe)?;
    let sock = settings.upgrade_sock();
    // A socket left by an earlier upgrade would look like the new process being ready.
    let _ = std::fs::remove_file(&sock);
    let mut child = Command::new(&exe)
        .arg("run")
        .arg("--upgrade")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|source| UpgradeError::Spawn {
            exe: exe.clone(),
            source,
        })?;
    let deadline = Instant::now() + wait;
    while !sock.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(UpgradeError::NewExited(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(UpgradeError::NotReady(wait));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    crate::reload::signal(old, libc::SIGQUIT, &settings.pid_file)?;
    let new = child.id();
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(UpgradeError::NewExited(status));
        }
        if crate::reload::running_pid(&settings.pid_file).ok() == Some(new as i32) {
            return Ok((old, new));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(UpgradeError::NoTakeover(old, wait))
}
