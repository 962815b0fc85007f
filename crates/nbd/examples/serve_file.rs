//! Serve a raw file read-only over NBD until killed, for manual testing:
//! `cargo run -p mkmodule-nbd --example serve_file -- FILE [127.0.0.1:10809] [--trace]`.

use std::sync::Arc;

use mkmodule_blockdev::FileDevice;
use mkmodule_nbd::{Listener, Server, ServerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: serve_file FILE [ADDR] [--trace]");
        std::process::exit(2);
    };
    let addr = args
        .get(1)
        .filter(|a| !a.starts_with("--"))
        .map_or("127.0.0.1:10809", String::as_str)
        .parse()?;
    let name = std::path::Path::new(path)
        .file_stem()
        .map_or_else(|| "disk".into(), |s| s.to_string_lossy().into_owned());
    let export = FileDevice::open(path)?;
    let config = ServerConfig::new()
        .with_export(name.clone(), path.clone(), Arc::new(export))
        .with_trace(args.iter().any(|a| a == "--trace"));
    let server = Server::start(config, [Listener::bind_tcp(addr)?])?;
    eprintln!("serving {path} as nbd://{addr}/{name} (and as the default export)");
    server.wait();
    Ok(())
}
