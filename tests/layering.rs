//! The library's top-level modules depend on each other without cycles, and
//! the `# Layout` doc of `src/lib.rs` names every one of them. A module's
//! dependencies are the `crate::<module>` paths in its files (imports and
//! inline paths; comments and `#[cfg(test)] mod tests` left out).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

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

/// The code of a file that counts: no comment lines, no unit-test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines().filter(|l| !l.trim_start().starts_with("//")).map(|l| format!("{l}\n")).collect()
}

/// The top-level modules `code` names through `crate::`, grouped imports
/// (`use crate::{a, b::c}`) included.
fn referenced(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // First-level names of the group; nested groups belong to them.
            let (mut depth, mut start) = (0, 0);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.insert(ident(group[start..i].trim()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(group[start..i].trim()));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

/// Module → module it uses → the files that do.
fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut g = Graph::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        if first == "lib.rs" || first == "bin" {
            continue;
        }
        let module = first.trim_end_matches(".rs").to_string();
        let uses = g.entry(module.clone()).or_default();
        for other in referenced(&code(&std::fs::read_to_string(&file).unwrap())) {
            if other != module {
                uses.entry(other).or_default().insert(rel.display().to_string());
            }
        }
    }
    g
}

/// A cycle, as the modules along it (first = last), if there is one.
fn cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(m: &str, g: &Graph, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut c = path[at..].to_vec();
            c.push(m.to_string());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for next in g.get(m).into_iter().flat_map(|u| u.keys()) {
            if let Some(c) = visit(next, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys().find_map(|m| visit(m, g, &mut Vec::new(), &mut done))
}

#[test]
fn the_modules_depend_on_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    assert!(g.len() > 10, "found only {:?}", g.keys());
    if let Some(c) = cycle(&g) {
        let steps: Vec<String> =
            c.windows(2).map(|w| format!("  {} -> {} (in {})", w[0], w[1], g[&w[0]][&w[1]].iter().cloned().collect::<Vec<_>>().join(", "))).collect();
        panic!("module cycle {}:\n{}", c.join(" -> "), steps.join("\n"));
    }
}

#[test]
fn nothing_in_the_library_uses_the_local_stack() {
    let g = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let users: Vec<_> = g.iter().filter_map(|(m, uses)| uses.get("stack").map(|files| (m, files))).collect();
    assert!(users.is_empty(), "the daemon's modules use the developer stack: {users:?}");
}

#[test]
fn the_layout_doc_names_every_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let doc: String = lib.lines().filter(|l| l.starts_with("//!")).collect::<Vec<_>>().join("\n");
    let declared: Vec<&str> = lib.lines().filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';')).collect();
    assert!(declared.len() > 10, "{declared:?}");
    let missing: Vec<&&str> = declared.iter().filter(|m| !doc.contains(&format!("[`{m}`]"))).collect();
    assert!(missing.is_empty(), "src/lib.rs # Layout does not describe {missing:?}");
}

#[test]
fn the_check_finds_a_cycle_and_reads_grouped_imports() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("a.rs"), "use crate::{c::X, b::{self, y}};\n// crate::d in a comment\n").unwrap();
    std::fs::write(src.join("b/mod.rs"), "fn f() { crate::c::g() }\n#[cfg(test)]\nmod tests { use crate::a; }\n").unwrap();
    std::fs::write(src.join("c.rs"), "pub fn g() {}\n").unwrap();
    let g = graph(src);
    assert_eq!(g["a"].keys().collect::<Vec<_>>(), ["b", "c"]);
    assert_eq!(g["b"].keys().collect::<Vec<_>>(), ["c"], "tests do not count");
    assert_eq!(cycle(&g), None);
    std::fs::write(src.join("c.rs"), "use crate::a::Z;\n").unwrap();
    let c = cycle(&graph(src)).expect("a -> c -> a");
    assert_eq!(c.first(), c.last(), "{c:?}");
    assert!(c.contains(&"a".to_string()) && c.contains(&"c".to_string()), "{c:?}");
}
