//! The architecture rules of ARCHITECTURE.md, checked on the source text:
//!
//! * the modules of `outbox-relay` are layers, and a module uses only the layers below it
//!   (no cycles);
//! * no command of the `outbox` binary uses another command;
//! * no code file is over 600 lines, not counting its unit tests.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The layers of `outbox-relay`, lowest first. A module may use its own layer's foundation
/// modules (layer 0 modules may use each other) and anything in a lower layer; two different
/// modules of one layer above the foundation never use each other.
const LAYERS: &[&[&str]] = &[
    &[
        "error", "record", "message", "template", "retry", "duration", "urls", "stats", "health",
    ],
    &["route", "sink"],
    &["delivery"],
    &["store"],
    &["source", "source::poll", "source::cdc"],
    &["relay"],
];

const MAX_CODE_LINES: usize = 600;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file below `src`: `source/cdc/engine.rs` → `source::cdc::engine`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// The layer a module path belongs to, and the name of its component in that layer.
fn layer_of(module: &str) -> Option<(usize, &'static str)> {
    let mut best: Option<(usize, &'static str)> = None;
    for (i, layer) in LAYERS.iter().enumerate() {
        for &name in *layer {
            let inside = module == name || module.starts_with(&format!("{name}::"));
            let longer = match best {
                Some((_, b)) => name.len() > b.len(),
                None => true,
            };
            if inside && longer {
                best = Some((i, name));
            }
        }
    }
    best
}

/// The paths a source text names after `crate::`, with `use crate::{a::B, c}` groups expanded
/// (one level of braces is enough for this code base; nested groups are expanded too).
fn crate_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `outbox_crate::` or similar
        }
        expand("", rest, &mut out);
    }
    out
}

fn expand(prefix: &str, text: &str, out: &mut Vec<String>) {
    if let Some(group) = text.strip_prefix('{') {
        let mut depth = 1;
        let mut start = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' | ',' if depth == 1 => {
                    let item = group[start..i].trim();
                    if !item.is_empty() {
                        expand(prefix, item, out);
                    }
                    start = i + 1;
                    if c == '}' {
                        return;
                    }
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        return;
    }
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    let path = text[..end].trim_end_matches(':');
    let full = if prefix.is_empty() {
        path.to_string()
    } else {
        format!("{prefix}::{path}")
    };
    if text[end..].starts_with('{') && text[..end].ends_with("::") {
        expand(&full, &text[end..], out);
    } else if !full.is_empty() {
        out.push(full);
    }
}

/// `pub use module::{A, B};` lines of lib.rs: the crate-root names and the module behind them.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let mut paths = Vec::new();
        expand("", rest.trim_end_matches(';'), &mut paths);
        for p in paths {
            if let Some((module, name)) = p.rsplit_once("::") {
                map.insert(name.to_string(), module.to_string());
            }
        }
    }
    map
}

/// Source text without its `#[cfg(test)]` unit-test module (the rules are about product code).
fn code_part(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    }
}

#[test]
fn relay_modules_use_only_lower_layers() {
    let src = root().join("crates/outbox-relay/src");
    let lib = fs::read_to_string(src.join("lib.rs")).expect("read lib.rs");
    let reexports = root_reexports(&lib);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 20,
        "found only {} files in {src:?}",
        files.len()
    );
    let mut violations = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module.is_empty() {
            continue; // lib.rs: the crate root re-exports every layer
        }
        let Some((layer, name)) = layer_of(&module) else {
            violations.push(format!(
                "{module}: not in any layer of tests/architecture.rs"
            ));
            continue;
        };
        let text = fs::read_to_string(file).expect("read source file");
        for path in crate_paths(code_part(&text)) {
            let first = path.split("::").next().unwrap_or("");
            let target = match reexports.get(first) {
                Some(module) => module.clone(),
                None => path.clone(),
            };
            let Some((used_layer, used)) = layer_of(&target) else {
                continue; // a crate-root function or macro
            };
            let allowed = used == name || used_layer == 0 || used_layer < layer;
            if !allowed {
                violations.push(format!(
                    "{} uses crate::{path} ({used}, layer {used_layer}) from {name} (layer {layer})",
                    file.strip_prefix(root()).unwrap_or(file).display()
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "upward or sideways imports (see ARCHITECTURE.md, Layers):\n{}",
        violations.join("\n")
    );
}

#[test]
fn no_command_uses_another() {
    let dir = root().join("src/commands");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    let commands: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|s| s != "mod")
        .collect();
    let mut violations = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).expect("read source file");
        let own = file.file_stem().map(|s| s.to_string_lossy().into_owned());
        for other in &commands {
            if Some(other) == own.as_ref() {
                continue;
            }
            for pattern in [
                format!("super::{other}::"),
                format!("commands::{other}::"),
                format!("super::{other}}}"),
            ] {
                if code_part(&text).contains(&pattern) {
                    violations.push(format!("{}: {pattern}", file.display()));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "commands use each other (shared code belongs in settings.rs or signals.rs):\n{}",
        violations.join("\n")
    );
}

#[test]
fn no_code_file_is_over_600_lines() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    for krate in fs::read_dir(root().join("crates"))
        .expect("crates/")
        .flatten()
    {
        rust_files(&krate.path().join("src"), &mut files);
    }
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let text = fs::read_to_string(f).ok()?;
            let n = code_part(&text).lines().count();
            (n > MAX_CODE_LINES).then(|| format!("{}: {n} lines", f.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "code files over {MAX_CODE_LINES} lines (unit tests not counted); split them by job:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_checker_reads_grouped_imports() {
    assert_eq!(
        crate_paths("use crate::{a::B, c::{D, e::F}};\nlet x = crate::g::h();"),
        ["a::B", "c::D", "c::e::F", "g::h"]
    );
    assert_eq!(layer_of("source::cdc::engine"), Some((4, "source::cdc")));
    assert_eq!(layer_of("sink::kafka"), Some((1, "sink")));
}
