//! The Linux NBD driver's generic netlink interface (family "nbd", version 1): connect a device
//! to sockets, give it fresh sockets for dead ones (`NBD_CMD_RECONFIGURE`), disconnect it, list
//! devices, and hear of dead links (`NBD_CMD_LINK_DEAD` on the "nbd_mc_group" group).
//!
//! The numbers below are the kernel's uapi (`linux/nbd-netlink.h`, `linux/nbd.h`).

use std::os::fd::RawFd;
use std::time::Duration;

use crossbeam_channel::Receiver;
use neli::consts::nl::NlmF;
use neli::consts::socket::NlFamily;
use neli::err::RouterError;
use neli::genl::{AttrTypeBuilder, Genlmsghdr, GenlmsghdrBuilder, Nlattr, NlattrBuilder};
use neli::nl::{NlPayload, Nlmsghdr};
use neli::router::synchronous::{NlRouter, NlRouterReceiverHandle};
use neli::types::{Buffer, GenlBuffer};
use neli::utils::Groups;
use neli::{Size, ToBytes};

use crate::error::NetlinkError;

const FAMILY: &str = "nbd";
const MCAST_GROUP: &str = "nbd_mc_group";
const VERSION: u8 = 1;

const CMD_CONNECT: u8 = 1;
const CMD_DISCONNECT: u8 = 2;
const CMD_RECONFIGURE: u8 = 3;
const CMD_LINK_DEAD: u8 = 4;
const CMD_STATUS: u8 = 5;

const ATTR_INDEX: u16 = 1;
const ATTR_SIZE_BYTES: u16 = 2;
const ATTR_BLOCK_SIZE_BYTES: u16 = 3;
const ATTR_TIMEOUT: u16 = 4;
const ATTR_SERVER_FLAGS: u16 = 5;
const ATTR_CLIENT_FLAGS: u16 = 6;
const ATTR_SOCKETS: u16 = 7;
const ATTR_DEAD_CONN_TIMEOUT: u16 = 8;
const ATTR_DEVICE_LIST: u16 = 9;

const SOCK_ITEM: u16 = 1;
const SOCK_FD: u16 = 1;
const DEVICE_ITEM: u16 = 1;
const DEVICE_INDEX: u16 = 1;
const DEVICE_CONNECTED: u16 = 2;

type Message = Genlmsghdr<u8, u16>;
type Attrs = GenlBuffer<u16, Buffer>;

/// How a device is set up by [`NbdNetlink::connect`].
#[derive(Debug, Clone)]
pub struct DeviceSetup {
    /// `/dev/nbdN` to use, or `None` for the first free one.
    pub index: Option<u32>,
    /// The export's size in bytes.
    pub size: u64,
    /// The device's logical block size (512 to 4096, a power of two).
    pub block_size: u64,
    /// The server's transmission flags, as negotiated.
    pub server_flags: u16,
    /// After this long without a reply a request's connection is declared dead and the request
    /// is sent again on a live (or reconnected) one.
    pub request_timeout: Duration,
    /// How long requests wait for a reconnection once every connection is dead, before they fail.
    pub dead_connection_timeout: Duration,
}

/// One NBD device as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceStatus {
    /// N of /dev/nbdN.
    pub index: u32,
    /// Whether it is connected.
    pub connected: bool,
}

/// A generic netlink socket talking to the kernel's NBD driver.
pub struct NbdNetlink {
    router: NlRouter,
    multicast: Option<NlRouterReceiverHandle<u16, Message>>,
    family: u16,
}

impl std::fmt::Debug for NbdNetlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdNetlink")
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

fn socket_error<T: std::fmt::Debug, P: std::fmt::Debug>(e: RouterError<T, P>) -> NetlinkError {
    NetlinkError::Socket(format!("{e:?}"))
}

fn attr<P: Size + ToBytes>(kind: u16, payload: P) -> Result<Nlattr<u16, Buffer>, NetlinkError> {
    NlattrBuilder::default()
        .nla_type(
            AttrTypeBuilder::default()
                .nla_type(kind)
                .build()
                .map_err(|e| NetlinkError::Socket(e.to_string()))?,
        )
        .nla_payload(payload)
        .build()
        .map_err(|e| NetlinkError::Socket(e.to_string()))
}

/// `NBD_ATTR_SOCKETS` with one `NBD_SOCK_ITEM { NBD_SOCK_FD }` per socket.
fn sockets_attr(sockets: &[RawFd]) -> Result<Nlattr<u16, Buffer>, NetlinkError> {
    let mut list = attr(ATTR_SOCKETS, Vec::<u8>::new())?;
    for &fd in sockets {
        let fd =
            u32::try_from(fd).map_err(|_| NetlinkError::Malformed("a negative file descriptor"))?;
        let item = attr(SOCK_ITEM, Vec::<u8>::new())?
            .nest(&attr(SOCK_FD, fd)?)
            .map_err(|e| NetlinkError::Socket(e.to_string()))?;
        list = list
            .nest(&item)
            .map_err(|e| NetlinkError::Socket(e.to_string()))?;
    }
    Ok(list)
}

impl NbdNetlink {
    /// Opens a netlink socket and finds the NBD family; [`NetlinkError::NoFamily`] when the
    /// kernel has no NBD driver loaded.
    pub fn open() -> Result<NbdNetlink, NetlinkError> {
        let (router, multicast) =
            NlRouter::connect(NlFamily::Generic, None, Groups::empty()).map_err(socket_error)?;
        let family = router
            .resolve_genl_family(FAMILY)
            .map_err(|_| NetlinkError::NoFamily)?;
        Ok(NbdNetlink {
            router,
            multicast: Some(multicast),
            family,
        })
    }

    /// Sends `cmd` with `attrs` and collects the kernel's reply messages.
    fn request(
        &self,
        command: &'static str,
        cmd: u8,
        attrs: Vec<Nlattr<u16, Buffer>>,
    ) -> Result<Vec<Message>, NetlinkError> {
        let message = GenlmsghdrBuilder::default()
            .cmd(cmd)
            .version(VERSION)
            .attrs(attrs.into_iter().collect::<Attrs>())
            .build()
            .map_err(|e| NetlinkError::Socket(e.to_string()))?;
        let replies = self
            .router
            .send::<u16, Message, u16, Message>(self.family, NlmF::ACK, NlPayload::Payload(message))
            .map_err(socket_error)?;
        let mut out = Vec::new();
        for reply in replies {
            let reply: Nlmsghdr<u16, Message> = reply.map_err(|e| match e {
                RouterError::Nlmsgerr(err) => NetlinkError::Refused {
                    command,
                    errno: -*err.error(),
                },
                other => socket_error(other),
            })?;
            if let NlPayload::Payload(p) = reply.nl_payload() {
                out.push(p.clone());
            }
        }
        Ok(out)
    }

    /// Connects a device to `sockets` (each in the transmission phase); returns its index.
    pub fn connect(&self, setup: &DeviceSetup, sockets: &[RawFd]) -> Result<u32, NetlinkError> {
        let mut attrs = vec![
            attr(ATTR_SIZE_BYTES, setup.size)?,
            attr(ATTR_BLOCK_SIZE_BYTES, setup.block_size)?,
            attr(ATTR_TIMEOUT, setup.request_timeout.as_secs().max(1))?,
            attr(
                ATTR_DEAD_CONN_TIMEOUT,
                setup.dead_connection_timeout.as_secs(),
            )?,
            attr(ATTR_SERVER_FLAGS, u64::from(setup.server_flags))?,
            attr(ATTR_CLIENT_FLAGS, 0u64)?,
            sockets_attr(sockets)?,
        ];
        if let Some(index) = setup.index {
            attrs.push(attr(ATTR_INDEX, index)?);
        }
        let replies = self
            .request("NBD_CMD_CONNECT", CMD_CONNECT, attrs)
            .map_err(|e| match (e, setup.index) {
                (NetlinkError::Refused { errno, .. }, Some(index)) if errno == libc_ebusy() => {
                    NetlinkError::InUse(index)
                }
                (e, _) => e,
            })?;
        replies
            .iter()
            .find_map(|m| {
                m.attrs()
                    .get_attr_handle()
                    .get_attr_payload_as::<u32>(ATTR_INDEX)
                    .ok()
            })
            .or(setup.index)
            .ok_or(NetlinkError::Malformed(
                "NBD_CMD_CONNECT answered without a device index",
            ))
    }

    /// Hands the device fresh sockets in place of dead ones.
    pub fn reconfigure(&self, index: u32, sockets: &[RawFd]) -> Result<(), NetlinkError> {
        let attrs = vec![attr(ATTR_INDEX, index)?, sockets_attr(sockets)?];
        self.request("NBD_CMD_RECONFIGURE", CMD_RECONFIGURE, attrs)
            .map(drop)
    }

    /// Disconnects the device (the server gets NBD_CMD_DISC).
    pub fn disconnect(&self, index: u32) -> Result<(), NetlinkError> {
        self.request(
            "NBD_CMD_DISCONNECT",
            CMD_DISCONNECT,
            vec![attr(ATTR_INDEX, index)?],
        )
        .map(drop)
    }

    /// Every NBD device (or only `index`) and whether it is connected.
    pub fn status(&self, index: Option<u32>) -> Result<Vec<DeviceStatus>, NetlinkError> {
        let attrs = match index {
            Some(i) => vec![attr(ATTR_INDEX, i)?],
            None => Vec::new(),
        };
        let replies = self.request("NBD_CMD_STATUS", CMD_STATUS, attrs)?;
        let mut out = Vec::new();
        for reply in &replies {
            let handle = reply.attrs().get_attr_handle();
            let Ok(list) = handle.get_nested_attributes::<u16>(ATTR_DEVICE_LIST) else {
                continue;
            };
            for item in list
                .iter()
                .filter(|a| *a.nla_type().nla_type() == DEVICE_ITEM)
            {
                let fields = item
                    .get_attr_handle::<u16>()
                    .map_err(|_| NetlinkError::Malformed("a bad NBD_DEVICE_ITEM"))?;
                let index = fields
                    .get_attr_payload_as::<u32>(DEVICE_INDEX)
                    .map_err(|_| NetlinkError::Malformed("an NBD_DEVICE_ITEM without its index"))?;
                let connected = fields
                    .get_attr_payload_as::<u8>(DEVICE_CONNECTED)
                    .unwrap_or(0)
                    != 0;
                out.push(DeviceStatus { index, connected });
            }
        }
        out.sort_by_key(|d| d.index);
        Ok(out)
    }

    /// Joins the NBD multicast group; the returned channel yields the index of each device
    /// whose connection the kernel declared dead. A thread of its own reads the events.
    pub fn link_dead_events(&mut self) -> Result<Receiver<u32>, NetlinkError> {
        let group = self
            .router
            .resolve_nl_mcast_group(FAMILY, MCAST_GROUP)
            .map_err(socket_error)?;
        self.router
            .add_mcast_membership(Groups::new_groups(&[group]))
            .map_err(socket_error)?;
        let mut multicast = self
            .multicast
            .take()
            .ok_or(NetlinkError::Malformed("the events are already being read"))?;
        let (send, receive) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("nbd-link-dead".into())
            .spawn(move || {
                while let Some(Ok(message)) = multicast.next_typed::<u16, Message>() {
                    let Some(payload) = message.get_payload() else {
                        continue;
                    };
                    if *payload.cmd() != CMD_LINK_DEAD {
                        continue;
                    }
                    if let Ok(index) = payload
                        .attrs()
                        .get_attr_handle()
                        .get_attr_payload_as::<u32>(ATTR_INDEX)
                    {
                        if send.send(index).is_err() {
                            break;
                        }
                    }
                }
            })
            .map_err(|e| NetlinkError::Socket(e.to_string()))?;
        Ok(receive)
    }
}

/// EBUSY, which the kernel returns for a device that is already set up.
fn libc_ebusy() -> i32 {
    rustix::io::Errno::BUSY.raw_os_error()
}
