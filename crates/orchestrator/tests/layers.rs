//! The orchestrator's modules import each other only as [`ALLOWED`] says.
//! The lower rooms are crates (http1, protocol, upstream, routing, store):
//! Cargo refuses an upward import from them. Inside this crate, this test
//! reads each library file (tests left out), finds the top-level modules it
//! names (`crate::x`, `crate::{x, y}`, `super::` up to the root) and checks
//! them against a whitelist that cannot hold a cycle.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each top-level module and the modules it may import, higher rooms first
/// (an arrow points down the list only). `app` wires everything; nothing
/// else imports `app`, `api` or `edge`; the readers of routing state
/// (`proxy`, `tls`, `ops`) never import `registry`, its only writer.
#[rustfmt::skip]
const ALLOWED: &[(&str, &[&str])] = &[
    ("app", &["api", "config", "data", "edge", "managed", "ops", "ownership", "provision", "proxy", "registry", "routing", "store", "tls", "upgrade"]),
    ("testing", &["edge", "proxy", "routing"]),
    ("admin", &["config", "data", "managed", "ownership", "provision", "store"]),
    ("api", &["ops", "ownership", "provision", "proxy", "registry", "routing", "store", "upgrade"]),
    ("edge", &["ops", "proxy", "tls"]),
    ("data", &["managed", "ops", "provision", "store"]),
    ("config", &["proxy", "tls"]),
    ("registry", &["ops", "routing", "store", "upstream"]),
    ("provision", &["ownership", "private_file", "store"]),
    ("ownership", &["ops", "store"]),
    ("proxy", &["routing", "tls", "upstream"]),
    ("tls", &["routing", "store"]),
    ("ops", &["routing", "store"]),
    ("managed", &["private_file"]),
    ("private_file", &[]),
    ("upgrade", &[]),
];

/// Every library source file and its module path (`registry/health.rs` is
/// `["registry", "health"]`), without the binary (`main.rs`, `cli/`) and
/// test files.
fn sources() -> Vec<(PathBuf, Vec<String>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (mut out, mut dirs) = (Vec::new(), vec![src.clone()]);
    while let Some(dir) = dirs.pop() {
        for path in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()) {
            let rel = path.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into()).collect();
            parts.retain(|p| p != "mod");
            if path.is_dir() {
                dirs.push(path);
            } else if !["lib", "main", "cli"].contains(&parts[0].as_str())
                && parts.last().is_some_and(|p| p != "tests")
            {
                out.push((path, parts));
            }
        }
    }
    out
}

/// The code without comments, string literals and a trailing
/// `#[cfg(test)] mod tests { … }`.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    };
    let (b, mut out, mut i) = (text.as_bytes(), String::new(), 0);
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            i += rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
        } else if rest.starts_with(b"/*") {
            i += 2 + text[i + 2..].find("*/").map_or(rest.len(), |n| n + 2);
        } else if rest.starts_with(b"r#\"") || rest.starts_with(b"r\"") {
            let hashes = rest[1..].iter().take_while(|&&c| c == b'#').count();
            let end = format!("\"{}", "#".repeat(hashes));
            let body = i + 2 + hashes;
            i = body
                + text[body..]
                    .find(&end)
                    .map_or(b.len() - body, |n| n + end.len());
        } else if rest[0] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else {
            out.push(char::from(rest[0]));
            i += 1;
        }
    }
    out
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level modules `code` names, for a file at `depth` below the root.
fn imports(code: &str, depth: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let root = "super::".repeat(depth);
    for prefix in ["crate::", root.as_str()] {
        for (at, _) in code.match_indices(prefix) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue; // `x::crate::` or a longer `super::` chain
            }
            let after = &code[at + prefix.len()..];
            if let Some(group) = after.strip_prefix('{') {
                let (mut level, mut start) = (0, true);
                for (n, c) in group.char_indices() {
                    match c {
                        '{' => level += 1,
                        '}' if level == 0 => break,
                        '}' => level -= 1,
                        ',' if level == 0 => start = true,
                        c if start && !c.is_whitespace() => {
                            out.insert(ident(&group[n..]));
                            start = false;
                        }
                        _ => {}
                    }
                }
            } else if !after.starts_with("super::") {
                out.insert(ident(after));
            }
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

/// Where `module` is in [`ALLOWED`]; `None` for a crate.
fn rank(module: &str) -> Option<usize> {
    ALLOWED.iter().position(|(m, _)| *m == module)
}

#[test]
fn modules_import_only_what_the_whitelist_allows() {
    let mut wrong = Vec::new();
    for (path, parts) in sources() {
        let (at, top) = (path.display(), &parts[0]);
        let Some(rank) = rank(top) else {
            wrong.push(format!("{at}: module {top} is not in ALLOWED"));
            continue;
        };
        let text = code(&std::fs::read_to_string(&path).unwrap());
        for import in imports(&text, parts.len()) {
            if import != *top && !ALLOWED[rank].1.contains(&import.as_str()) {
                wrong.push(format!("{at}: {top} → {import}"));
            }
        }
    }
    assert!(wrong.is_empty(), "not in ALLOWED:\n{}", wrong.join("\n"));
}

/// Each module may import only modules listed after it: no cycle can pass.
#[test]
fn the_whitelist_points_down_the_list() {
    for (n, (module, imports)) in ALLOWED.iter().enumerate() {
        for import in *imports {
            let down = rank(import).is_none_or(|r| r > n);
            assert!(down, "{module} → {import} points up");
        }
    }
}

#[test]
fn the_scanner_sees_imports_and_ignores_comments_and_strings() {
    let text = "use crate::{api::{self, Calls}, store};\n// crate::edge\nlet s = \"crate::tls\";\n\
                let r = r#\"crate::ops\"#;\nsuper::super::routing::x(); super::sibling();\n\
                crate::proxy::handle();\n#[cfg(test)]\nmod tests {\n use crate::app;\n}\n";
    let want = ["api", "proxy", "routing", "store"].map(String::from);
    assert_eq!(imports(&code(text), 2), want.into());
}
