//! The two service-manager protocols a boot server needs, without libsystemd:
//!
//! * socket activation (`sd_listen_fds(3)`): when `LISTEN_PID` is this process, the listening
//!   sockets are inherited as fds 3, 4, ... (`LISTEN_FDS` of them);
//! * readiness notification (`sd_notify(3)`): `READY=1`, `RELOADING=1`, `STOPPING=1` and
//!   `STATUS=...` datagrams to the unix socket named by `NOTIFY_SOCKET` (a path, or an abstract
//!   name written with a leading `@`).
//!
//! Taking ownership of an inherited descriptor is the only `unsafe` operation in this crate, so
//! it lives alone here, behind checks that the descriptor is open and is a socket.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{SocketAddr, UnixDatagram};

use anyhow::{bail, Context, Result};

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// What `LISTEN_PID`/`LISTEN_FDS` say: `None` when they are absent or meant for another process
/// (e.g. inherited by accident from a parent that was itself activated).
fn listen_fds_count(pid: Option<&str>, fds: Option<&str>, own_pid: u32) -> Result<Option<u32>> {
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(own_pid) {
        return Ok(None);
    }
    let n: u32 = fds
        .trim()
        .parse()
        .with_context(|| format!("LISTEN_FDS={fds:?} is not a number"))?;
    if n > 1024 {
        bail!("LISTEN_FDS={n} is not plausible");
    }
    Ok(Some(n))
}

/// The listening sockets passed by a service manager, or `None` when this process was not
/// socket-activated. Each descriptor is checked to be an open socket before it is taken.
pub fn listen_fds() -> Result<Option<Vec<OwnedFd>>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let Some(n) = listen_fds_count(pid.as_deref(), fds.as_deref(), std::process::id())? else {
        return Ok(None);
    };
    if n == 0 {
        bail!("socket activation passed no sockets (LISTEN_FDS=0)");
    }
    let mut taken = Vec::new();
    for i in 0..n {
        let fd = LISTEN_FDS_START + i as RawFd;
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .with_context(|| format!("inherited descriptor {fd} (LISTEN_FDS={n}) is not open"))?;
        if !link.to_string_lossy().starts_with("socket:") {
            bail!(
                "inherited descriptor {fd} (LISTEN_FDS={n}) is {}, not a socket",
                link.display()
            );
        }
        // SAFETY: the service manager handed descriptors 3..3+LISTEN_FDS to this very process
        // (LISTEN_PID matched) for it to own; the check above shows each is open and a socket,
        // and nothing else in this process has taken or will take them (this function runs
        // once, before any thread opens files that could reuse these numbers).
        taken.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(Some(taken))
}

/// Parses `NOTIFY_SOCKET`: a filesystem path or, with a leading `@`, an abstract name.
fn notify_addr(text: &str) -> io::Result<SocketAddr> {
    if let Some(name) = text.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else if text.starts_with('/') {
        SocketAddr::from_pathname(text)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET={text:?} is neither a path nor an @abstract name"),
        ))
    }
}

/// Sends `sd_notify` messages; does nothing when no service manager asked for them.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr, String)>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; a malformed value is reported once on stderr and then ignored.
    pub fn from_env() -> Notifier {
        let Some(text) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { target: None };
        };
        let text = text.to_string_lossy().into_owned();
        let target = notify_addr(&text).and_then(|addr| Ok((UnixDatagram::unbound()?, addr)));
        match target {
            Ok((sock, addr)) => Notifier {
                target: Some((sock, addr, text)),
            },
            Err(e) => {
                eprintln!("mkmodule: warning: cannot notify the service manager: {e}");
                Notifier { target: None }
            }
        }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines); failures are reported, not fatal.
    pub fn notify(&self, state: &str) {
        if let Some((sock, addr, text)) = &self.target {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                eprintln!("mkmodule: warning: notifying the service manager at {text}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_pid_must_name_this_process() {
        assert_eq!(listen_fds_count(None, Some("1"), 7).unwrap(), None);
        assert_eq!(listen_fds_count(Some("7"), None, 7).unwrap(), None);
        assert_eq!(listen_fds_count(Some("8"), Some("1"), 7).unwrap(), None);
        assert_eq!(listen_fds_count(Some("7"), Some("2"), 7).unwrap(), Some(2));
        assert!(listen_fds_count(Some("7"), Some("x"), 7).is_err());
        assert!(listen_fds_count(Some("7"), Some("100000"), 7).is_err());
    }

    #[test]
    fn notifies_path_and_abstract_sockets() {
        use std::os::linux::net::SocketAddrExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                notify_addr(path.to_str().unwrap()).unwrap(),
                String::new(),
            )),
        };
        n.notify("READY=1\nSTATUS=serving");
        let mut buf = [0u8; 64];
        let len = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=serving");

        let name = format!("mkmodule-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                notify_addr(&format!("@{name}")).unwrap(),
                String::new(),
            )),
        };
        n.notify("STOPPING=1");
        let len = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
        assert!(notify_addr("relative").is_err());
    }
}
