//! The stage graph: which stage feeds which (a dep equal to or inside another stage's out, or the other
//! way round), checked before anything runs — two stages writing one output, a dep nobody produces and no
//! file provides, a cycle — plus the order stages run in and the `dag` views (text, Mermaid, DOT).

use crate::error::{PipelineError, Result};
use crate::spec::{PathRef, Pipeline};
use std::collections::BTreeSet;
use std::path::Path;

/// Edges between the stages of one pipeline (indices into `Pipeline::stages`).
#[derive(Debug, Clone)]
pub struct Graph {
    /// Stages in run order: upstream before downstream, otherwise file order.
    pub order: Vec<usize>,
    /// For each stage, the stages it reads from.
    pub upstream: Vec<Vec<usize>>,
    /// For each stage, the stages that read from it.
    pub downstream: Vec<Vec<usize>>,
}

fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

impl Graph {
    /// Builds and validates the graph of `p`.
    pub fn build(p: &Pipeline) -> Result<Graph> {
        check_outputs_are_apart_from_the_pipeline(p)?;
        check_outputs_have_one_writer(p)?;
        let upstream = upstream_edges(p)?;
        let downstream = reversed(&upstream);
        let order = run_order(p, &upstream, &downstream)?;
        Ok(Graph {
            order,
            upstream,
            downstream,
        })
    }

    /// `i` and every stage it (transitively) reads from.
    pub fn ancestors(&self, i: usize) -> BTreeSet<usize> {
        walk(i, &self.upstream)
    }

    /// `i` and every stage that (transitively) reads from it.
    pub fn descendants(&self, i: usize) -> BTreeSet<usize> {
        walk(i, &self.downstream)
    }

    /// The graph as indented text: each stage with the stages it reads from.
    pub fn text(&self, p: &Pipeline) -> String {
        let mut s = String::new();
        for &i in &self.order {
            let st = &p.stages[i];
            let ups: Vec<&str> = self.upstream[i]
                .iter()
                .map(|&u| p.stages[u].name.as_str())
                .collect();
            s.push_str(&st.name);
            if !ups.is_empty() {
                s.push_str(&format!("  ← {}", ups.join(", ")));
            }
            s.push('\n');
            let show = |v: &[PathRef]| {
                v.iter()
                    .map(|x| x.written.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            s.push_str(&format!("    cmd:  {} {}\n", st.program, st.argv.join(" ")));
            if !st.deps.is_empty() {
                s.push_str(&format!("    deps: {}\n", show(&st.deps)));
            }
            if !st.outs.is_empty() {
                s.push_str(&format!("    outs: {}\n", show(&st.outs)));
            }
        }
        s
    }

    /// Mermaid flowchart source.
    pub fn mermaid(&self, p: &Pipeline) -> String {
        let mut s = String::from("flowchart TD\n");
        for &i in &self.order {
            s.push_str(&format!("    s{i}[\"{}\"]\n", p.stages[i].name));
        }
        for &j in &self.order {
            for &i in &self.upstream[j] {
                s.push_str(&format!("    s{i} --> s{j}\n"));
            }
        }
        s
    }

    /// Graphviz DOT source.
    pub fn dot(&self, p: &Pipeline) -> String {
        let mut s = format!("digraph \"{}\" {{\n    rankdir=TB;\n", p.name);
        for &i in &self.order {
            s.push_str(&format!("    \"{}\";\n", p.stages[i].name));
        }
        for &j in &self.order {
            for &i in &self.upstream[j] {
                s.push_str(&format!(
                    "    \"{}\" -> \"{}\";\n",
                    p.stages[i].name, p.stages[j].name
                ));
            }
        }
        s.push_str("}\n");
        s
    }
}

/// An output is removed before its stage reruns: it must not hold the pipeline itself.
fn check_outputs_are_apart_from_the_pipeline(p: &Pipeline) -> Result<()> {
    for (j, st) in p.stages.iter().enumerate() {
        for o in &st.outs {
            if p.dir.starts_with(&o.abs) || p.run_dir.starts_with(&o.abs) {
                return Err(PipelineError::Invalid(format!(
                    "{}: output `{}` contains the pipeline file or its run directory; outputs are deleted before a rerun, so name a directory of their own",
                    p.at(j),
                    o.written
                )));
            }
        }
    }
    Ok(())
}

/// Refuses two stages writing one output (or one inside the other's).
fn check_outputs_have_one_writer(p: &Pipeline) -> Result<()> {
    for j in 0..p.stages.len() {
        for i in 0..j {
            for oj in &p.stages[j].outs {
                if let Some(oi) = p.stages[i].outs.iter().find(|o| overlaps(&o.abs, &oj.abs)) {
                    return Err(PipelineError::Invalid(format!(
                        "{}: output `{}` is also written by stage `{}` (line {}, output `{}`); each output belongs to one stage",
                        p.at(j),
                        oj.written,
                        p.stages[i].name,
                        p.stages[i].line,
                        oi.written
                    )));
                }
            }
        }
    }
    Ok(())
}

/// For each stage, the stages that produce its deps (each dep must come from a stage or exist).
fn upstream_edges(p: &Pipeline) -> Result<Vec<Vec<usize>>> {
    let mut upstream = vec![Vec::new(); p.stages.len()];
    for (j, stage) in p.stages.iter().enumerate() {
        for dep in &stage.deps {
            for i in producers(p, j, dep)? {
                if !upstream[j].contains(&i) {
                    upstream[j].push(i);
                }
            }
        }
    }
    Ok(upstream)
}

/// The other stages whose outputs overlap `dep` of stage `j`.
fn producers(p: &Pipeline, j: usize, dep: &PathRef) -> Result<Vec<usize>> {
    let stage = &p.stages[j];
    if let Some(own) = stage.outs.iter().find(|o| overlaps(&o.abs, &dep.abs)) {
        return Err(PipelineError::Invalid(format!(
            "{}: dep `{}` overlaps its own output `{}`",
            p.at(j),
            dep.written,
            own.written
        )));
    }
    let producers: Vec<usize> = (0..p.stages.len())
        .filter(|&i| i != j)
        .filter(|&i| p.stages[i].outs.iter().any(|o| overlaps(&o.abs, &dep.abs)))
        .collect();
    if producers.is_empty() && !dep.abs.exists() {
        return Err(PipelineError::Invalid(format!(
            "{}: dep `{}` ({}) does not exist and no stage produces it",
            p.at(j),
            dep.written,
            dep.abs.display()
        )));
    }
    Ok(producers)
}

/// The edges turned around: for each stage, the stages that read from it.
fn reversed(upstream: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut downstream = vec![Vec::new(); upstream.len()];
    for (j, ups) in upstream.iter().enumerate() {
        for &i in ups {
            downstream[i].push(j);
        }
    }
    downstream
}

/// Kahn's algorithm, always taking the earliest ready stage in file order; a cycle is an error.
fn run_order(
    p: &Pipeline,
    upstream: &[Vec<usize>],
    downstream: &[Vec<usize>],
) -> Result<Vec<usize>> {
    let n = upstream.len();
    let mut missing: Vec<usize> = upstream.iter().map(Vec::len).collect();
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while let Some(next) = (0..n).find(|&i| !done[i] && missing[i] == 0) {
        done[next] = true;
        order.push(next);
        for &d in &downstream[next] {
            missing[d] -= 1;
        }
    }
    if order.len() < n {
        let start = (0..n).find(|&i| !done[i]).expect("a stage is left");
        let cycle = find_cycle(start, upstream, &done);
        let names: Vec<&str> = cycle.iter().map(|&i| p.stages[i].name.as_str()).collect();
        return Err(PipelineError::Invalid(format!(
            "{}: dependency cycle: {} (each reads an output of the next)",
            p.at(cycle[0]),
            names.join(" ← ")
        )));
    }
    Ok(order)
}

fn walk(i: usize, edges: &[Vec<usize>]) -> BTreeSet<usize> {
    let mut seen = BTreeSet::from([i]);
    let mut todo = vec![i];
    while let Some(x) = todo.pop() {
        for &y in &edges[x] {
            if seen.insert(y) {
                todo.push(y);
            }
        }
    }
    seen
}

/// A cycle through the unfinished stages, starting the walk at `start`.
fn find_cycle(start: usize, upstream: &[Vec<usize>], done: &[bool]) -> Vec<usize> {
    let mut path = vec![start];
    loop {
        let last = *path.last().expect("non-empty");
        let next = upstream[last]
            .iter()
            .copied()
            .find(|&u| !done[u])
            .expect("an unfinished stage waits on an unfinished stage");
        if let Some(pos) = path.iter().position(|&x| x == next) {
            let mut cycle = path[pos..].to_vec();
            cycle.push(next);
            return cycle;
        }
        path.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Pipeline;

    fn graph(text: &str) -> Result<(Pipeline, Graph)> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in.txt"), "x").unwrap();
        let p = Pipeline::parse(text, Path::new("g.yaml"), dir.path(), &[])?;
        let g = Graph::build(&p)?;
        Ok((p, g))
    }

    #[test]
    fn order_follows_the_data_not_the_file() {
        let text = "stages:
  c:
    cmd: x
    args: {input: b/out.txt, out: c}
  b:
    cmd: x
    args: {input: a, out: b}
  a:
    cmd: x
    args: {input: in.txt, out: a}
";
        let (p, g) = graph(text).unwrap();
        let names: Vec<&str> = g.order.iter().map(|&i| p.stages[i].name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(g.descendants(2), BTreeSet::from([0, 1, 2]));
        assert_eq!(g.ancestors(0), BTreeSet::from([0, 1, 2]));
        assert!(g.mermaid(&p).contains("s2 --> s1"));
        assert!(g.dot(&p).contains("\"b\" -> \"c\""));
        assert!(g.text(&p).contains("c  ← b"));
    }

    #[test]
    fn cycles_missing_deps_and_shared_outputs_are_refused() {
        let cycle = "stages:
  a:
    cmd: x
    args: {input: b, out: a}
  b:
    cmd: x
    args: {input: a/f, out: b}
";
        let e = graph(cycle).unwrap_err().to_string();
        assert!(
            e.starts_with("g.yaml:2: stage `a`: dependency cycle: a ← b ← a"),
            "{e}"
        );
        let missing = "stages:\n  a:\n    cmd: x\n    args: {input: nope.txt}\n";
        let e = graph(missing).unwrap_err().to_string();
        assert!(e.starts_with("g.yaml:2: stage `a`: dep `nope.txt`"), "{e}");
        assert!(e.contains("does not exist and no stage produces it"), "{e}");
        let shared = "stages:
  a:
    cmd: x
    args: {out: o}
  b:
    cmd: x
    outs: [o/inner]
";
        let e = graph(shared).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "g.yaml:5: stage `b`: output `o/inner` is also written by stage `a` (line 2"
            ),
            "{e}"
        );
        let home = "stages:\n  a:\n    cmd: x\n    args: {out: .}\n";
        let e = graph(home).unwrap_err().to_string();
        assert!(e.contains("contains the pipeline file"), "{e}");
        let own = "stages:\n  a:\n    cmd: x\n    args: {input: o/x, out: o}\n";
        let e = graph(own).unwrap_err().to_string();
        assert!(e.contains("overlaps its own output"), "{e}");
    }
}
