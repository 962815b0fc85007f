//! `mkmodule docs`: the manual page renders with man-db and the bash completions parse. Both are
//! made from the definition behind `--help`, so they know every option and its values.

use std::time::Duration;

use mkmodule_testkit::tools::{check_status, require_tool, run_in};

use crate::common_create::{ok, tempdir};

#[test]
fn docs_man_page_renders_with_man_without_warnings() {
    let dir = tempdir();
    let page = ok(dir.path(), &["docs", "man"], None);
    std::fs::write(dir.path().join("mkmodule.1"), &page).unwrap();
    require_tool("man");
    // man-db's own warning check (UTF-8 input, as `man` reads an installed page); the rendered
    // page is thrown away in the shell, so that only the warnings come back through a pipe.
    let render = "LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z mkmodule.1 \
                  >/dev/null";
    let args = ["-c", render];
    let out = run_in(Some(dir.path()), "sh", &args, Duration::from_secs(60));
    check_status("sh", &args, &out);
    let warnings: Vec<_> = String::from_utf8_lossy(&out.stderr)
        .lines()
        // Justification in a narrow column (a long word or URL) is layout, not an error.
        .filter(|line| !line.contains("cannot adjust line"))
        .map(str::to_string)
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
    let text = String::from_utf8_lossy(&page);
    for command in ["create", "extract", "verify", "commit", "bench", "serve"] {
        assert!(
            text.contains(&format!(".TH mkmodule-{command} ")),
            "{command}"
        );
    }
    assert!(text.contains("\\-\\-progress"), "--progress is documented");
}

#[test]
fn docs_bash_completions_parse_and_offer_the_progress_modes() {
    let dir = tempdir();
    let script = ok(dir.path(), &["docs", "completions", "bash"], None);
    std::fs::write(dir.path().join("mkmodule.bash"), &script).unwrap();
    let args = ["-n", "mkmodule.bash"];
    let out = run_in(Some(dir.path()), "bash", &args, Duration::from_secs(60));
    check_status("bash", &args, &out);
    let text = String::from_utf8_lossy(&script);
    assert!(
        text.contains("--progress"),
        "no --progress in the completions"
    );
    assert!(text.contains("auto bar json none"), "no progress modes");
}
