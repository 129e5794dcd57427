//! The crate's shape, checked: no two modules import each other in a circle, and
//! no module holds more than 700 lines of code besides its tests. Modules are
//! files under `src/`; a reference is any `crate::` or `super::` path in the
//! code before a file's `#[cfg(test)] mod tests`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 700;

/// A module: its path from the crate root (`["fs", "read"]`), its code without
/// tests.
struct Module {
    path: Vec<String>,
    code: String,
    file: PathBuf,
}

fn modules() -> Vec<Module> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let file = entry.unwrap().path();
            if file.is_dir() {
                dirs.push(file);
                continue;
            }
            let relative = file.strip_prefix(&src).unwrap().with_extension("");
            let mut path: Vec<String> = relative
                .iter()
                .map(|c| c.to_str().unwrap().to_string())
                .collect();
            match path.last().map(String::as_str) {
                Some("main") if path.len() == 1 => continue, // the binary
                Some("lib") if path.len() == 1 => path.clear(),
                Some("mod") => {
                    path.pop();
                }
                _ => {}
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let code = match text.find("#[cfg(test)]\nmod tests") {
                Some(end) => text[..end].to_string(),
                None => text,
            };
            out.push(Module { path, code, file });
        }
    }
    out
}

/// The leading identifiers of a path: `a::b::{c, d}` and `a::b::C` give `a, b, ..`.
fn idents(text: &str) -> Vec<String> {
    text.split("::")
        .map(|seg| {
            seg.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .take_while(|seg| !seg.is_empty())
        .collect()
}

/// The module paths named after each `crate::` and `super::` in `code`, read
/// from module `at` (whose file is a `mod.rs` or `lib.rs` when `is_dir`).
fn references(at: &[String], is_dir: bool, code: &str) -> Vec<Vec<String>> {
    // `super` of a file module is its parent; of a directory module, the
    // directory's parent too.
    let mut parent = at.to_vec();
    if !is_dir || !parent.is_empty() {
        parent.pop();
    }
    let mut out = Vec::new();
    for (marker, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut rest = code;
        while let Some(i) = rest.find(marker) {
            let preceded = rest[..i].chars().last();
            rest = &rest[i + marker.len()..];
            if preceded.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // `self::super::`, `foo_crate::`: not a path from here
            }
            // `use crate::{a::b, c}` names each item of the group.
            let items: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group[..group.find('}').unwrap_or(group.len())]
                    .split(',')
                    .map(str::trim)
                    .collect(),
                None => vec![rest],
            };
            for item in items {
                let mut path = base.clone();
                path.extend(idents(item));
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn no_module_is_larger_than_the_limit() {
    for module in modules() {
        let lines = module.code.lines().count();
        assert!(
            lines <= MAX_LINES,
            "{} has {lines} lines of code besides its tests (at most {MAX_LINES}): split it by concern",
            module.file.display()
        );
    }
}

#[test]
fn no_modules_import_each_other_in_a_circle() {
    let modules = modules();
    let known: BTreeSet<Vec<String>> = modules.iter().map(|m| m.path.clone()).collect();
    // Edges between siblings: `a` uses `b` when code in `a` (or below it) names
    // `b` (or something below it), and both have the same parent.
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for module in &modules {
        let is_dir = module.file.ends_with("mod.rs") || module.file.ends_with("lib.rs");
        for reference in references(&module.path, is_dir, &module.code) {
            // The deepest module the path names.
            let target = (0..=reference.len())
                .rev()
                .map(|n| reference[..n].to_vec())
                .find(|p| known.contains(p))
                .unwrap_or_default();
            let common = module
                .path
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == module.path.len() || common == target.len() {
                continue; // a module and its own ancestor or descendant
            }
            edges
                .entry(module.path[..=common].to_vec())
                .or_default()
                .insert(target[..=common].to_vec());
        }
    }
    // Depth-first search for a path that comes back to where it started.
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let circle: Vec<String> = stack[at..]
                .iter()
                .chain([node])
                .map(|p| p.join("::"))
                .collect();
            panic!(
                "modules import each other in a circle: {}",
                circle.join(" -> ")
            );
        }
        if !done.insert(node.clone()) {
            return;
        }
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            visit(next, edges, stack, done);
        }
        stack.pop();
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        visit(node, &edges, &mut Vec::new(), &mut done);
    }
    assert!(edges.len() > 10, "the check found the modules' imports");
}
