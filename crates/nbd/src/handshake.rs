//! Fixed-newstyle greeting and option haggling, up to the start of transmission.

use std::io::{self, Read, Write};
use std::time::Instant;

use crate::config::{Level, ServerConfig};
use crate::export::Export;
use crate::listener::Stream;
use crate::proto::*;

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
pub(crate) fn transmission_flags(export: &dyn Export, structured: bool) -> u16 {
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
pub(crate) fn preferred_block_size(export: &dyn Export) -> u32 {
    let p = export.preferred_block_size().clamp(512, MAX_PAYLOAD);
    1 << (31 - p.leading_zeros())
}

/// Per-connection haggling state.
struct Haggle<'a> {
    stream: &'a mut Stream,
    cfg: &'a ServerConfig,
    deadline: Instant,
    peer: &'a str,
    structured: bool,
    /// Export named by the last SET_META_CONTEXT and whether base:allocation was chosen.
    meta: Option<(usize, bool)>,
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

    fn export(&self, i: usize) -> &dyn Export {
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
/// answered with `ERR_SHUTDOWN`.
pub(crate) fn negotiate(
    stream: &mut Stream,
    cfg: &ServerConfig,
    peer: &str,
    shutting_down: &dyn Fn() -> bool,
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

    loop {
        let mut hdr = [0u8; OPTION_HEADER_LEN];
        h.read_exact(&mut hdr)?;
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
                return Err(Ended::Orderly("client aborted the handshake"));
            }
            OPT_LIST => h.list(opt, &payload)?,
            OPT_STARTTLS => {
                if payload.is_empty() {
                    h.error(opt, REP_ERR_POLICY, "TLS is not configured on this server")?;
                } else {
                    h.error(opt, REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no payload")?;
                }
            }
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
    use crate::export::MemoryExport;

    #[test]
    fn preferred_rounds_down_to_power_of_two() {
        let e = MemoryExport::new(vec![]).with_preferred_block_size(65536 + 512);
        assert_eq!(preferred_block_size(&e), 65536);
        let e = MemoryExport::new(vec![]).with_preferred_block_size(0);
        assert_eq!(preferred_block_size(&e), 512);
        let e = MemoryExport::new(vec![]).with_preferred_block_size(u32::MAX);
        assert_eq!(preferred_block_size(&e), MAX_PAYLOAD);
        let e = MemoryExport::new(vec![]).with_preferred_block_size(3 * 512);
        assert_eq!(preferred_block_size(&e), 1024);
    }

    #[test]
    fn flags_follow_export_and_structured() {
        let ro = MemoryExport::new(vec![0; 512]);
        assert_eq!(transmission_flags(&ro, false), 0x0507);
        assert_eq!(transmission_flags(&ro, true), 0x0587);
        let rw = MemoryExport::new(vec![0; 512]).writable();
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
                std::sync::Arc::new(MemoryExport::new(vec![1; 4096])),
            )
            .with_logger(crate::config::null_logger())
            .with_handshake_timeout(std::time::Duration::from_secs(5))
    }

    /// Feed `client` bytes to the option parser, then close; return how it ended.
    fn haggle_with(client: Vec<u8>) -> Result<Negotiated, Ended> {
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
        let r = negotiate(&mut stream, &config(), "test", &|| false);
        drop(stream);
        feeder.join().unwrap();
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
