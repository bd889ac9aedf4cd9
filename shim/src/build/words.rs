//! Docker's variable expansion and word splitting for the instructions
//! that take it (ENV, ARG, LABEL, COPY, ADD, WORKDIR, USER, EXPOSE, VOLUME,
//! STOPSIGNAL, FROM): `$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR:+word}`,
//! single and double quotes, and backslash escapes. RUN, CMD and
//! ENTRYPOINT are not expanded here: their shell does it.

use anyhow::{bail, Result};

/// The variables in scope, looked up by name.
pub trait Vars {
    fn get(&self, name: &str) -> Option<String>;
}

impl Vars for [(String, String)] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

/// Expands variables and removes quotes, keeping whitespace: one word.
pub fn expand(s: &str, vars: &(impl Vars + ?Sized)) -> Result<String> {
    Ok(lex(s, vars, false)?.join(""))
}

/// Expands variables and splits on unquoted whitespace.
pub fn words(s: &str, vars: &(impl Vars + ?Sized)) -> Result<Vec<String>> {
    lex(s, vars, true)
}

fn lex(s: &str, vars: &(impl Vars + ?Sized), split: bool) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if split && c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => bail!("unterminated single quote in {s:?}"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => bail!("unterminated double quote in {s:?}"),
                        },
                        Some('$') => word.push_str(&variable(&mut chars, vars, s)?),
                        Some(c) => word.push(c),
                        None => bail!("unterminated double quote in {s:?}"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            '$' => {
                in_word = true;
                word.push_str(&variable(&mut chars, vars, s)?);
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word || !split {
        out.push(word);
    }
    Ok(out)
}

/// The value of the variable after a `$`.
fn variable(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    vars: &(impl Vars + ?Sized),
    s: &str,
) -> Result<String> {
    let is_name = |c: &char| c.is_ascii_alphanumeric() || *c == '_';
    if chars.peek() != Some(&'{') {
        let mut name = String::new();
        while let Some(c) = chars.next_if(is_name) {
            name.push(c);
        }
        if name.is_empty() {
            return Ok("$".into());
        }
        return Ok(vars.get(&name).unwrap_or_default());
    }
    chars.next();
    let mut name = String::new();
    while let Some(c) = chars.next_if(is_name) {
        name.push(c);
    }
    let value = vars.get(&name);
    match chars.next() {
        Some('}') => Ok(value.unwrap_or_default()),
        Some(':') => {
            let op = chars.next();
            let mut word = String::new();
            let mut depth = 0;
            loop {
                match chars.next() {
                    Some('}') if depth == 0 => break,
                    Some(c) => {
                        depth += usize::from(c == '{');
                        depth -= usize::from(c == '}' && depth > 0);
                        word.push(c);
                    }
                    None => bail!("unterminated ${{ in {s:?}"),
                }
            }
            let word = expand(&word, vars)?;
            let set = value.as_deref().is_some_and(|v| !v.is_empty());
            match op {
                Some('-') => Ok(if set { value.unwrap_or_default() } else { word }),
                Some('+') => Ok(if set { word } else { String::new() }),
                _ => bail!("unsupported modifier in ${{{name}:…}} in {s:?}: use :- or :+"),
            }
        }
        _ => bail!("bad variable ${{{name}…}} in {s:?}"),
    }
}

/// `KEY=VALUE …` (or the old `KEY VALUE` form with one pair), as ENV,
/// LABEL and ARG take them. ARG's `KEY` alone gives `(KEY, None)`.
pub fn pairs(s: &str, vars: &(impl Vars + ?Sized)) -> Result<Vec<(String, Option<String>)>> {
    let first = s.trim_start();
    let word_end = first
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(first.len());
    if first[word_end..].starts_with(char::is_whitespace) {
        // The old form: everything after the first word is the value.
        let value = first[word_end..].trim();
        return Ok(vec![(
            first[..word_end].to_string(),
            Some(expand(value, vars)?),
        )]);
    }
    words(s, vars)?
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), Some(v.to_string()))),
            Some(_) => bail!("{w:?}: a name is missing before ="),
            None => Ok((w, None)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vec<(String, String)> {
        [("A", "one"), ("B", "two words"), ("E", "")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .to_vec()
    }

    #[test]
    fn expands_like_docker() {
        let v = vars();
        assert_eq!(expand("/x/$A/${A}y", &v[..]).unwrap(), "/x/one/oney");
        assert_eq!(expand("${NOPE:-dflt}-${E:-e}", &v[..]).unwrap(), "dflt-e");
        assert_eq!(expand("${A:+set}${NOPE:+x}", &v[..]).unwrap(), "set");
        assert_eq!(expand(r#"\$A '$A' "$A""#, &v[..]).unwrap(), "$A $A one");
        assert_eq!(
            words(r#"a "$B" 'c d'"#, &v[..]).unwrap(),
            ["a", "two words", "c d"]
        );
        assert!(expand("${A", &v[..]).is_err());
        assert!(expand("${A:?x}", &v[..]).is_err());
    }

    #[test]
    fn pairs_in_both_forms() {
        let v = vars();
        let p = |s: &str| pairs(s, &v[..]).unwrap();
        let kv = |k: &str, val: &str| (k.to_string(), Some(val.to_string()));
        assert_eq!(
            p(r#"X=1 Y="$B" Z=a\ b"#),
            [kv("X", "1"), kv("Y", "two words"), kv("Z", "a b")]
        );
        assert_eq!(p("X hello   world"), [kv("X", "hello   world")]);
        assert_eq!(p("V"), [("V".to_string(), None)]);
        assert!(pairs("=x", &v[..]).is_err());
    }
}
