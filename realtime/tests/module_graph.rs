//! The layering of the Socket.IO and Engine.IO modules, checked from the source.
//!
//! Every file under `src/` is parsed and each path it names inside the crate (`use crate::…`,
//! `use super::…`, `super::x::f()` in code and in macro bodies) is resolved to the file that
//! defines it, following `pub use` re-exports. The rules:
//!
//! * no module of `socketio/` or `engineio/` is on a cycle, among themselves or through any
//!   other module of the crate;
//! * a codec (a module under a `codec/` folder) names no module of the crate but codecs, so
//!   the wire formats stay pure functions, testable byte for byte without a connection;
//! * the layers depend one way: in Socket.IO `server -> namespace -> socket -> state`, never
//!   back; in Engine.IO the transports use the sessions, never the other way.
//!
//! A method defined in one module on a type of another is called without any path, so the
//! graph cannot see such calls: it is the imports this checks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// A module path inside the crate, `["socketio", "codec", "packet"]` (empty for the root).
type ModPath = Vec<String>;

struct SourceFile {
    module: ModPath,
    ast: syn::File,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn module_of(rel: &Path) -> ModPath {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().unwrap_or_default();
    match file.as_str() {
        "lib.rs" | "mod.rs" => {}
        other => parts.push(other.trim_end_matches(".rs").to_owned()),
    }
    parts
}

fn read_sources() -> Vec<SourceFile> {
    let root = src_dir();
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}"));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text =
                    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
                let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
                let rel = path.strip_prefix(&root).expect("under src/");
                files.push(SourceFile {
                    module: module_of(rel),
                    ast,
                });
            }
        }
    }
    files
}

/// A path named in a file: where it was named (the file's module plus any inline modules
/// around it), its segments, and whether it is a re-export (`pub use`).
struct Reference {
    at: ModPath,
    segments: Vec<String>,
    glob: bool,
    reexport: bool,
}

/// Collects the crate-internal paths one file names.
struct Collector<'a> {
    /// The file's module, then the inline modules entered.
    at: ModPath,
    /// Modules that exist (files and inline ones), to tell `use child::x` from `use std::x`.
    known: &'a BTreeSet<ModPath>,
    out: Vec<Reference>,
    reexport: bool,
}

impl Collector<'_> {
    fn push(&mut self, segments: Vec<String>, glob: bool) {
        let first = segments.first().map(String::as_str);
        let relative_child = first.is_some_and(|f| {
            let mut child = self.at.clone();
            child.push(f.to_owned());
            self.known.contains(&child)
        });
        if matches!(first, Some("crate" | "super" | "self")) || relative_child {
            self.out.push(Reference {
                at: self.at.clone(),
                segments,
                glob,
                reexport: self.reexport,
            });
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut path = prefix.clone();
                if n.ident != "self" {
                    path.push(n.ident.to_string());
                }
                self.push(path, false);
            }
            syn::UseTree::Rename(r) => {
                let mut path = prefix.clone();
                if r.ident != "self" {
                    path.push(r.ident.to_string());
                }
                self.push(path, false);
            }
            syn::UseTree::Glob(_) => self.push(prefix.clone(), true),
            syn::UseTree::Group(g) => {
                for item in &g.items {
                    self.use_tree(prefix, item);
                }
            }
        }
    }

    /// `crate::a::b`, `super::x`, `self::y` in a macro's tokens (`tokio::select!` bodies,
    /// `format!` arguments), which syn leaves unparsed.
    fn tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < trees.len() {
            if let TokenTree::Group(g) = &trees[i] {
                self.tokens(g.stream());
                i += 1;
                continue;
            }
            let is_root = matches!(&trees[i], TokenTree::Ident(id) if id == "crate" || id == "super" || id == "self");
            if !is_root {
                i += 1;
                continue;
            }
            let mut segments = Vec::new();
            let mut j = i;
            while let Some(TokenTree::Ident(id)) = trees.get(j) {
                segments.push(id.to_string());
                let colons = matches!(
                    (trees.get(j + 1), trees.get(j + 2)),
                    (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
                        if a.as_char() == ':' && b.as_char() == ':'
                );
                if !colons {
                    break;
                }
                j += 3;
            }
            if segments.len() > 1 {
                self.push(segments, false);
            }
            i = j + 1;
        }
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.reexport = !matches!(item.vis, syn::Visibility::Inherited);
        self.use_tree(&mut Vec::new(), &item.tree);
        self.reexport = false;
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if item.content.is_some() {
            self.at.push(item.ident.to_string());
            syn::visit::visit_item_mod(self, item);
            self.at.pop();
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if segments.len() > 1 {
            self.push(segments, false);
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
        syn::visit::visit_macro(self, mac);
    }
}

/// Inline modules (`mod tests { … }`) of a file, as module paths.
fn inline_modules(at: &ModPath, items: &[syn::Item], out: &mut BTreeSet<ModPath>) {
    for item in items {
        if let syn::Item::Mod(m) = item {
            let mut path = at.clone();
            path.push(m.ident.to_string());
            if let Some((_, inner)) = &m.content {
                inline_modules(&path, inner, out);
            }
            out.insert(path);
        }
    }
}

/// The crate's module graph: for each file module, the file modules it names.
struct Graph {
    files: BTreeSet<ModPath>,
    edges: BTreeMap<ModPath, BTreeSet<ModPath>>,
}

impl Graph {
    fn build() -> Graph {
        let sources = read_sources();
        let files: BTreeSet<ModPath> = sources.iter().map(|f| f.module.clone()).collect();
        let mut known = files.clone();
        for f in &sources {
            inline_modules(&f.module, &f.ast.items, &mut known);
        }
        let mut refs: BTreeMap<ModPath, Vec<Reference>> = BTreeMap::new();
        for f in &sources {
            let mut c = Collector {
                at: f.module.clone(),
                known: &known,
                out: Vec::new(),
                reexport: false,
            };
            c.visit_file(&f.ast);
            refs.insert(f.module.clone(), c.out);
        }
        // Re-exports: (module, name) -> the absolute path it stands for.
        let mut reexports: BTreeMap<(ModPath, String), ModPath> = BTreeMap::new();
        for list in refs.values() {
            for r in list.iter().filter(|r| r.reexport && !r.glob) {
                if let (Some(abs), Some(name)) = (absolute(&r.at, &r.segments), r.segments.last()) {
                    reexports.insert((r.at.clone(), name.clone()), abs);
                }
            }
        }
        let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
        for (module, list) in &refs {
            let deps = edges.entry(module.clone()).or_default();
            for r in list {
                let Some(abs) = absolute(&r.at, &r.segments) else {
                    continue;
                };
                // A facade re-exporting its own children is structure, not a dependency.
                if r.reexport && abs.starts_with(module) {
                    continue;
                }
                let target = resolve(&files, &reexports, abs);
                if &target != module {
                    deps.insert(target);
                }
            }
        }
        Graph { files, edges }
    }

    /// `module -> dep, dep` for each module `keep` accepts, one a line.
    fn describe(&self, keep: impl Fn(&ModPath) -> bool) -> String {
        let mut out = String::new();
        for (m, deps) in self.edges.iter().filter(|(m, _)| keep(m)) {
            let names: Vec<String> = deps.iter().map(show).collect();
            out.push_str(&format!("{} -> {}\n", show(m), names.join(", ")));
        }
        out
    }

    fn deps(&self, module: &str) -> &BTreeSet<ModPath> {
        self.edges
            .get(&parse(module))
            .unwrap_or_else(|| panic!("no module {module}"))
    }

    /// Every module reachable from `module`.
    fn reach(&self, module: &ModPath) -> BTreeSet<ModPath> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![module.clone()];
        while let Some(m) = todo.pop() {
            for d in self.edges.get(&m).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    }

    /// A cycle among the modules `keep` accepts, as `a -> b -> a`, if there is one.
    fn cycle(&self, keep: impl Fn(&ModPath) -> bool) -> Option<Vec<ModPath>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Open,
            Done,
        }
        fn visit(
            g: &Graph,
            keep: &dyn Fn(&ModPath) -> bool,
            m: &ModPath,
            marks: &mut BTreeMap<ModPath, Mark>,
            stack: &mut Vec<ModPath>,
        ) -> Option<Vec<ModPath>> {
            marks.insert(m.clone(), Mark::Open);
            stack.push(m.clone());
            for d in g.edges.get(m).into_iter().flatten().filter(|d| keep(d)) {
                match marks.get(d) {
                    Some(Mark::Open) => {
                        let from = stack.iter().position(|s| s == d).unwrap_or(0);
                        let mut cycle = stack[from..].to_vec();
                        cycle.push(d.clone());
                        return Some(cycle);
                    }
                    Some(Mark::Done) => {}
                    None => {
                        if let Some(c) = visit(g, keep, d, marks, stack) {
                            return Some(c);
                        }
                    }
                }
            }
            stack.pop();
            marks.insert(m.clone(), Mark::Done);
            None
        }
        let mut marks = BTreeMap::new();
        for m in self.files.iter().filter(|m| keep(m)) {
            if !marks.contains_key(m) {
                if let Some(c) = visit(self, &keep, m, &mut marks, &mut Vec::new()) {
                    return Some(c);
                }
            }
        }
        None
    }
}

/// `segments` named at module `at`, made absolute (`None` for a path outside the crate).
fn absolute(at: &ModPath, segments: &[String]) -> Option<ModPath> {
    let mut base = at.clone();
    let mut rest = segments;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => {}
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The file module that defines `path`, through re-exports.
fn resolve(
    files: &BTreeSet<ModPath>,
    reexports: &BTreeMap<(ModPath, String), ModPath>,
    mut path: ModPath,
) -> ModPath {
    for _ in 0..16 {
        let file = (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| files.contains(p))
            .unwrap_or_default();
        let Some(next) = path.get(file.len()) else {
            return file;
        };
        match reexports.get(&(file.clone(), next.clone())) {
            Some(target) if !target.is_empty() && *target != path[..=file.len()] => {
                let mut p = target.clone();
                p.extend(path[file.len() + 1..].iter().cloned());
                path = p;
            }
            _ => return file,
        }
    }
    panic!("re-exports of {path:?} do not settle");
}

fn parse(module: &str) -> ModPath {
    module.split("::").map(str::to_owned).collect()
}

fn show(m: &ModPath) -> String {
    m.join("::")
}

fn in_realtime_protocols(m: &ModPath) -> bool {
    matches!(m.first().map(String::as_str), Some("socketio" | "engineio"))
}

fn is_codec(m: &ModPath) -> bool {
    in_realtime_protocols(m) && m.get(1).map(String::as_str) == Some("codec")
}

#[test]
fn socketio_and_engineio_have_no_cycle() {
    let g = Graph::build();
    let graph = g.describe(in_realtime_protocols);
    if let Some(cycle) = g.cycle(in_realtime_protocols) {
        let names: Vec<String> = cycle.iter().map(show).collect();
        panic!("module cycle: {}\n{graph}", names.join(" -> "));
    }
    // Nor through a module outside them (`socketio::rooms -> topics -> socketio::rooms`).
    let looped: Vec<String> = g
        .files
        .iter()
        .filter(|m| in_realtime_protocols(m) && g.reach(m).contains(*m))
        .map(show)
        .collect();
    assert!(
        looped.is_empty(),
        "on a cycle through the crate: {looped:?}\n{graph}"
    );
    // The layering at a glance, with `--nocapture`.
    eprintln!("{graph}");
}

#[test]
fn codecs_name_only_codecs() {
    let g = Graph::build();
    let codecs: Vec<&ModPath> = g.files.iter().filter(|m| is_codec(m)).collect();
    let expected = [
        "socketio::codec::packet",
        "socketio::codec::binary",
        "socketio::codec::outgoing",
        "engineio::codec::packet",
        "engineio::codec::payload",
        "engineio::codec::handshake",
        "engineio::codec::request",
    ];
    for name in expected {
        assert!(
            codecs.contains(&&parse(name)),
            "{name} is not a codec module"
        );
    }
    let mut wrong = Vec::new();
    for codec in codecs {
        for dep in &g.edges[codec] {
            if !is_codec(dep) {
                wrong.push(format!("{} -> {}", show(codec), show(dep)));
            }
        }
    }
    assert!(wrong.is_empty(), "codecs naming other modules: {wrong:#?}");
}

#[test]
fn layers_depend_one_way() {
    let g = Graph::build();
    let forbidden = [
        ("socketio::state", "socketio::socket"),
        ("socketio::state", "socketio::namespace"),
        ("socketio::state", "socketio::server"),
        ("socketio::socket", "socketio::namespace"),
        ("socketio::socket", "socketio::server"),
        ("socketio::socket", "socketio::behaviour"),
        ("socketio::namespace", "socketio::server"),
        ("socketio::namespace", "socketio::behaviour"),
        ("socketio::server", "socketio::behaviour"),
        ("engineio::session", "engineio::polling"),
        ("engineio::session", "engineio::websocket"),
        ("engineio::session", "engineio::server"),
        ("engineio::polling", "engineio::server"),
        ("engineio::websocket", "engineio::server"),
    ];
    let mut wrong = Vec::new();
    for (from, to) in forbidden {
        if g.reach(&parse(from)).contains(&parse(to)) {
            wrong.push(format!("{from} reaches {to}"));
        }
    }
    // Socket.IO rides on Engine.IO, which knows nothing of it.
    for m in g
        .files
        .iter()
        .filter(|m| m.first().is_some_and(|f| f == "engineio"))
    {
        for r in g.reach(m) {
            if r.first().is_some_and(|f| f == "socketio") {
                wrong.push(format!("{} reaches {}", show(m), show(&r)));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The graph sees what it should: known imports of the tree show up as edges.
#[test]
fn the_graph_sees_imports() {
    let g = Graph::build();
    let has = |from: &str, to: &str| g.deps(from).contains(&parse(to));
    assert!(has("socketio::server", "socketio::namespace"));
    assert!(has("socketio::namespace", "socketio::state"));
    assert!(has("socketio::socket", "socketio::state"));
    assert!(has("socketio::behaviour", "socketio::server"));
    assert!(has("socketio::codec::binary", "socketio::codec::packet"));
    assert!(has("engineio::codec::payload", "engineio::codec::packet"));
    assert!(has("engineio::server", "engineio::session"));
    // `use super::{…, EngineConfig, …}`: engineio's re-export of engineio::config's type.
    assert!(has("engineio::session", "engineio::config"));
    // `crate::topics::client_key(peer)` in an expression.
    assert!(has("engineio::server", "topics"));
}

/// Every form of path the collector reads, on a made-up file at module `a::b`.
#[test]
fn the_collector_reads_every_form() {
    let src = r#"
        use super::{c, d::{self, E}};
        pub use self::f::G;
        use std::sync::Arc;
        fn x() {
            crate::h::i();
            tokio::select! { _ = super::super::j::k() => {} }
        }
        mod tests {
            use super::*;
            use super::super::l::M;
        }
    "#;
    let ast = syn::parse_file(src).expect("parses");
    let at = parse("a::b");
    let mut known = BTreeSet::from([parse("a::b::f")]);
    inline_modules(&at, &ast.items, &mut known);
    let mut c = Collector {
        at: at.clone(),
        known: &known,
        out: Vec::new(),
        reexport: false,
    };
    c.visit_file(&ast);
    let seen: Vec<(String, bool, bool)> = c
        .out
        .iter()
        .map(|r| {
            let abs = absolute(&r.at, &r.segments).expect("inside the crate");
            (show(&abs), r.glob, r.reexport)
        })
        .collect();
    let expected = [
        ("a::c", false, false),
        ("a::d", false, false),
        ("a::d::E", false, false),
        ("a::b::f::G", false, true),
        ("h::i", false, false),
        ("j::k", false, false),
        ("a::b", true, false),
        ("a::l::M", false, false),
    ];
    let expected: Vec<(String, bool, bool)> = expected
        .iter()
        .map(|(p, g, r)| (p.to_string(), *g, *r))
        .collect();
    assert_eq!(seen, expected);
}
