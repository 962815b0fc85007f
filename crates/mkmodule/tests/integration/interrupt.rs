//! SIGINT while `create`, `extract` or `commit` writes its output: the process ends with status
//! 130, and the directory holds neither a file under the output name nor a temporary file
//! beside it.
//!
//! The signal is sent once the temporary file (`.OUT.PID.RANDOM.partial`) exists, so it lands
//! while the output is being written. `create` reads a pipe that stays silent, so it waits there
//! for as long as it takes. `extract` and `commit` read files; their inputs are large (and
//! `commit` compresses with xz on one thread), and should a run still finish before the signal
//! arrives, it is repeated with a larger input.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mkmodule_blockdev::{BlockDevice, FileDevice};
use mkmodule_overlay::{Overlay, OverlayOptions};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mkmodule")
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Writes `len` bytes of word-like text (compressible, but not trivially) to `path`.
fn write_text(path: &Path, len: usize) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut file = std::io::BufWriter::new(fs::File::create(path).unwrap());
    let mut written = 0;
    let mut word = Vec::with_capacity(16);
    while written < len {
        word.clear();
        let r = next();
        for i in 0..(2 + r % 8) {
            word.push(b'a' + ((r >> (8 + 3 * i)) % 26) as u8);
        }
        word.push(b' ');
        let take = word.len().min(len - written);
        file.write_all(&word[..take]).unwrap();
        written += take;
    }
    file.flush().unwrap();
}

/// A child process that is killed if the test fails before it is reaped.
struct Guarded(Option<Child>);

impl Guarded {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the child is not reaped yet")
    }

    /// Hands the child over for reaping.
    fn take(&mut self) -> Child {
        self.0.take().expect("the child is reaped once")
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How a run that was to be interrupted ended.
enum Outcome {
    /// SIGINT was sent while the temporary file existed; the exit status and stderr.
    Interrupted(ExitStatus, String),
    /// The command finished before its temporary file was seen.
    FinishedFirst,
}

/// Runs the binary in `dir` and sends SIGINT as soon as the temporary file for `output`
/// appears.
fn interrupt_while_writing(dir: &Path, args: &[&str], output: &str) -> Outcome {
    let child = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Guarded(Some(child));
    // Standard input stays open and silent until the end.
    let stdin = child.child().stdin.take();
    let prefix = format!(".{output}.{}.", child.child().id());
    let started = Instant::now();
    loop {
        if entries(dir)
            .iter()
            .any(|n| n.starts_with(&prefix) && n.ends_with(".partial"))
        {
            break;
        }
        if child.child().try_wait().unwrap().is_some() {
            drop(stdin);
            let out = child.take().wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{args:?} failed on its own: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return Outcome::FinishedFirst;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no temporary file appeared for {args:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = child.child().id().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(sent.success());
    let out = child.take().wait_with_output().unwrap();
    drop(stdin);
    Outcome::Interrupted(
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `job` (which prepares its inputs in a fresh directory for the given size and returns
/// the arguments) with growing inputs until one run is interrupted while writing, then checks
/// that it left nothing behind.
fn assert_interrupt_leaves_nothing(
    output: &str,
    sizes: &[usize],
    job: impl Fn(&Path, usize) -> Vec<String>,
) {
    for &size in sizes {
        let dir = tempfile::tempdir().unwrap();
        let args = job(dir.path(), size);
        let before = entries(dir.path());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match interrupt_while_writing(dir.path(), &args, output) {
            Outcome::Interrupted(status, stderr) => {
                assert!(!status.success(), "{args:?}: {stderr}");
                assert_eq!(status.code(), Some(130), "{args:?}: {stderr}");
                assert!(!dir.path().join(output).exists(), "{args:?}");
                assert_eq!(
                    entries(dir.path()),
                    before,
                    "{args:?} left files behind after SIGINT"
                );
                return;
            }
            Outcome::FinishedFirst => continue,
        }
    }
    panic!("every run of {output} finished before it could be interrupted");
}

/// Makes an empty overlay file over the raw file `base`, as `serve --cow FILE` would.
fn make_overlay(base: &Path, overlay: &Path) {
    let device: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(base).unwrap());
    let overlay = Overlay::create(overlay, device, &OverlayOptions::default()).unwrap();
    overlay.flush().unwrap();
}

fn path_arg(path: PathBuf) -> String {
    path.to_str().unwrap().to_string()
}

#[test]
fn sigint_during_create_leaves_nothing() {
    assert_interrupt_leaves_nothing("out.img", &[0], |_, _| {
        ["-", "-o", "out.img", "-q"].map(String::from).to_vec()
    });
}

#[test]
fn sigint_during_extract_leaves_nothing() {
    assert_interrupt_leaves_nothing("out.raw", &[64 << 20, 256 << 20, 512 << 20], |dir, size| {
        write_text(&dir.join("in.raw"), size);
        let made = Command::new(bin())
            .args(["in.raw", "-o", "in.img", "-q", "-c", "zlib:1"])
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(made.success());
        fs::remove_file(dir.join("in.raw")).unwrap();
        ["extract", "in.img", "-o", "out.raw", "-q", "-j", "1"]
            .map(String::from)
            .to_vec()
    });
}

#[test]
fn sigint_during_commit_leaves_nothing() {
    assert_interrupt_leaves_nothing("new.img", &[16 << 20, 64 << 20], |dir, size| {
        let base = dir.join("base.raw");
        write_text(&base, size);
        make_overlay(&base, &dir.join("base.cow"));
        let (base, cow) = (path_arg(base), path_arg(dir.join("base.cow")));
        vec![
            "commit".into(),
            base,
            cow,
            "-o".into(),
            "new.img".into(),
            "-q".into(),
            "-c".into(),
            "xz".into(),
            "--format".into(),
            "v4".into(),
            "-j".into(),
            "1".into(),
        ]
    });
}
