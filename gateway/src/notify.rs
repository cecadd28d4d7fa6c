//! systemd's readiness protocol (`Type=notify`, see examples/gateway.service): once serving,
//! the gateway sends `READY=1` with its pid as `MAINPID` to `$NOTIFY_SOCKET`. After `gateway
//! upgrade` the new process does the same, so systemd follows the process that now serves
//! instead of taking the old one's exit for the service's end (the unit sets
//! `NotifyAccess=all`). A datagram on a Unix socket: hand-written here rather than a crate for
//! one `sendto`.

use std::os::unix::net::UnixDatagram;

/// Tell systemd this process serves (nothing when not started by systemd).
pub fn ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message = format!("READY=1\nMAINPID={}\n", std::process::id());
    if let Err(e) = send(&path, message.as_bytes()) {
        tracing::warn!(socket = ?path, error = %e, "cannot tell systemd the gateway is ready");
    }
}

fn send(path: &std::ffi::OsStr, message: &[u8]) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path);
    match bytes.strip_prefix(b"@") {
        // An abstract socket name (systemd's default).
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(message, &addr)?;
        }
        None => {
            socket.send_to(message, path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_reaches_a_socket_at_a_path_and_at_an_abstract_name() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        send(path.as_os_str(), b"READY=1\n").expect("send");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\n");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("gateway-notify-test-{}", std::process::id());
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        send(std::ffi::OsStr::new(&format!("@{name}")), b"MAINPID=1\n").expect("send");
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"MAINPID=1\n");
    }
}
