//! docker's `--format`: `table` (the default columns), `table TEMPLATE`,
//! `json` (or `{{json .}}`: one object per row), or a Go-template-like
//! line such as `{{.Name}}: {{.CPUPerc}}`. Only field references are
//! templated, not Go's functions: what scripts use.

use anyhow::Result;
use capsa_shim::{CodedError, EXIT_CAPSA_ERROR};

/// One row's fields: (template name, value).
pub type Fields = Vec<(&'static str, String)>;

/// A command's fields and their table headers, e.g. ("CPUPerc", "CPU %").
pub type Headers = &'static [(&'static str, &'static str)];

pub enum Format {
    /// Aligned columns under headers, from the template's fields.
    Table(String, Headers),
    /// One JSON object per row, every field.
    Json,
    /// The template filled in, one line per row, no header.
    Line(String),
}

impl Format {
    /// `--format`'s value; `default` is the table's template.
    pub fn parse(flag: Option<&str>, default: &str, headers: Headers) -> Format {
        let flag = flag.map(str::trim).unwrap_or("table");
        if flag == "json" || flag.replace(' ', "") == "{{json.}}" {
            return Format::Json;
        }
        match flag.strip_prefix("table") {
            Some(rest) if rest.trim().is_empty() => Format::Table(default.to_string(), headers),
            Some(rest) if rest.starts_with(char::is_whitespace) => {
                Format::Table(rest.trim().to_string(), headers)
            }
            _ => Format::Line(flag.to_string()),
        }
    }

    /// Prints the rows; an unknown field is one line, exit 125.
    pub fn print(&self, rows: &[Fields]) -> Result<()> {
        match self {
            Format::Json => {
                for row in rows {
                    println!("{}", json_object(row));
                }
            }
            Format::Line(t) => {
                for row in rows {
                    println!("{}", fill(t, row)?);
                }
            }
            Format::Table(t, headers) => {
                // The header is the template with headers for values; both
                // are split into columns on tabs.
                let head: Fields = headers.iter().map(|(k, h)| (*k, h.to_string())).collect();
                let cells = |s: String| s.split('\t').map(str::to_string).collect::<Vec<_>>();
                let head = cells(fill(t, &head)?);
                let body = rows
                    .iter()
                    .map(|r| fill(t, r).map(cells))
                    .collect::<Result<Vec<_>>>()?;
                let head: Vec<&str> = head.iter().map(String::as_str).collect();
                crate::table::print(&head, &body);
            }
        }
        Ok(())
    }
}

fn json_object(row: &[(&str, String)]) -> serde_json::Value {
    serde_json::Value::Object(
        row.iter()
            .map(|(k, v)| (k.to_string(), v.clone().into()))
            .collect(),
    )
}

/// Replaces each `{{.Field}}` (spaces allowed inside the braces) with the
/// row's value and `\t`, `\n` with a tab and a newline.
fn fill(template: &str, row: &[(&str, String)]) -> Result<String> {
    expand(template, |path, json| {
        if json && path.is_empty() {
            return Ok(json_object(row).to_string());
        }
        match row.iter().find(|(k, _)| *k == path) {
            Some((_, v)) if json => Ok(serde_json::Value::from(v.as_str()).to_string()),
            Some((_, v)) => Ok(v.clone()),
            None => {
                let known: Vec<&str> = row.iter().map(|(k, _)| *k).collect();
                Err(bad(format!(
                    "--format: no field .{path} (fields: {})",
                    known.join(", ")
                )))
            }
        }
    })
}

/// A template over a JSON document (`inspect --format`): `{{.A.B}}` is
/// the value at that path (strings bare, others as JSON, a missing key
/// `<no value>` as Go prints it), `{{json .A}}` its JSON.
pub fn fill_json(template: &str, doc: &serde_json::Value) -> Result<String> {
    expand(template, |path, json| {
        let mut v = doc;
        for key in path.split('.').filter(|k| !k.is_empty()) {
            match v.get(key) {
                Some(next) => v = next,
                None if json => return Ok("null".into()),
                None => return Ok("<no value>".into()),
            }
        }
        Ok(match v {
            serde_json::Value::String(s) if !json => s.clone(),
            other => other.to_string(),
        })
    })
}

/// Go-template-like expansion: each `{{.Path}}` or `{{json .Path}}` is
/// replaced by `lookup(path without its leading dot, json)`.
fn expand(template: &str, lookup: impl Fn(&str, bool) -> Result<String>) -> Result<String> {
    // `\t` and `\n` in the template's own text are a tab and a newline,
    // as docker's; never in a value (a JSON string's escaped newline).
    let literal = |s: &str| s.replace("\\t", "\t").replace("\\n", "\n");
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&literal(&rest[..start]));
        let Some(len) = rest[start..].find("}}") else {
            return Err(bad(format!("--format: an unclosed {{{{ in {template:?}")));
        };
        let inner = rest[start + 2..start + len].trim();
        let (json, expr) = match inner.strip_prefix("json") {
            Some(e) if e.starts_with(char::is_whitespace) => (true, e.trim()),
            _ => (false, inner),
        };
        let Some(path) = expr.strip_prefix('.') else {
            return Err(bad(format!(
                "--format: {{{{{inner}}}}} is not a field (write {{{{.Name}}}})"
            )));
        };
        out.push_str(&lookup(path, json)?);
        rest = &rest[start + len + 2..];
    }
    out.push_str(&literal(rest));
    Ok(out)
}

fn bad(msg: String) -> anyhow::Error {
    CodedError::new(EXIT_CAPSA_ERROR, msg).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Fields {
        vec![("Name", "web".into()), ("CPUPerc", "1.50%".into())]
    }

    #[test]
    fn templates_fill_fields_and_refuse_unknown_ones() {
        let r = row();
        assert_eq!(fill("{{.Name}}: {{ .CPUPerc }}", &r).unwrap(), "web: 1.50%");
        assert_eq!(
            fill("{{.Name}}\\t{{json .CPUPerc}}", &r).unwrap(),
            "web\t\"1.50%\""
        );
        assert_eq!(
            fill("{{json .}}", &r).unwrap(),
            r#"{"CPUPerc":"1.50%","Name":"web"}"#
        );
        // A value's escapes stay escaped: the JSON stays JSON.
        let lines = vec![("Output", "a\tb\nc".into())];
        assert_eq!(
            fill("{{json .Output}}\\n", &lines).unwrap(),
            "\"a\\tb\\nc\"\n"
        );
        let e = fill("{{.Nope}}", &r).unwrap_err().to_string();
        assert!(
            e.contains("no field .Nope") && e.contains("Name, CPUPerc"),
            "{e}"
        );
        assert!(fill("{{.Name", &r).is_err());
        assert!(fill("{{Name}}", &r).is_err());
    }

    #[test]
    fn json_documents_fill_by_path() {
        let doc = serde_json::json!({"State": {"Pid": 42, "Status": "running"}, "Name": "/web"});
        assert_eq!(
            fill_json("{{.State.Pid}} {{.State.Status}}{{.Name}}", &doc).unwrap(),
            "42 running/web"
        );
        assert_eq!(
            fill_json("{{json .State}}", &doc).unwrap(),
            r#"{"Pid":42,"Status":"running"}"#
        );
        assert_eq!(fill_json("{{.Nope.X}}", &doc).unwrap(), "<no value>");
        assert_eq!(fill_json("{{json .Name}}", &doc).unwrap(), r#""/web""#);
    }

    #[test]
    fn format_flags_parse_like_dockers() {
        assert!(matches!(Format::parse(None, "d", &[]), Format::Table(t, _) if t == "d"));
        assert!(matches!(Format::parse(Some("table"), "d", &[]), Format::Table(t, _) if t == "d"));
        assert!(
            matches!(Format::parse(Some("table {{.Name}}"), "d", &[]), Format::Table(t, _) if t == "{{.Name}}")
        );
        assert!(matches!(
            Format::parse(Some("json"), "d", &[]),
            Format::Json
        ));
        assert!(matches!(
            Format::parse(Some("{{ json . }}"), "d", &[]),
            Format::Json
        ));
        assert!(
            matches!(Format::parse(Some("{{.Name}}"), "d", &[]), Format::Line(t) if t == "{{.Name}}")
        );
    }
}
