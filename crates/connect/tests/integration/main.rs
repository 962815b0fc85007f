//! The integration tests of mkmodule-connect: the client handshake and the identity probe
//! against real NBD servers (qemu-nbd, nbdkit) and against peers that misbehave. Attaching a
//! kernel device needs the nbd module and is tested in a guest (the mkmodule binary's boot
//! tests).

mod handshake;
