//! The orchestrator's modules depend on each other one way only.
//!
//! Reads every source file of the library, finds which modules each one
//! uses (`use` declarations and inline `crate::`/`super::` paths, resolved
//! to the module that defines what is named), and checks:
//!
//! - no cycle among modules, at any depth: a parent that re-exports a child
//!   is never also used by it (children import their siblings directly);
//! - the layers: `edge → proxy → routing → upstream`, with the registry the
//!   only writer of routing state. Never `upstream → routing|proxy`,
//!   `routing → registry|health|ops`, a reader (`proxy`, `tls`, `ops`,
//!   `health`) `→ registry`, and nothing but `app` (and the `testing` hooks)
//!   `→ edge|api|app`.
//!
//! HTTP/1 rules live in the `waifus-http1` crate, which cannot import the
//! orchestrator at all. Run alone: `cargo test -p orchestrator --test layers`.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path below the crate root, `""` being the root.
type Module = String;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library source file and the module it is.
fn modules() -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src()).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            // The binary and its commands are not the library.
            if parts[0] == "main" || parts[0] == "cli" {
                continue;
            }
            if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
                parts.pop();
            }
            // Sibling test files are tests, not layers.
            if parts.last().is_some_and(|p| p == "tests") {
                continue;
            }
            out.insert(parts.join("::"), path);
        }
    }
    out
}

/// The text without comments, string and char literals, and `#[cfg(test)]`
/// modules (a test may use whatever it tests).
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"'
            || (b[i] == b'r'
                && b.get(i + 1).is_some_and(|&c| c == b'#' || c == b'"')
                && !b
                    .get(i.wrapping_sub(1))
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_'))
        {
            // A string (raw or not): skipped whole.
            let mut hashes = 0;
            if b[i] == b'r' {
                i += 1;
                while b[i] == b'#' {
                    hashes += 1;
                    i += 1;
                }
            }
            i += 1;
            loop {
                if i >= b.len() {
                    break;
                }
                if hashes == 0 && b[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if b[i] == b'"'
                    && b[i + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&c| c == b'#')
                        .count()
                        == hashes
                {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3;
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            i += 2;
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    // Drop `#[cfg(test)] mod tests { ... }` bodies.
    while let Some(at) = out.find("#[cfg(test)]") {
        let rest = &out[at..];
        let Some(open) = rest.find(['{', ';']) else {
            break;
        };
        if rest.as_bytes()[open] == b';' {
            out.replace_range(at..at + open + 1, "");
            continue;
        }
        let mut depth = 0;
        let mut end = rest.len();
        for (k, c) in rest.char_indices().skip(open) {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.replace_range(at..at + end, "");
    }
    out
}

/// The paths a `use` tree names, expanded (`a::{b, c::d}` → `a::b`, `a::c::d`).
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap_or(&tree).to_owned()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.len() - 1];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (k, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(p).into_iter().map(move |e| format!("{prefix}{e}")))
        .collect()
}

/// Every path a file names that may lead into the crate: `use` trees,
/// paths from `crate::`, `super::` or `self::`, and inline paths that start
/// with the name of one of `children` (the file's own child modules).
fn paths(code: &str, children: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let after = &rest[at + 4..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(end) = after.find(';') else { break };
        out.extend(expand(&after[..end]));
    }
    let anchors: Vec<String> = ["crate", "super", "self"]
        .iter()
        .chain(children)
        .map(|a| format!("{a}::"))
        .collect();
    for anchor in &anchors {
        let mut rest = code;
        while let Some(at) = rest.find(anchor) {
            let before = rest[..at].chars().last();
            let tail = &rest[at..];
            let len = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                out.push(tail[..len].trim_end_matches(':').to_owned());
            }
            rest = &tail[anchor.len()..];
        }
    }
    out
}

/// The module a path in `from` leads to: the longest known module it
/// starts with, after `crate::`, `super::` and `self::` are resolved and a
/// path starting with a child module's name is read as relative.
fn target(from: &str, path: &str, known: &BTreeMap<Module, PathBuf>) -> Option<Module> {
    let mut base: Vec<&str> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").collect()
    };
    let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    match segments.first().copied() {
        Some("crate") => {
            base.clear();
            segments.remove(0);
        }
        Some("super") => {
            while segments.first() == Some(&"super") {
                segments.remove(0);
                base.pop();
            }
        }
        Some("self") => {
            segments.remove(0);
        }
        Some(first) => {
            // Relative to this module: only a child module counts.
            let child = if from.is_empty() {
                first.to_owned()
            } else {
                format!("{from}::{first}")
            };
            if !known.contains_key(&child) {
                return None;
            }
        }
        None => return None,
    }
    let mut full: Vec<&str> = base;
    full.extend(segments);
    while !full.is_empty() {
        let candidate = full.join("::");
        if known.contains_key(&candidate) {
            return Some(candidate);
        }
        full.pop();
    }
    Some(String::new())
}

/// Module → modules it uses (itself excluded).
fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let known = modules();
    let mut graph = BTreeMap::new();
    for (module, path) in &known {
        let text = std::fs::read_to_string(path).unwrap();
        let prefix = if module.is_empty() {
            String::new()
        } else {
            format!("{module}::")
        };
        let children: Vec<&str> = known
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|rest| !rest.is_empty() && !rest.contains("::"))
            .collect();
        let uses: BTreeSet<Module> = paths(&code(&text), &children)
            .iter()
            .filter_map(|p| target(module, p, &known))
            .filter(|t| t != module && !t.is_empty())
            .collect();
        graph.insert(module.clone(), uses);
    }
    graph
}

/// The cycles of a graph (strongly connected components of more than one
/// module), by Tarjan's algorithm.
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct Walk<'g> {
        graph: &'g BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<Module>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

#[test]
fn no_module_imports_its_way_back() {
    let graph = graph();
    assert!(
        graph.len() > 30,
        "too few modules found: {:?}",
        graph.keys()
    );
    let found = cycles(&graph);
    let explain: Vec<String> = found
        .iter()
        .map(|c| {
            let edges: Vec<String> = c
                .iter()
                .flat_map(|a| {
                    graph[a]
                        .iter()
                        .filter(|b| c.contains(b))
                        .map(move |b| format!("{a} -> {b}"))
                })
                .collect();
            edges.join(", ")
        })
        .collect();
    assert!(found.is_empty(), "import cycles: {explain:#?}");
}

#[test]
fn layers_point_one_way() {
    let forbidden: &[(&[&str], &[&str])] = &[
        (&["upstream"], &["routing", "proxy"]),
        (&["routing"], &["registry", "health", "ops"]),
        (&["proxy", "tls", "ops", "health", "drain"], &["registry"]),
    ];
    // The crate root lists and re-exports; `app` wires; `testing` hooks in.
    let composition = ["", "app", "testing"];
    let mut wrong = Vec::new();
    for (from, uses) in graph() {
        for to in uses {
            let (a, b) = (top(&from), top(&to));
            // Relative child paths of the root are the root's own.
            if a == b {
                continue;
            }
            let layered = forbidden
                .iter()
                .any(|(froms, tos)| froms.contains(&a) && tos.contains(&b));
            let inward = ["edge", "api", "app"].contains(&b) && !composition.contains(&a);
            if layered || inward {
                wrong.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers: {wrong:#?}");
}

/// The scanner finds what it must: a test that it is not blind.
#[test]
fn the_scanner_sees_imports() {
    let known: BTreeMap<Module, PathBuf> = ["a", "a::b", "a::c", "d"]
        .iter()
        .map(|m| (m.to_string(), PathBuf::new()))
        .collect();
    let text = r#"
        use crate::d::{X, Y};
        use super::c::Z; // use crate::nothing;
        use b::W;
        fn f() { crate::d::g(); let s = "crate::a::c"; }
    "#;
    let found: BTreeSet<Module> = paths(&code(text), &[])
        .iter()
        .filter_map(|p| target("a::b", p, &known))
        .collect();
    let want: BTreeSet<Module> = ["d", "a::c"].iter().map(|s| s.to_string()).collect();
    assert_eq!(found, want);
    let g: BTreeMap<Module, BTreeSet<Module>> = [
        ("x", vec!["y"]),
        ("y", vec!["z"]),
        ("z", vec!["x"]),
        ("w", vec!["x"]),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
    .collect();
    assert_eq!(
        cycles(&g),
        vec![vec!["x".to_string(), "y".to_string(), "z".to_string()]]
    );
}
