//! User space depends downwards only: each top-level module of `netns-user` may use the
//! modules listed before it here, never one after (no cycles, no layer reaching up). Read
//! from the source, so a new `use` that breaks the order fails the build's tests.

use std::{collections::BTreeMap, fs, path::Path};

/// The layers, lowest first (see netns-user/src/lib.rs).
const LAYERS: &[&str] = &["sys", "config", "bpf", "nat", "ops", "lab", "probe"];

/// The `crate::<module>` paths a file names, written out or in a `use crate::{...}` group.
fn crate_refs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The first path segment of each item at the group's top level.
            let mut depth = 0;
            let mut item_start = true;
            let mut word = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        if !word.is_empty() {
                            out.push(std::mem::take(&mut word));
                        }
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if c.is_alphanumeric() || c == '_' => {
                        if item_start {
                            word.push(c);
                        }
                    }
                    _ => {
                        if !word.is_empty() {
                            out.push(std::mem::take(&mut word));
                            item_start = false;
                        }
                    }
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn user_space_modules_depend_downwards_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../netns-user/src");
    let rank: BTreeMap<&str, usize> = LAYERS.iter().enumerate().map(|(i, l)| (*l, i)).collect();
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut checked = 0;
    let mut wrong = Vec::new();
    for f in &all {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        let Some(&mine) = rank.get(top.as_str()) else {
            continue; // lib.rs and main.rs: the top, they may use anything.
        };
        checked += 1;
        let text = fs::read_to_string(f).unwrap();
        for r in crate_refs(&text) {
            if let Some(&theirs) = rank.get(r.as_str())
                && theirs > mine
            {
                wrong.push(format!("{} uses crate::{r}", rel.display()));
            }
        }
    }
    assert!(
        checked >= 20,
        "only {checked} files looked at: is the path right?"
    );
    assert!(wrong.is_empty(), "upward dependencies:\n{}", wrong.join("\n"));
}

#[test]
fn the_reference_finder_sees_groups_and_paths() {
    let refs = crate_refs("use crate::{bpf::{self, X}, sys::netns, config};\nlet x = crate::ops::y();");
    assert_eq!(refs, ["bpf", "sys", "config", "ops"]);
}

/// The `[dependencies]` (normal, build and dev) a crate's manifest names.
fn manifest_deps(krate: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("Cargo.toml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    let mut in_deps = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line.ends_with("dependencies]");
        } else if in_deps && let Some((name, _)) = line.split_once('=') {
            out.push(name.trim().to_owned());
        }
    }
    out
}

/// The product (the NAT's programs, the library and `netns-nat`) depends neither on the
/// benchmark nor on the test kit, nor carries what only they need; both build on it.
#[test]
fn the_product_depends_on_neither_the_benchmark_nor_the_test_kit() {
    for krate in ["netns-user", "netns-ebpf", "netns-common"] {
        let deps = manifest_deps(krate);
        assert!(!deps.is_empty(), "{krate}: no dependencies read");
        for not_product in [
            "netns-bench",
            "netns-bench-ebpf",
            "netns-testkit",
            "plotters",
            "bytes",
        ] {
            assert!(
                !deps.iter().any(|d| d == not_product),
                "{krate} depends on {not_product}"
            );
        }
    }
    let mut all = Vec::new();
    files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../netns-user/src"),
        &mut all,
    );
    for f in all {
        let text = fs::read_to_string(&f).unwrap();
        for name in ["netns_bench", "netns_testkit"] {
            assert!(!text.contains(name), "{} names {name}", f.display());
        }
    }
    for kit in ["netns-bench", "netns-testkit"] {
        assert!(manifest_deps(kit).iter().any(|d| d == "netns-user"), "{kit}");
    }
}
