//! A validated reader of the Prometheus / OpenMetrics text exposition, as
//! the daemon's endpoint writes it ([`crate::metrics_server`]).
//!
//! Why not a crate: `prometheus-parse`, the parser most used, matches lines
//! with regular expressions and groups samples under their `# TYPE` name,
//! which for OpenMetrics counters (`# TYPE x counter`, samples `x_total`)
//! does not line up; `top` needs only samples (name, labels, value), so a
//! small strict reader is less code to trust. Strict: a line that is not a
//! comment and not a well-formed sample is an error naming the line, so a
//! garbage answer is reported, never half-read. It is fuzzed
//! (`host-backend/fuzz`, target `metrics_text`).

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a text is not a metrics exposition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpoError {
    /// The endpoint sent a line that is not a sample.
    #[error("line {line}: {what}")]
    Line { line: usize, what: &'static str },
    /// The text is an exposition, but not a pvbackend daemon's.
    #[error("no pvbackend series in the answer (is this a pvbackend metrics endpoint?)")]
    NotPvbackend,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust also reads "inf", "infinity", "nan"; the format does not
        // write them, so only digits, sign, point and exponent pass.
        _ if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E')) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

/// Parses one sample line (not a comment, not blank).
fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .char_indices()
        .find(|&(_, c)| !is_name_char(c))
        .map_or(line.len(), |(i, _)| i);
    let name = &line[..name_end];
    if !name.chars().next().is_some_and(is_name_start) {
        return Err("not a metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let key_end = rest
                .char_indices()
                .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(rest.len(), |(i, _)| i);
            let key = &rest[..key_end];
            if !key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            {
                return Err("not a label name");
            }
            rest = rest[key_end..]
                .strip_prefix("=\"")
                .ok_or("label without =\"value\"")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let close = loop {
                match chars.next() {
                    None => return Err("unterminated label value"),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        _ => return Err("bad escape in a label value"),
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            labels.push((key.to_owned(), value));
            rest = &rest[close + 1..];
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err("labels not separated by ','");
            }
        }
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let mut fields = rest.split(' ');
    let value = fields.next().and_then(parse_value).ok_or("not a number")?;
    if let Some(ts) = fields.next() {
        parse_value(ts).ok_or("bad timestamp")?;
    }
    if fields.next().is_some() {
        return Err("trailing text after the value");
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses an exposition; every non-comment line must be a sample, and at
/// least one series (sample or `# TYPE`) must be a pvbackend one.
pub fn parse(text: &str) -> Result<Vec<Sample>, ExpoError> {
    let mut out = Vec::new();
    let mut ours = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            ours |= comment.trim_start().starts_with("TYPE pvbackend_");
            continue;
        }
        let s = parse_line(line).map_err(|what| ExpoError::Line { line: i + 1, what })?;
        ours |= s.name.starts_with("pvbackend_");
        out.push(s);
    }
    if !ours {
        return Err(ExpoError::NotPvbackend);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_labels_escapes_and_special_values_parse() {
        let text = "# HELP pvbackend_x help\n# TYPE pvbackend_x counter\n\
            pvbackend_x_total{disk=\"a\\\"b\",guest=\"vm1\"} 42\n\
            pvbackend_h_bucket{le=\"+Inf\",} 3 1700000000\n\
            pvbackend_g -1.5e3\n\
            pvbackend_n NaN\n# EOF\n";
        let s = parse(text).expect("parses");
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].name, "pvbackend_x_total");
        assert_eq!(s[0].label("disk"), Some("a\"b"));
        assert_eq!(s[0].label("guest"), Some("vm1"));
        assert_eq!(s[0].value, 42.0);
        assert_eq!(s[1].label("le"), Some("+Inf"));
        assert_eq!(s[2].value, -1500.0);
        assert!(s[3].value.is_nan());
    }

    #[test]
    fn garbage_is_an_error_naming_the_line() {
        for (text, line) in [
            ("pvbackend_a 1\n<html>oops</html>\n", 2),
            ("pvbackend_a{disk=\"x} 1\n", 1),
            ("pvbackend_a{disk=x} 1\n", 1),
            ("pvbackend_a 1 2 3\n", 1),
            ("pvbackend_a inf\n", 1),
            ("pvbackend_a{1x=\"a\"} 1\n", 1),
            ("pvbackend_a{a=\"1\"b=\"2\"} 1\n", 1),
            ("9lives 1\n", 1),
            ("pvbackend_a\n", 1),
        ] {
            match parse(text) {
                Err(ExpoError::Line { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_exposition_without_pvbackend_series_is_refused() {
        assert_eq!(
            parse("go_goroutines 12\n# EOF\n"),
            Err(ExpoError::NotPvbackend)
        );
        assert_eq!(parse(""), Err(ExpoError::NotPvbackend));
        // A daemon whose families have no sample yet is still ours.
        assert_eq!(parse("# TYPE pvbackend_blk_requests counter\n"), Ok(vec![]));
    }
}
