//! Guards the layering against calls that run up the stack, import cycles, and I/O in the core.
//!
//! The server's modules form layers, and a module may only import from a lower one:
//! `http` -> `node` -> (`alloc`, `wal`) -> the core crate, with the leaves (`sync`, `clock`,
//! `metrics`, `idempotency`, `config`) below. Inside a module directory the files import each
//! other without a cycle. The core crate (`crates/core`) reads no clock and does no I/O: the
//! compiler keeps tokio out (it is not a dependency), this test keeps `std`'s out.
//!
//! The imports are read from the source text (`crate::a::b` paths outside comments), which is
//! what a reader sees; a `use` hidden in a macro would escape it, and none exists.

#![allow(clippy::expect_used, reason = "test code: a failed expect is a failed test")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The server's top-level modules and their layers: an import must go to a lower number.
const LAYERS: &[(&str, u32)] = &[
    ("sync", 0),
    ("clock", 0),
    ("config", 1),
    ("metrics", 1),
    ("idempotency", 1),
    ("alloc", 1),
    ("wal", 2),
    ("cluster", 3),
    ("node", 4),
    ("http", 5),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under `src/` (`wal/writer.rs` -> `wal::writer`, `node/mod.rs` ->
/// `node`).
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> =
        relative.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without its comments (line comments and doc comments; no block
/// comments are used in this tree).
fn code_of(text: &str) -> String {
    let mut code = String::with_capacity(text.len());
    for line in text.lines() {
        code.push_str(line.find("//").map_or(line, |at| &line[..at]));
        code.push('\n');
    }
    code
}

/// A path's leading module segments, two at most: `wal::record::{Record` -> `wal::record`,
/// `metrics::Op::Reserve` -> `metrics`.
fn module_path(path: &str) -> Option<String> {
    let segments: Vec<&str> = path
        .split("::")
        .map(|s| s.trim().split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or(""))
        .take_while(|s| s.chars().next().is_some_and(char::is_lowercase))
        .take(2)
        .collect();
    (!segments.is_empty()).then(|| segments.join("::"))
}

/// The modules a file names through `crate::` (as `use` or in a path), grouped imports
/// (`use crate::{a::B, c}`) included.
fn imports(text: &str) -> BTreeSet<String> {
    let code = code_of(text);
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `livestock_crate::`, not ours
        }
        let path = &code[at + "crate::".len()..];
        match path.strip_prefix('{') {
            Some(group) => {
                let group = group.split('}').next().unwrap_or("");
                found.extend(group.split(',').filter_map(module_path));
            }
            None => found.extend(module_path(path)),
        }
    }
    found
}

/// The server's files by module, with the modules each imports.
fn server_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        let text = std::fs::read_to_string(file).expect("a source file");
        // `crate::wal::Wal` names the module `wal`; `crate::wal::record::x` names `wal::record`.
        let targets = imports(&text)
            .into_iter()
            .map(|path| if modules.contains(&path) { path } else { top(&path).to_owned() })
            .filter(|target| *target != module && !module.starts_with(&format!("{target}::")))
            .collect();
        graph.insert(module, targets);
    }
    graph
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(name, _)| *name == top(module)).map(|(_, layer)| *layer)
}

#[test]
fn imports_point_down_the_layers() {
    let graph = server_graph();
    let mut upward = Vec::new();
    for (module, targets) in &graph {
        let Some(from) = layer(module) else { continue };
        for target in targets {
            let to = layer(target)
                .unwrap_or_else(|| panic!("{module} imports {target}, a module with no layer"));
            if top(target) != top(module) && to >= from {
                upward.push(format!("{module} (layer {from}) -> {target} (layer {to})"));
            }
        }
    }
    assert!(upward.is_empty(), "imports that do not point down:\n{}", upward.join("\n"));
    for top_level in graph.keys().filter(|m| !m.contains("::")) {
        let known = layer(top_level).is_some() || ["lib", "main"].contains(&top_level.as_str());
        assert!(known, "module {top_level} has no layer in LAYERS");
    }
}

#[test]
fn no_module_imports_form_a_cycle() {
    let graph = server_graph();
    // Depth-first search with colours; a grey target is a back edge, i.e. a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        White,
        Grey,
        Black,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        colour: &mut BTreeMap<String, Colour>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        colour.insert(node.to_owned(), Colour::Grey);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match colour.get(next).copied().unwrap_or(Colour::White) {
                Colour::Grey => {
                    let from = stack.iter().position(|m| m == next).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Colour::White => {
                    if let Some(cycle) = visit(next, graph, colour, stack) {
                        return Some(cycle);
                    }
                }
                Colour::Black => {}
            }
        }
        stack.pop();
        colour.insert(node.to_owned(), Colour::Black);
        None
    }
    let mut colour = BTreeMap::new();
    for module in graph.keys() {
        if colour.get(module).copied().unwrap_or(Colour::White) == Colour::White {
            let cycle = visit(module, &graph, &mut colour, &mut Vec::new());
            assert!(cycle.is_none(), "import cycle: {}", cycle.unwrap_or_default().join(" -> "));
        }
    }
}

#[test]
fn the_import_reader_sees_what_it_must() {
    let text = "use crate::wal::record::{Record, KeptReply};\n\
                // use crate::http::nothing;\n\
                let x = crate::metrics::Op::Reserve; let y = crate::node::Node::new();\n\
                use crate::{\n    alloc::Allocator,\n    sync,\n};\n\
                use livestock_crate::other;";
    let found: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(found, ["alloc", "metrics", "node", "sync", "wal::record"]);
}

#[test]
fn the_core_crate_reads_no_clock_and_does_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/core/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() >= 8, "the core's files: {files:?}");
    let forbidden = [
        "std::fs",
        "std::net",
        "std::io",
        "std::thread",
        "std::process",
        "std::env",
        "SystemTime",
        "Instant",
        "tokio",
        "Utc::now",
        "Local::now",
    ];
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a source file");
        for (n, line) in code_of(&text).lines().enumerate() {
            for word in forbidden {
                assert!(
                    !line.contains(word),
                    "{}:{}: {word} in the pure core",
                    file.display(),
                    n + 1
                );
            }
        }
    }
}
