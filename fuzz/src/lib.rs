//! Shared harness code of mkmodule's fuzz targets (see `fuzz/README.md`).
//!
//! Every function here turns arbitrary bytes into calls of the public API, bounded so that one
//! input always finishes quickly, and checks what must hold whatever the input: no panic, and
//! the properties stated at each function.

pub mod build;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use mkmodule_image::{ExposedSize, Image, OpenOptions};

/// Bytes of decoded blocks one input may make the reader produce (beyond the blocks opening an
/// image decodes by itself), so that images with 64 MiB blocks stay affordable.
const DECODE_BUDGET: u64 = 16 << 20;

/// Reader options for fuzzing: a small cache, no read-ahead threads.
pub fn reader_options(original_size: bool, scan_zero_blocks: bool) -> OpenOptions {
    OpenOptions {
        cache_bytes: 1 << 20,
        readahead: 0,
        readahead_threads: 1,
        mmap: false,
        exposed_size: if original_size {
            ExposedSize::Original
        } else {
            ExposedSize::Padded
        },
        scan_zero_blocks,
    }
}

/// Opens `bytes` as an image and reads it through every entry point, within a decode budget.
///
/// Checks: errors format without panicking; every block decodes to exactly the block size;
/// `read_at` agrees with the blocks; a block the zero map calls zero really decodes to zeros
/// (checked against a second open without the scan); extents cover what they are asked for.
/// Returns the exposed device when it was read whole without an error.
pub fn exercise_image(bytes: Vec<u8>, original_size: bool) -> Option<Vec<u8>> {
    let image = match Image::from_bytes(bytes.clone(), &reader_options(original_size, true)) {
        Ok(image) => image,
        Err(e) => {
            let _ = e.to_string();
            return None;
        }
    };
    let bs = u64::from(image.block_size());
    let n = image.num_blocks();
    let size = image.size();
    assert!(size <= image.padded_size(), "exposed size past the blocks");
    let _ = image.trailer_problem().map(ToString::to_string);
    // The block-digest table: one digest per block, or an error, never a panic.
    match image.digest_table() {
        Ok(Some(table)) => assert_eq!(
            table.digests.len(),
            n as usize,
            "a digest table of another length"
        ),
        Ok(None) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }

    // Blocks, within the budget (always the first and the last).
    let affordable = (DECODE_BUDGET / bs).max(1) as u32;
    let blocks: Vec<u32> = if n <= affordable {
        (0..n).collect()
    } else {
        vec![0, n - 1]
    };
    let mut decoded = Vec::new();
    let mut all_ok = true;
    for &i in &blocks {
        match image.block(i) {
            Ok(block) => {
                assert_eq!(block.len() as u64, bs, "block {i} has the wrong length");
                decoded.push((i, block));
            }
            Err(e) => {
                let _ = e.to_string();
                all_ok = false;
            }
        }
    }
    assert!(image.block(n).is_err(), "a block past the end was served");

    // The zero map is sound: every block it names decodes to zeros.
    if image.zero_blocks() > 0 {
        if let Ok(plain) = Image::from_bytes(bytes, &reader_options(original_size, false)) {
            for &i in &blocks {
                if image.is_zero_block(i) {
                    let block = plain.block(i).expect("a known-zero block fails to decode");
                    assert!(block.iter().all(|&b| b == 0), "block {i} is not zero");
                }
            }
        }
    }

    // read_at agrees with the blocks, and refuses nothing inside the image.
    let mut device = None;
    if n <= affordable && size <= DECODE_BUDGET {
        let mut buf = vec![0u8; size as usize];
        match image.read_at(&mut buf, 0) {
            Ok(got) => {
                assert_eq!(got as u64, size, "short read inside the image");
                for (i, block) in &decoded {
                    let start = u64::from(*i) * bs;
                    let end = (start + bs).min(size);
                    if start < end {
                        assert!(
                            buf[start as usize..end as usize] == block[..(end - start) as usize],
                            "read_at differs from block {i}"
                        );
                    }
                }
                if all_ok {
                    device = Some(buf);
                }
            }
            Err(e) => {
                assert!(!all_ok, "read_at failed where every block decodes: {e}");
            }
        }
        // Through the Read + Seek reader, in odd-sized pieces.
        let mut reader = image.reader();
        let mut piece = vec![0u8; 1000];
        let mut total = 0u64;
        loop {
            match reader.read(&mut piece) {
                Ok(0) => break,
                Ok(k) => total += k as u64,
                Err(_) => break,
            }
        }
        assert!(total <= size, "the reader ran past the image");
    }
    // A read crossing the end is cut at the end.
    if size > 0 {
        let mut tail = [0u8; 16];
        if let Ok(got) = image.read_at(&mut tail, size - 1) {
            assert_eq!(got, 1, "read past the end");
        }
    }
    let extents = image.extents(0, size);
    let covered: u64 = extents.iter().map(|e| e.len).sum();
    assert!(covered <= size, "extents past the end");
    if size > 0 {
        assert!(covered > 0, "no extent for a non-empty image");
    }
    let _ = image.zero_extents();
    device
}

/// One pass of an NBD client that sends `client` and reads every reply, against a server with
/// a 16 KiB export (`"disk"`, or `""` by default) and an empty one (`"empty"`).
///
/// `config_bits`: 1 writable, 2 zero extents, 4 export listing off, 8 protocol tracing on.
/// Checks: the server ends the connection (no hang, no panic) once the client stopped sending,
/// and its first bytes are the greeting.
pub fn nbd_session(config_bits: u8, client: &[u8]) {
    use mkmodule_blockdev::MemoryDevice;
    use mkmodule_nbd::{null_logger, Server, ServerConfig};
    let content: Vec<u8> = (0..16384u32).map(|i| (i * 7 % 253) as u8).collect();
    let mut disk = MemoryDevice::new(content).with_preferred_block_size(4096);
    if config_bits & 1 != 0 {
        disk = disk.writable();
    }
    if config_bits & 2 != 0 {
        disk = disk.with_zero_extents(4096);
    }
    let mut config = ServerConfig::new()
        .with_export("disk", "fuzzed disk", Arc::new(disk))
        .with_export("empty", "", Arc::new(MemoryDevice::new(Vec::new())))
        .with_workers(1)
        .with_max_in_flight(4)
        .with_max_in_flight_bytes(1 << 20)
        .with_handshake_timeout(Duration::from_secs(5))
        .with_trace(config_bits & 8 != 0)
        .with_logger(null_logger());
    config.allow_list = config_bits & 4 == 0;
    let (server_end, mut client_end) = UnixStream::pair().expect("socketpair");
    let bytes = client.to_vec();
    let talker = std::thread::spawn(move || {
        let _ = client_end.write_all(&bytes);
        let _ = client_end.shutdown(Shutdown::Write);
        let mut head = [0u8; 8];
        let got = client_end.read_exact(&mut head).map(|()| head);
        let _ = std::io::copy(&mut client_end, &mut std::io::sink());
        got
    });
    let reason = Server::serve_connection(config, server_end).expect("valid config");
    assert!(!reason.is_empty());
    let head = talker.join().expect("client thread");
    assert_eq!(head.ok().as_ref(), Some(b"NBDMAGIC"), "no greeting");
}

pub mod overlay;
