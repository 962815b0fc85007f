//! `mkmodule connect`'s library: attach an NBD export to a Linux NBD device and keep it
//! attached when servers restart or die.
//!
//! The handshake is done here ([`handshake`]), the image behind the export is identified by
//! sampling it ([`identity`]), the device is configured over the kernel's NBD generic netlink
//! interface ([`netlink`]), and [`attach::Attachment::supervise`] replaces every connection the
//! kernel declares dead: requests wait (up to the dead-connection timeout) instead of failing.
//! A server that serves a different image is refused.

pub mod address;
pub mod attach;
pub mod error;
pub mod handshake;
pub mod identity;
pub mod netlink;

pub use address::{ServerAddress, DEFAULT_PORT};
pub use attach::{dial, AttachError, AttachOptions, Attachment, Connection, DialError};
pub use error::{AddressError, HandshakeError, NetlinkError};
pub use handshake::{negotiate, ExportInfo};
pub use identity::Identity;
pub use netlink::{DeviceSetup, DeviceStatus, NbdNetlink};
