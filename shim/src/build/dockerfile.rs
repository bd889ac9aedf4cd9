//! A Dockerfile as capsa builds it: parsed by `parse-dockerfile`, then
//! checked whole before any step runs, so an instruction or option capsa
//! does not support is refused in one line naming it and its line number.

use anyhow::{anyhow, bail, Result};
use parse_dockerfile::{Command, Flag, Instruction, JsonOrStringArray, Source};

/// A command as RUN, CMD and ENTRYPOINT take it.
#[derive(Debug, Clone, PartialEq)]
pub enum Cmd {
    Exec(Vec<String>),
    Shell(String),
}

impl Cmd {
    /// The argv: the exec form as written; the shell form given to `shell`.
    pub fn argv(&self, shell: &[String]) -> Vec<String> {
        match self {
            Cmd::Exec(v) => v.clone(),
            Cmd::Shell(s) => shell.iter().cloned().chain([s.clone()]).collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Op {
    From {
        image: String,
        name: Option<String>,
    },
    Arg(String),
    Env(String),
    Label(String),
    Run(Cmd),
    Cmd(Cmd),
    Entrypoint(Cmd),
    Copy(Copy),
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    Volume(Vec<String>),
    StopSignal(String),
    Shell(Vec<String>),
    Healthcheck {
        flags: Vec<(String, String)>,
        test: Option<Cmd>,
    },
    Maintainer(String),
}

#[derive(Debug, Clone)]
pub struct Copy {
    /// ADD rather than COPY: local archives are unpacked.
    pub add: bool,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub src: Vec<String>,
    pub dest: String,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub line: usize,
    /// The instruction as written (its first line), for progress.
    pub text: String,
    /// The whole instruction, its continuation lines joined: the image
    /// history's line.
    pub full: String,
    pub op: Op,
}

pub struct Stage {
    pub from: Step,
    pub steps: Vec<Step>,
}

pub struct Dockerfile {
    /// ARGs before the first FROM.
    pub global_args: Vec<Step>,
    pub stages: Vec<Stage>,
}

pub fn parse(text: &str) -> Result<Dockerfile> {
    let df =
        parse_dockerfile::parse(text).map_err(|e| anyhow!("Dockerfile line {}: {e}", e.line()))?;
    let escape = df
        .parser_directives
        .escape
        .as_ref()
        .map_or('\\', |d| d.value.value);
    let line_of = |pos: usize| text[..pos.min(text.len())].matches('\n').count() + 1;
    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for ins in &df.instructions {
        let start = keyword_start(ins);
        let line = line_of(start);
        let text_line = text[start..]
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let unsupported = |what: &str| -> anyhow::Error {
            anyhow!("Dockerfile line {line}: {what} is not supported by capsa build: {text_line}")
        };
        let op = match ins {
            Instruction::From(f) => {
                flags_allowed(&f.options, &["platform"], &unsupported)?;
                if let Some(p) = f.options.iter().find(|f| f.name.value == "platform") {
                    let v = p.value.as_ref().map(|v| v.value.as_ref()).unwrap_or("");
                    check_platform(v).map_err(|e| anyhow!("Dockerfile line {line}: {e}"))?;
                }
                Op::From {
                    image: f.image.value.to_string(),
                    name: f.as_.as_ref().map(|(_, n)| n.value.to_ascii_lowercase()),
                }
            }
            Instruction::Arg(a) => Op::Arg(a.arguments.value.to_string()),
            Instruction::Env(e) => Op::Env(e.arguments.value.to_string()),
            Instruction::Label(l) => Op::Label(l.arguments.value.to_string()),
            Instruction::Run(r) => {
                if let Some(f) = r.options.first() {
                    return Err(unsupported(&format!("RUN --{}", f.name.value)));
                }
                if !r.here_docs.is_empty() {
                    return Err(unsupported("a here-document"));
                }
                Op::Run(command(&r.arguments, escape))
            }
            Instruction::Cmd(c) => Op::Cmd(command(&c.arguments, escape)),
            Instruction::Entrypoint(e) => Op::Entrypoint(command(&e.arguments, escape)),
            Instruction::Copy(c) => {
                flags_allowed(&c.options, &["from", "chown", "chmod"], &unsupported)?;
                copy(false, &c.options, &c.src, &c.dest.value, &unsupported)?
            }
            Instruction::Add(a) => {
                flags_allowed(&a.options, &["chown", "chmod"], &unsupported)?;
                copy(true, &a.options, &a.src, &a.dest.value, &unsupported)?
            }
            Instruction::Workdir(w) => Op::Workdir(w.arguments.value.to_string()),
            Instruction::User(u) => Op::User(u.arguments.value.to_string()),
            Instruction::Expose(e) => {
                Op::Expose(e.arguments.iter().map(|a| a.value.to_string()).collect())
            }
            Instruction::Volume(v) => Op::Volume(match &v.arguments {
                JsonOrStringArray::Json(j) => j.value.iter().map(|a| a.value.to_string()).collect(),
                JsonOrStringArray::String(s) => s.iter().map(|a| a.value.to_string()).collect(),
            }),
            Instruction::Stopsignal(s) => Op::StopSignal(s.arguments.value.to_string()),
            Instruction::Shell(s) => {
                Op::Shell(s.arguments.iter().map(|a| a.value.to_string()).collect())
            }
            Instruction::Healthcheck(h) => {
                let flags = h
                    .options
                    .iter()
                    .map(|f| {
                        let v = f
                            .value
                            .as_ref()
                            .map(|v| v.value.to_string())
                            .unwrap_or_default();
                        (f.name.value.to_string(), v)
                    })
                    .collect();
                let test = match &h.arguments {
                    parse_dockerfile::HealthcheckArguments::Cmd { arguments, .. } => {
                        Some(command(arguments, escape))
                    }
                    _ => None,
                };
                Op::Healthcheck { flags, test }
            }
            Instruction::Maintainer(m) => Op::Maintainer(m.name.value.to_string()),
            Instruction::Onbuild(_) => return Err(unsupported("ONBUILD")),
            _ => return Err(unsupported("this instruction")),
        };
        let step = Step {
            line,
            full: logical_line(&text[start..], escape),
            text: text_line,
            op,
        };
        match (&step.op, stages.last_mut()) {
            (Op::From { .. }, _) => stages.push(Stage {
                from: step,
                steps: vec![],
            }),
            (_, Some(stage)) => stage.steps.push(step),
            (Op::Arg(_), None) => global_args.push(step),
            (_, None) => {
                bail!("Dockerfile line {line}: the first instruction must be FROM (or ARG)")
            }
        }
    }
    if stages.is_empty() {
        bail!("the Dockerfile has no FROM instruction");
    }
    Ok(Dockerfile {
        global_args,
        stages,
    })
}

/// An instruction's text up to the end of its last continuation line.
fn logical_line(from: &str, escape: char) -> String {
    let mut out = String::new();
    for l in from.lines() {
        let t = l.trim();
        if !out.is_empty() && t.starts_with('#') {
            continue;
        }
        match t.strip_suffix(escape) {
            Some(part) => {
                out.push_str(part.trim_end());
                out.push(' ');
            }
            None => {
                out.push_str(t);
                break;
            }
        }
    }
    out.trim().to_string()
}

/// capsa builds linux/amd64 images only.
pub fn check_platform(p: &str) -> Result<()> {
    match p {
        "linux/amd64" | "linux/x86_64" | "" => Ok(()),
        // The BuildKit variables for "this platform".
        "$BUILDPLATFORM" | "$TARGETPLATFORM" | "${BUILDPLATFORM}" | "${TARGETPLATFORM}" => Ok(()),
        other => bail!("platform {other}: capsa builds linux/amd64 images only"),
    }
}

fn keyword_start(ins: &Instruction<'_>) -> usize {
    match ins {
        Instruction::Add(i) => i.add.span.start,
        Instruction::Arg(i) => i.arg.span.start,
        Instruction::Cmd(i) => i.cmd.span.start,
        Instruction::Copy(i) => i.copy.span.start,
        Instruction::Entrypoint(i) => i.entrypoint.span.start,
        Instruction::Env(i) => i.env.span.start,
        Instruction::Expose(i) => i.expose.span.start,
        Instruction::From(i) => i.from.span.start,
        Instruction::Healthcheck(i) => i.healthcheck.span.start,
        Instruction::Label(i) => i.label.span.start,
        Instruction::Maintainer(i) => i.maintainer.span.start,
        Instruction::Onbuild(i) => i.onbuild.span.start,
        Instruction::Run(i) => i.run.span.start,
        Instruction::Shell(i) => i.shell.span.start,
        Instruction::Stopsignal(i) => i.stopsignal.span.start,
        Instruction::User(i) => i.user.span.start,
        Instruction::Volume(i) => i.volume.span.start,
        Instruction::Workdir(i) => i.workdir.span.start,
        _ => 0,
    }
}

fn flags_allowed(
    flags: &[Flag<'_>],
    allowed: &[&str],
    unsupported: &dyn Fn(&str) -> anyhow::Error,
) -> Result<()> {
    match flags
        .iter()
        .find(|f| !allowed.contains(&f.name.value.as_ref()))
    {
        Some(f) => Err(unsupported(&format!("the option --{}", f.name.value))),
        None => Ok(()),
    }
}

fn copy(
    add: bool,
    flags: &[Flag<'_>],
    src: &[Source<'_>],
    dest: &str,
    unsupported: &dyn Fn(&str) -> anyhow::Error,
) -> Result<Op> {
    let flag = |name: &str| {
        flags.iter().find(|f| f.name.value == name).map(|f| {
            f.value
                .as_ref()
                .map(|v| v.value.to_string())
                .unwrap_or_default()
        })
    };
    let mut paths = Vec::new();
    for s in src {
        match s {
            Source::Path(p) => {
                let p = p.value.to_string();
                if p.contains("://") || p.starts_with("git@") {
                    return Err(unsupported(
                        "a URL source (capsa builds from the local context only)",
                    ));
                }
                paths.push(p);
            }
            _ => return Err(unsupported("a here-document")),
        }
    }
    Ok(Op::Copy(Copy {
        add,
        from: flag("from"),
        chown: flag("chown"),
        chmod: flag("chmod"),
        src: paths,
        dest: dest.to_string(),
    }))
}

/// The shell form keeps its escapes: line continuations are joined here,
/// as docker's parser does (comment lines inside them are dropped).
fn command(c: &Command<'_>, escape: char) -> Cmd {
    match c {
        Command::Exec(v) => Cmd::Exec(v.value.iter().map(|a| a.value.to_string()).collect()),
        Command::Shell(s) => {
            let mut out = String::new();
            let mut lines = s.value.split('\n').peekable();
            while let Some(l) = lines.next() {
                let l = l.strip_suffix('\r').unwrap_or(l);
                if !out.is_empty() && l.trim_start().starts_with('#') {
                    continue;
                }
                match l.trim_end().strip_suffix(escape) {
                    Some(joined) if lines.peek().is_some() => out.push_str(joined),
                    _ => out.push_str(l),
                }
            }
            Cmd::Shell(out.trim().to_string())
        }
        _ => Cmd::Shell(String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stages_and_refuses_what_capsa_lacks() {
        let df = parse(
            "ARG BASE=demo\nFROM $BASE AS one\nRUN echo a \\\n  # note\n  && echo b\nCOPY --chown=1:2 a b /d/\nFROM one\nCMD [\"x\"]\n",
        )
        .unwrap();
        assert_eq!(df.global_args.len(), 1);
        assert_eq!(df.stages.len(), 2);
        let run = &df.stages[0].steps[0];
        assert_eq!(run.line, 3);
        match &run.op {
            Op::Run(Cmd::Shell(s)) => assert_eq!(s, "echo a   && echo b"),
            other => panic!("{other:?}"),
        }
        let bad = |s: &str| parse(s).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(bad("FROM a\nONBUILD RUN x\n").contains("line 2: ONBUILD"));
        assert!(bad("FROM a\nRUN --mount=type=cache,target=/c x\n").contains("line 2: RUN --mount"));
        assert!(bad("FROM a\nADD https://example.org/f /f\n").contains("URL"));
        assert!(bad("FROM --platform=linux/arm64 a\n").contains("linux/amd64"));
        assert!(bad("RUN x\n").contains("FROM"));
    }
}
