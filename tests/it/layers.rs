//! The library's layers point one way (docs/architecture.md, "Layers"): each top-level module may
//! use only the modules listed for it below, and the list itself has no circle. A `use` that
//! breaks this fails here, naming the file and the edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each module of the library and the modules it may use.
const ALLOWED: &[(&str, &[&str])] = &[
    ("time", &[]),
    ("retry", &[]),
    ("model", &["time"]),
    ("bandit", &["time", "model"]),
    ("synth", &["time", "model", "bandit"]),
    ("sim", &["time", "model", "bandit", "eval", "synth"]),
    ("eval", &["time", "model", "bandit"]),
    ("source", &["time", "model", "retry"]),
    ("store", &["time", "model", "bandit", "retry"]),
    (
        "dataflow",
        &[
            "time", "model", "bandit", "eval", "retry", "source", "store",
        ],
    ),
    (
        "serve",
        &[
            "time", "model", "bandit", "eval", "retry", "source", "store",
        ],
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file names through `crate::` (in `use` lines, groups and paths).
fn crate_modules(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::X, b}`: every first segment inside the braces at depth 0.
            let mut depth = 0;
            let mut item = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        used.extend(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(ch);
            }
            used.extend(first_segment(&item));
        } else {
            used.extend(first_segment(rest));
        }
    }
    used
}

fn first_segment(path: &str) -> Option<String> {
    let name: String = path
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

#[test]
fn the_allowed_uses_form_no_circle() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    // Depth-first over the allowed edges; a module seen again on the current path is a circle.
    fn visit<'a>(
        m: &'a str,
        allowed: &BTreeMap<&'a str, &'a [&'a str]>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        assert!(!path.contains(&m), "circle: {path:?} -> {m}");
        if done.contains(m) {
            return;
        }
        path.push(m);
        for dep in allowed[m].iter() {
            assert!(
                allowed.contains_key(dep),
                "{m} may use {dep}, which is not listed"
            );
            visit(dep, allowed, path, done);
        }
        path.pop();
        done.insert(m);
    }
    let mut done = BTreeSet::new();
    for m in allowed.keys() {
        visit(m, &allowed, &mut Vec::new(), &mut done);
    }
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let modules: Vec<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect();
    for m in &modules {
        assert!(
            allowed.contains_key(m.as_str()),
            "src/lib.rs declares `{m}`, which tests/it/layers.rs does not place in a layer"
        );
    }
    let mut breaks = Vec::new();
    for m in &modules {
        let mut files = Vec::new();
        let dir = src.join(m);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
        let file = src.join(format!("{m}.rs"));
        if file.is_file() {
            files.push(file);
        }
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for used in crate_modules(&text) {
                if used != *m && !allowed[m.as_str()].contains(&used.as_str()) {
                    breaks.push(format!("{}: {m} uses {used}", file.display()));
                }
            }
        }
    }
    assert!(
        breaks.is_empty(),
        "uses against the layers:\n{}",
        breaks.join("\n")
    );
}

#[test]
fn the_use_reader_sees_paths_groups_and_nested_groups() {
    let text = "use crate::model::{A, B};\nuse crate::{time, store::{X, Y}, bandit::Z};\n\
                fn f() { crate::source::open(); }\n// crate::serve in a comment\n";
    let found: Vec<String> = crate_modules(text).into_iter().collect();
    assert_eq!(found, ["bandit", "model", "source", "store", "time"]);
}
