//! Fixed-newstyle greeting and option haggling, up to the start of transmission.

use std::io::{self, Read, Write};
use std::time::Instant;

use crate::config::ServerConfig;
use crate::listener::Stream;
use crate::log::Level;
use crate::proto::*;
use crate::tls::{TlsCredentials, TlsMode};
use crate::tls_session::{self, Pump};
use mkmodule_blockdev::BlockDevice;

/// What option haggling agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Negotiated {
    /// Index of the selected export in the configuration.
    pub export: usize,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` is active for the selected export.
    pub block_status: bool,
    /// Transmission flags sent to the client.
    pub flags: u16,
}

/// How haggling ended without entering transmission.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The client aborted or was refused; not an error.
    Orderly(&'static str),
    /// I/O error, timeout or protocol violation.
    Failed(io::Error),
}

impl From<io::Error> for Ended {
    fn from(e: io::Error) -> Self {
        Ended::Failed(e)
    }
}

fn violation(msg: impl Into<String>) -> Ended {
    Ended::Failed(io::Error::new(io::ErrorKind::InvalidData, msg.into()))
}

/// Transmission flags for `export`, depending on whether structured replies are on.
pub(crate) fn transmission_flags(export: &dyn BlockDevice, structured: bool) -> u16 {
    let mut f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_CACHE;
    if export.can_multi_conn() {
        f |= TFLAG_CAN_MULTI_CONN;
    }
    if structured {
        f |= TFLAG_SEND_DF;
    }
    if export.is_read_only() {
        f |= TFLAG_READ_ONLY;
    } else {
        f |= TFLAG_SEND_FUA;
        if export.can_trim() {
            f |= TFLAG_SEND_TRIM;
        }
        if export.can_write_zeroes() {
            f |= TFLAG_SEND_WRITE_ZEROES;
        }
    }
    f
}

/// Preferred block size advertised: a power of two in [512, 32 MiB].
pub(crate) fn preferred_block_size(export: &dyn BlockDevice) -> u32 {
    let p = export.preferred_block_size().clamp(512, MAX_PAYLOAD);
    1 << (31 - p.leading_zeros())
}

/// Where a connection stands with TLS (fixed for its lifetime, as the protocol demands, until
/// `STARTTLS` succeeds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsState {
    /// NOTLS: no TLS configured, or the client does not speak fixed newstyle.
    Unavailable,
    /// TLS offered at the client's choice, not started.
    Offered,
    /// FORCEDTLS, not started yet.
    Required,
    /// TLS is up.
    Active,
}

impl TlsState {
    /// The state of a new connection under `cfg` whose client did (not) set fixed newstyle.
    fn initial(cfg: &ServerConfig, fixed_newstyle: bool) -> TlsState {
        match (cfg.tls_credentials(), cfg.tls_mode, fixed_newstyle) {
            (None, _, _) | (_, TlsMode::Off, _) | (Some(_), _, false) => TlsState::Unavailable,
            (Some(_), TlsMode::On, true) => TlsState::Offered,
            (Some(_), TlsMode::Require, true) => TlsState::Required,
        }
    }
}

/// Per-connection haggling state.
struct Haggle<'a> {
    stream: &'a mut Stream,
    cfg: &'a ServerConfig,
    deadline: Instant,
    peer: &'a str,
    structured: bool,
    /// BlockDevice named by the last SET_META_CONTEXT and whether base:allocation was chosen.
    meta: Option<(usize, bool)>,
    tls: TlsState,
    /// Options refused with `ERR_TLS_REQD` so far (for the closing log line).
    tls_refusals: u32,
    /// The TLS pump, once `STARTTLS` succeeded.
    pump: &'a mut Option<Pump>,
}

impl Haggle<'_> {
    /// Read exactly `buf.len()` bytes before the handshake deadline.
    ///
    /// The timeout is recomputed before every read so that a client trickling
    /// one byte at a time cannot stretch the handshake past the deadline.
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "handshake timed out");
        let mut got = 0;
        while got < buf.len() {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "client closed the connection during the handshake",
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(timed_out())
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    fn reply(&mut self, opt: u32, rtype: u32, payload: &[u8]) -> io::Result<()> {
        self.send(&option_reply(opt, rtype, payload))
    }

    fn error(&mut self, opt: u32, rtype: u32, msg: &str) -> io::Result<()> {
        self.trace(&format!(
            "option {} -> error {:#x}: {msg}",
            option_name(opt),
            rtype
        ));
        self.reply(opt, rtype, truncate_utf8(msg, MAX_STRING).as_bytes())
    }

    fn ack(&mut self, opt: u32) -> io::Result<()> {
        self.reply(opt, REP_ACK, &[])
    }

    fn trace(&self, msg: &str) {
        if self.cfg.trace {
            (self.cfg.logger)(Level::Trace, &format!("{}: {msg}", self.peer));
        }
    }

    fn export(&self, i: usize) -> &dyn BlockDevice {
        self.cfg.exports[i].export.as_ref()
    }

    fn list(&mut self, opt: u32, payload: &[u8]) -> io::Result<()> {
        if !payload.is_empty() {
            return self.error(opt, REP_ERR_INVALID, "NBD_OPT_LIST takes no payload");
        }
        if !self.cfg.allow_list {
            return self.error(opt, REP_ERR_POLICY, "export listing is disabled");
        }
        let mut out = Vec::new();
        for e in &self.cfg.exports {
            out.extend(option_reply(
                opt,
                REP_SERVER,
                &rep_server_payload(&e.name, &e.description),
            ));
        }
        out.extend(option_reply(opt, REP_ACK, &[]));
        self.send(&out)
    }

    /// INFO or GO; returns the negotiated state for a successful GO.
    fn info_go(&mut self, opt: u32, payload: &[u8]) -> io::Result<Option<Negotiated>> {
        let req = match InfoRequest::decode(payload) {
            Ok(r) => r,
            Err(Malformed(m)) => {
                self.error(opt, REP_ERR_INVALID, m)?;
                return Ok(None);
            }
        };
        let Some(idx) = self.cfg.resolve(&req.name) else {
            let msg = format!("unknown export {:?}", req.name);
            self.error(opt, REP_ERR_UNKNOWN, &msg)?;
            return Ok(None);
        };
        let entry = &self.cfg.exports[idx];
        let export = entry.export.as_ref();
        let flags = transmission_flags(export, self.structured);
        let mut out = option_reply(opt, REP_INFO, &info_export_payload(export.size(), flags));
        let mut sent = [false; 4];
        for &r in &req.requests {
            let slot = usize::from(r);
            if slot >= sent.len() || sent[slot] {
                continue;
            }
            sent[slot] = true;
            let p = match r {
                INFO_NAME => info_string_payload(INFO_NAME, &entry.name),
                INFO_DESCRIPTION => info_string_payload(INFO_DESCRIPTION, &entry.description),
                INFO_BLOCK_SIZE => {
                    info_block_size_payload(1, preferred_block_size(export), MAX_PAYLOAD)
                }
                _ => continue,
            };
            out.extend(option_reply(opt, REP_INFO, &p));
        }
        out.extend(option_reply(opt, REP_ACK, &[]));
        self.trace(&format!(
            "option {} export {:?} -> size {} flags {:#x}",
            option_name(opt),
            entry.name,
            export.size(),
            flags
        ));
        self.send(&out)?;
        if opt != OPT_GO {
            return Ok(None);
        }
        Ok(Some(self.negotiated(idx, flags)))
    }

    fn negotiated(&self, idx: usize, flags: u16) -> Negotiated {
        let block_status = matches!(self.meta, Some((i, true)) if i == idx);
        Negotiated {
            export: idx,
            structured: self.structured,
            block_status: block_status && self.structured,
            flags,
        }
    }

    /// `NBD_OPT_STARTTLS`: ACK and TLS handshake, or the error the mode calls for.
    fn starttls(
        &mut self,
        opt: u32,
        payload: &[u8],
        creds: Option<&TlsCredentials>,
    ) -> Result<(), Ended> {
        if !payload.is_empty() {
            return Ok(self.error(opt, REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no payload")?);
        }
        let creds = match (self.tls, creds) {
            (TlsState::Active, _) => {
                return Ok(self.error(opt, REP_ERR_INVALID, "TLS is already active")?);
            }
            (TlsState::Offered | TlsState::Required, Some(c)) => c,
            (TlsState::Unavailable, Some(_)) => {
                return Ok(self.error(
                    opt,
                    REP_ERR_POLICY,
                    "TLS needs fixed newstyle negotiation",
                )?);
            }
            _ => {
                return Ok(self.error(
                    opt,
                    REP_ERR_POLICY,
                    "TLS is not configured on this server",
                )?);
            }
        };
        self.ack(opt)?;
        self.trace("TLS handshake");
        match tls_session::start(
            self.stream,
            creds,
            self.deadline,
            self.cfg.handshake_timeout,
            self.peer,
            self.cfg.logger.clone(),
        ) {
            Ok(pump) => {
                *self.pump = Some(pump);
                self.stream
                    .set_write_timeout(Some(self.cfg.handshake_timeout))?;
                self.tls = TlsState::Active;
                // Everything negotiated in the clear may have been tampered with: forget it.
                self.structured = false;
                self.meta = None;
                self.trace("TLS is up");
                Ok(())
            }
            Err(e) => {
                (self.cfg.logger)(
                    Level::Warn,
                    &format!("{}: {e}; closing the connection", self.peer),
                );
                Err(Ended::Failed(e))
            }
        }
    }

    fn meta_context(&mut self, opt: u32, payload: &[u8]) -> io::Result<()> {
        if opt == OPT_SET_META_CONTEXT {
            self.meta = None;
        }
        if !self.structured {
            return self.error(
                opt,
                REP_ERR_INVALID,
                "negotiate NBD_OPT_STRUCTURED_REPLY before metadata contexts",
            );
        }
        let req = match MetaRequest::decode(payload) {
            Ok(r) => r,
            Err(Malformed(m)) => return self.error(opt, REP_ERR_INVALID, m),
        };
        let Some(idx) = self.cfg.resolve(&req.name) else {
            let msg = format!("unknown export {:?}", req.name);
            return self.error(opt, REP_ERR_UNKNOWN, &msg);
        };
        let mut out = Vec::new();
        if opt == OPT_LIST_META_CONTEXT {
            let listed = req.queries.is_empty()
                || req
                    .queries
                    .iter()
                    .any(|q| q == "base:" || q == CONTEXT_BASE_ALLOCATION);
            if listed {
                out.extend(option_reply(
                    opt,
                    REP_META_CONTEXT,
                    &meta_context_payload(0, CONTEXT_BASE_ALLOCATION),
                ));
            }
        } else {
            let selected = req.queries.iter().any(|q| q == CONTEXT_BASE_ALLOCATION);
            if selected {
                out.extend(option_reply(
                    opt,
                    REP_META_CONTEXT,
                    &meta_context_payload(CONTEXT_ID_BASE_ALLOCATION, CONTEXT_BASE_ALLOCATION),
                ));
            }
            self.meta = Some((idx, selected));
        }
        self.trace(&format!(
            "option {} export {:?} queries {:?}",
            option_name(opt),
            req.name,
            req.queries
        ));
        out.extend(option_reply(opt, REP_ACK, &[]));
        self.send(&out)
    }
}

/// Run the greeting and option haggling on a fresh connection.
///
/// `shutting_down` is polled before each option: once set, options are
/// answered with `ERR_SHUTDOWN`. When the client starts TLS, `*stream` becomes the plaintext
/// end of the TLS pump left in `*pump`; the caller drops the stream, then joins the pump.
pub(crate) fn negotiate(
    stream: &mut Stream,
    cfg: &ServerConfig,
    peer: &str,
    shutting_down: &dyn Fn() -> bool,
    pump: &mut Option<Pump>,
) -> Result<Negotiated, Ended> {
    let deadline = Instant::now() + cfg.handshake_timeout;
    stream.set_write_timeout(Some(cfg.handshake_timeout))?;
    let mut h = Haggle {
        stream,
        cfg,
        deadline,
        peer,
        structured: false,
        meta: None,
        tls: TlsState::Unavailable,
        tls_refusals: 0,
        pump,
    };
    h.send(&greeting())?;
    let mut cflags = [0u8; 4];
    h.read_exact(&mut cflags)?;
    let cflags = u32::from_be_bytes(cflags);
    if cflags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(violation(format!("unknown client flags {cflags:#x}")));
    }
    let no_zeroes = cflags & FLAG_C_NO_ZEROES != 0;
    h.trace(&format!("client flags {cflags:#x}"));
    let fixed_newstyle = cflags & FLAG_C_FIXED_NEWSTYLE != 0;
    h.tls = TlsState::initial(cfg, fixed_newstyle);
    if !fixed_newstyle && cfg.tls_mode == TlsMode::Require {
        // Without fixed newstyle TLS is impossible, and the protocol forbids ERR_TLS_REQD.
        return Err(Ended::Orderly(
            "refused: TLS is required and the client does not speak fixed newstyle",
        ));
    }

    loop {
        let mut hdr = [0u8; OPTION_HEADER_LEN];
        if let Err(e) = h.read_exact(&mut hdr) {
            if h.tls_refusals > 0 {
                let msg = format!("{e} (after being told TLS is required)");
                return Err(Ended::Failed(io::Error::new(e.kind(), msg)));
            }
            return Err(e.into());
        }
        let oh = OptionHeader::decode(&hdr);
        if oh.magic != IHAVEOPT {
            return Err(violation(format!("bad option magic {:#x}", oh.magic)));
        }
        if oh.len > MAX_OPTION_LEN {
            return Err(violation(format!(
                "option {} with payload length {} over the {} byte limit",
                oh.option, oh.len, MAX_OPTION_LEN
            )));
        }
        let mut payload = vec![0u8; oh.len as usize];
        h.read_exact(&mut payload)?;
        let opt = oh.option;
        h.trace(&format!(
            "option {} ({}) length {}",
            option_name(opt),
            opt,
            oh.len
        ));

        if shutting_down() && opt != OPT_ABORT {
            if opt == OPT_EXPORT_NAME {
                return Err(Ended::Orderly("server shutting down"));
            }
            h.error(opt, REP_ERR_SHUTDOWN, "server is shutting down")?;
            continue;
        }

        if h.tls == TlsState::Required && opt != OPT_STARTTLS && opt != OPT_ABORT {
            if opt == OPT_EXPORT_NAME {
                // It cannot be answered with an error.
                return Err(Ended::Orderly(
                    "refused: NBD_OPT_EXPORT_NAME without TLS, which is required",
                ));
            }
            h.tls_refusals += 1;
            h.error(
                opt,
                REP_ERR_TLS_REQD,
                "TLS is required: negotiate NBD_OPT_STARTTLS first",
            )?;
            continue;
        }

        match opt {
            OPT_EXPORT_NAME => {
                let name = match String::from_utf8(payload) {
                    Ok(n) if n.len() <= MAX_STRING => n,
                    _ => return Err(violation("EXPORT_NAME with an invalid name")),
                };
                let Some(idx) = cfg.resolve(&name) else {
                    return Err(violation(format!(
                        "EXPORT_NAME for unknown export {name:?}"
                    )));
                };
                let export = h.export(idx);
                let flags = transmission_flags(export, h.structured);
                let size = export.size();
                h.send(&export_name_reply(size, flags, no_zeroes))?;
                return Ok(h.negotiated(idx, flags));
            }
            OPT_ABORT => {
                // The client may close without reading the ACK.
                let _ = h.ack(opt);
                if h.tls_refusals > 0 {
                    return Err(Ended::Orderly(
                        "client aborted the handshake after being told TLS is required",
                    ));
                }
                return Err(Ended::Orderly("client aborted the handshake"));
            }
            OPT_LIST => h.list(opt, &payload)?,
            OPT_STARTTLS => h.starttls(opt, &payload, cfg.tls_credentials())?,
            OPT_INFO | OPT_GO => {
                if let Some(n) = h.info_go(opt, &payload)? {
                    return Ok(n);
                }
            }
            OPT_STRUCTURED_REPLY => {
                if !payload.is_empty() {
                    h.error(
                        opt,
                        REP_ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY takes no payload",
                    )?;
                } else if h.structured {
                    h.error(
                        opt,
                        REP_ERR_INVALID,
                        "structured replies already negotiated",
                    )?;
                } else {
                    h.structured = true;
                    h.ack(opt)?;
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => h.meta_context(opt, &payload)?,
            _ => {
                let msg = format!("option {opt} is not supported");
                h.error(opt, REP_ERR_UNSUP, &msg)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mkmodule_blockdev::MemoryDevice;

    #[test]
    fn preferred_rounds_down_to_power_of_two() {
        let e = MemoryDevice::new(vec![]).with_preferred_block_size(65536 + 512);
        assert_eq!(preferred_block_size(&e), 65536);
        let e = MemoryDevice::new(vec![]).with_preferred_block_size(0);
        assert_eq!(preferred_block_size(&e), 512);
        let e = MemoryDevice::new(vec![]).with_preferred_block_size(u32::MAX);
        assert_eq!(preferred_block_size(&e), MAX_PAYLOAD);
        let e = MemoryDevice::new(vec![]).with_preferred_block_size(3 * 512);
        assert_eq!(preferred_block_size(&e), 1024);
    }

    #[test]
    fn flags_follow_export_and_structured() {
        let ro = MemoryDevice::new(vec![0; 512]);
        assert_eq!(transmission_flags(&ro, false), 0x0507);
        assert_eq!(transmission_flags(&ro, true), 0x0587);
        let rw = MemoryDevice::new(vec![0; 512]).writable();
        let f = transmission_flags(&rw, false);
        assert_eq!(f & TFLAG_READ_ONLY, 0);
        assert_ne!(f & TFLAG_SEND_FUA, 0);
        assert_ne!(f & TFLAG_SEND_TRIM, 0);
        assert_ne!(f & TFLAG_SEND_WRITE_ZEROES, 0);
    }

    fn config() -> ServerConfig {
        ServerConfig::new()
            .with_export(
                "a",
                "",
                std::sync::Arc::new(MemoryDevice::new(vec![1; 4096])),
            )
            .with_logger(crate::log::null_logger())
            .with_handshake_timeout(std::time::Duration::from_secs(5))
    }

    /// Feed `client` bytes to the option parser, then close; return how it ended.
    fn haggle_with(client: Vec<u8>) -> Result<Negotiated, Ended> {
        let (r, _, tls_started) = haggle_raw(&config(), client);
        assert!(!tls_started);
        r
    }

    fn opt(option: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = OptionHeader {
            magic: IHAVEOPT,
            option,
            len: payload.len() as u32,
        }
        .encode()
        .to_vec();
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn go_negotiates_after_structured_and_meta() {
        let mut c = 3u32.to_be_bytes().to_vec();
        c.extend(opt(OPT_STRUCTURED_REPLY, &[]));
        c.extend(opt(
            OPT_SET_META_CONTEXT,
            &MetaRequest {
                name: "".into(),
                queries: vec![CONTEXT_BASE_ALLOCATION.into()],
            }
            .encode(),
        ));
        c.extend(opt(
            OPT_GO,
            &InfoRequest {
                name: "a".into(),
                requests: vec![],
            }
            .encode(),
        ));
        let n = haggle_with(c).unwrap();
        assert_eq!(n.export, 0);
        assert!(n.structured && n.block_status);
        assert_ne!(n.flags & TFLAG_SEND_DF, 0);
    }

    #[test]
    fn meta_for_another_export_does_not_enable_block_status() {
        // SET names an unknown export and fails, so GO gets no active context.
        let mut c = 3u32.to_be_bytes().to_vec();
        c.extend(opt(OPT_STRUCTURED_REPLY, &[]));
        c.extend(opt(
            OPT_SET_META_CONTEXT,
            &MetaRequest {
                name: "zz".into(),
                queries: vec![CONTEXT_BASE_ALLOCATION.into()],
            }
            .encode(),
        ));
        c.extend(opt(
            OPT_GO,
            &InfoRequest {
                name: "".into(),
                requests: vec![],
            }
            .encode(),
        ));
        let n = haggle_with(c).unwrap();
        assert!(n.structured && !n.block_status);
    }

    /// Option replies in `bytes` (after the 18-byte greeting): (option, reply type) pairs.
    fn replies(bytes: &[u8]) -> Vec<(u32, u32)> {
        assert_eq!(&bytes[..8], b"NBDMAGIC");
        let mut out = Vec::new();
        let mut at = 18;
        while at + 20 <= bytes.len() {
            let h = &bytes[at..at + 20];
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
            out.push((
                u32::from_be_bytes(h[8..12].try_into().unwrap()),
                u32::from_be_bytes(h[12..16].try_into().unwrap()),
            ));
            at += 20 + len;
        }
        out
    }

    /// Like `haggle_with`, under `cfg`; also returns what the server sent.
    fn haggle_cfg(cfg: &ServerConfig, client: Vec<u8>) -> (Result<Negotiated, Ended>, Vec<u8>) {
        let (r, sent, _) = haggle_raw(cfg, client);
        (r, sent)
    }

    /// Feeds `client` bytes to the option parser under `cfg`, then closes; returns how it
    /// ended, what the server sent, and whether a TLS pump was started.
    fn haggle_raw(
        cfg: &ServerConfig,
        client: Vec<u8>,
    ) -> (Result<Negotiated, Ended>, Vec<u8>, bool) {
        use std::os::unix::net::UnixStream;
        let (server_side, mut client_side) = UnixStream::pair().unwrap();
        let feeder = std::thread::spawn(move || {
            let _ = client_side.write_all(&client);
            let _ = client_side.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = client_side.read_to_end(&mut sink);
            sink
        });
        let mut stream = Stream::Unix(server_side);
        let mut pump = None;
        let r = negotiate(&mut stream, cfg, "test", &|| false, &mut pump);
        drop(stream);
        (r, feeder.join().unwrap(), pump.is_some())
    }

    fn tls_config(mode: TlsMode) -> (ServerConfig, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        crate::tls::testing::write_credentials(dir.path());
        let creds = TlsCredentials::load(dir.path(), false).unwrap();
        (config().with_tls(mode, Some(creds)), dir)
    }

    fn go_a() -> Vec<u8> {
        opt(
            OPT_GO,
            &InfoRequest {
                name: "a".into(),
                requests: vec![],
            }
            .encode(),
        )
    }

    #[test]
    fn tls_required_refuses_every_option_but_starttls_and_abort() {
        let (cfg, _dir) = tls_config(TlsMode::Require);
        let mut c = 3u32.to_be_bytes().to_vec();
        c.extend(opt(OPT_LIST, &[]));
        c.extend(opt(OPT_STRUCTURED_REPLY, &[]));
        c.extend(go_a());
        c.extend(opt(0x4242, b"junk"));
        c.extend(opt(OPT_STARTTLS, b"x"));
        c.extend(opt(OPT_ABORT, &[]));
        let (r, sent) = haggle_cfg(&cfg, c);
        assert!(
            matches!(r, Err(Ended::Orderly(m)) if m.contains("TLS is required")),
            "{r:?}"
        );
        assert_eq!(
            replies(&sent),
            [
                (OPT_LIST, REP_ERR_TLS_REQD),
                (OPT_STRUCTURED_REPLY, REP_ERR_TLS_REQD),
                (OPT_GO, REP_ERR_TLS_REQD),
                (0x4242, REP_ERR_TLS_REQD),
                (OPT_STARTTLS, REP_ERR_INVALID),
                (OPT_ABORT, REP_ACK),
            ]
        );
    }

    #[test]
    fn tls_required_closes_on_export_name_and_on_clients_without_fixed_newstyle() {
        let (cfg, _dir) = tls_config(TlsMode::Require);
        let mut c = 3u32.to_be_bytes().to_vec();
        c.extend(opt(OPT_EXPORT_NAME, b"a"));
        let (r, sent) = haggle_cfg(&cfg, c);
        assert!(
            matches!(r, Err(Ended::Orderly(m)) if m.contains("EXPORT_NAME without TLS")),
            "{r:?}"
        );
        assert_eq!(sent.len(), 18, "nothing but the greeting");

        // No fixed newstyle: TLS is impossible, and ERR_TLS_REQD is not allowed.
        let mut c = 0u32.to_be_bytes().to_vec();
        c.extend(opt(OPT_EXPORT_NAME, b"a"));
        let (r, sent) = haggle_cfg(&cfg, c);
        assert!(
            matches!(r, Err(Ended::Orderly(m)) if m.contains("fixed newstyle")),
            "{r:?}"
        );
        assert_eq!(sent.len(), 18);
    }

    #[test]
    fn tls_off_refuses_starttls_by_policy_and_on_serves_plaintext() {
        let mut c = 3u32.to_be_bytes().to_vec();
        c.extend(opt(OPT_STARTTLS, &[]));
        c.extend(opt(OPT_LIST, &[]));
        c.extend(go_a());
        let (r, sent) = haggle_cfg(&config(), c.clone());
        assert!(r.is_ok(), "{r:?}");
        let got = replies(&sent);
        assert_eq!(got[0], (OPT_STARTTLS, REP_ERR_POLICY));
        assert_eq!(got[1], (OPT_LIST, REP_SERVER));
        assert!(!got.iter().any(|&(_, t)| t == REP_ERR_TLS_REQD));

        // Credentials but mode off: still NOTLS.
        let (cfg, _dir) = tls_config(TlsMode::Off);
        let (r, sent) = haggle_cfg(&cfg, c);
        assert!(r.is_ok());
        assert_eq!(replies(&sent)[0], (OPT_STARTTLS, REP_ERR_POLICY));

        // TLS on: a plaintext client is served as usual.
        let (cfg, _dir) = tls_config(TlsMode::On);
        let mut c = 3u32.to_be_bytes().to_vec();
        c.extend(opt(OPT_LIST, &[]));
        c.extend(opt(OPT_STRUCTURED_REPLY, &[]));
        c.extend(go_a());
        let (r, sent) = haggle_cfg(&cfg, c);
        assert!(r.unwrap().structured);
        assert!(!replies(&sent).iter().any(|&(_, t)| t & REP_FLAG_ERROR != 0));
    }

    /// STARTTLS for real with a rustls client: state from before TLS is forgotten, a second
    /// STARTTLS is invalid, and options that needed TLS now work.
    #[test]
    fn starttls_upgrades_resets_state_and_cannot_repeat() {
        use std::os::unix::net::UnixStream;
        for mode in [TlsMode::On, TlsMode::Require] {
            let (cfg, dir) = tls_config(mode);
            let (server_side, mut client_side) = UnixStream::pair().unwrap();
            let pki = dir.path().to_path_buf();
            let client = std::thread::spawn(move || {
                let mut greeting = [0u8; 18];
                client_side.read_exact(&mut greeting).unwrap();
                let mut c = 3u32.to_be_bytes().to_vec();
                if mode == TlsMode::On {
                    c.extend(opt(OPT_STRUCTURED_REPLY, &[]));
                }
                c.extend(opt(OPT_STARTTLS, &[]));
                client_side.write_all(&c).unwrap();
                let mut plain = Vec::new();
                let wanted = if mode == TlsMode::On { 2 } else { 1 };
                while plain.len() < wanted * 20 {
                    let mut b = [0u8; 20];
                    client_side.read_exact(&mut b).unwrap();
                    plain.extend_from_slice(&b);
                }
                let mut with_greeting = greeting.to_vec();
                with_greeting.extend(&plain);
                assert_eq!(
                    replies(&with_greeting).last(),
                    Some(&(OPT_STARTTLS, REP_ACK))
                );
                let conn = crate::tls::testing::client(&pki, false);
                let mut tls = rustls::StreamOwned::new(conn, client_side);
                let mut c = opt(OPT_STARTTLS, &[]);
                c.extend(opt(OPT_LIST, &[]));
                c.extend(go_a());
                tls.write_all(&c).unwrap();
                tls.flush().unwrap();
                let mut got = greeting.to_vec();
                let _ = tls.read_to_end(&mut got);
                replies(&got)
            });
            let mut stream = Stream::Unix(server_side);
            let mut pump = None;
            let n = negotiate(&mut stream, &cfg, "test", &|| false, &mut pump).unwrap();
            assert!(
                !n.structured,
                "structured replies negotiated in the clear must be forgotten"
            );
            assert!(matches!(stream, Stream::Unix(_)));
            drop(stream);
            pump.expect("a TLS pump").join();
            let got = client.join().unwrap();
            assert_eq!(got[0], (OPT_STARTTLS, REP_ERR_INVALID), "{mode:?}");
            assert_eq!(got[1], (OPT_LIST, REP_SERVER), "{mode:?}");
            assert_eq!(got.last(), Some(&(OPT_GO, REP_ACK)), "{mode:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn arbitrary_client_bytes_never_panic(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            opts in proptest::collection::vec((0u32..14, proptest::collection::vec(proptest::num::u8::ANY, 0..40)), 0..6),
        ) {
            // Mostly well-framed options with random payloads, then random bytes.
            let mut c = 3u32.to_be_bytes().to_vec();
            for (o, p) in &opts {
                c.extend(opt(*o, p));
            }
            c.extend(body);
            let _ = haggle_with(c);
        }
    }
}
