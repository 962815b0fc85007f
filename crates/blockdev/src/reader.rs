//! Reading a block device front to back as a byte stream.

use std::io::{self, Read};

use crate::device::BlockDevice;

/// A [`Read`] over a block device, from its first byte to its last.
///
/// For consumers that take a stream (the packer, hashing, copying): `commit` compresses an
/// overlay through one.
pub struct DeviceReader<'a, D: BlockDevice + ?Sized> {
    device: &'a D,
    position: u64,
}

impl<'a, D: BlockDevice + ?Sized> DeviceReader<'a, D> {
    /// A stream positioned at the device's first byte.
    pub fn new(device: &'a D) -> Self {
        DeviceReader {
            device,
            position: 0,
        }
    }

    /// How many bytes have been read so far.
    pub fn position(&self) -> u64 {
        self.position
    }
}

impl<D: BlockDevice + ?Sized> Read for DeviceReader<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.device.size().saturating_sub(self.position);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        self.device.read_at(&mut buf[..n], self.position)?;
        self.position += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryDevice;

    #[test]
    fn reads_everything_in_any_piece_size() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let device = MemoryDevice::new(data.clone());
        for piece in [1usize, 7, 4096, 20_000] {
            let mut reader = DeviceReader::new(&device);
            let mut out = Vec::new();
            let mut buf = vec![0u8; piece];
            loop {
                let n = reader.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            assert_eq!(out, data, "piece {piece}");
            assert_eq!(reader.position(), 10_000);
        }
    }
}
