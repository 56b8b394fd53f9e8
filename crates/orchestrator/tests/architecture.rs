//! docs/architecture.md names every room there is: each top-level module of
//! the orchestrator (`src/x.rs` or `src/x/`), each file of the control
//! plane, and each crate of the workspace. A room added or removed without
//! the document following fails here.

#![allow(clippy::unwrap_used)]

use std::path::Path;

fn doc() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join("docs/architecture.md")).unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() { format!("{name}/") } else { name }
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_room_of_the_orchestrator_is_in_the_document() {
    let (doc, src) = (doc(), Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let missing: Vec<String> = names(&src)
        .into_iter()
        .map(|n| format!("src/{n}"))
        .filter(|n| !doc.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/architecture.md: {missing:?}"
    );
    let control: Vec<String> = names(&src.join("registry"))
        .into_iter()
        .filter(|n| n.ends_with(".rs") && n != "mod.rs" && n != "double.rs")
        .filter(|n| !doc.contains(n.as_str()))
        .collect();
    assert!(
        control.is_empty(),
        "registry files not described: {control:?}"
    );
}

#[test]
fn every_crate_of_the_workspace_is_in_the_document() {
    let doc = doc();
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let missing: Vec<String> = names(&crates)
        .into_iter()
        .map(|n| format!("crates/{n}"))
        .filter(|n| !doc.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/architecture.md: {missing:?}"
    );
}
