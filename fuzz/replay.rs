// Shared by every crate's tests/fuzz_regressions.rs through `include!`: the replay loop
// over fuzz/corpus/<target> and fuzz/regressions/<target>.

/// Runs `check` over every file in fuzz/corpus/<target> and fuzz/regressions/<target>, and
/// fails naming every file that panicked. The corpus must exist (a moved directory would
/// otherwise make this test pass without checking anything); regressions may not.
fn replay(target: &str, check: fn(&[u8])) {
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files = Vec::new();
    for (kind, required) in [("corpus", true), ("regressions", false)] {
        let dir = fuzz.join(kind).join(target);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(_) if !required => continue,
            Err(e) => panic!("cannot read {}: {e}", dir.display()),
        };
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let hidden = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if path.is_file() && !hidden {
                files.push(path);
            }
        }
    }
    assert!(!files.is_empty(), "no corpus for fuzz target {target}");
    files.sort();
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("read fuzz input");
            std::panic::catch_unwind(|| check(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target}: inputs that fail: {failed:#?}");
}
