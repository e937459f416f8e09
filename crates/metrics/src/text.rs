//! The Prometheus text exposition format 0.0.4, written straight into one `String`: a
//! family's `# HELP` and `# TYPE` once, then its samples. Label values are escaped
//! (`\\`, `\"`, `\n`), so a queue name may hold any UTF-8. Nothing is allocated per sample
//! beyond the output's own growth.
//!
//! Owns only the text; which families exist and what they read is `families.rs`'s.

use std::fmt::Write;

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One family: its name without the prefix (`rabbitmq_` or `rabbitmq_detailed_`), type
/// and help text.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

impl Family {
    pub const fn counter(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: Kind::Counter,
            help,
        }
    }

    pub const fn gauge(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: Kind::Gauge,
            help,
        }
    }
}

/// A scrape being written.
pub struct Exposition {
    out: String,
    prefix: &'static str,
    /// The family whose samples are being written (its full name is `prefix` + this).
    current: &'static str,
}

impl Exposition {
    pub fn new(prefix: &'static str, capacity: usize) -> Exposition {
        Exposition {
            out: String::with_capacity(capacity),
            prefix,
            current: "",
        }
    }

    /// Starts a family: `# HELP` and `# TYPE`. Each family must be started once per scrape.
    pub fn family(&mut self, f: &Family) {
        self.current = f.name;
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = write!(self.out, "# HELP {}{} ", self.prefix, f.name);
        escape_help(&mut self.out, f.help);
        let _ = writeln!(self.out, "\n# TYPE {}{} {kind}", self.prefix, f.name);
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, f: &Family, value: u64) {
        self.family(f);
        self.sample(&[], value);
    }

    /// A sample of the current family.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: u64) {
        self.name_and_labels(labels);
        self.out.push(' ');
        push_u64(&mut self.out, value);
        self.out.push('\n');
    }

    /// A sample of the current family with a fractional value.
    pub fn sample_f64(&mut self, labels: &[(&str, &str)], value: f64) {
        self.name_and_labels(labels);
        let _ = writeln!(self.out, " {value}");
    }

    /// A sample of the current family whose labels were written before by
    /// [`write_labels`] (`raw`), followed by `extra` (already escaped, with its leading
    /// comma, or empty). Labels written once serve every family of a scrape, and are read
    /// from one contiguous buffer instead of from every queue's own allocation.
    pub fn sample_raw(&mut self, raw: &str, extra: &str, value: u64) {
        self.out.push_str(self.prefix);
        self.out.push_str(self.current);
        self.out.push('{');
        self.out.push_str(raw);
        self.out.push_str(extra);
        self.out.push_str("} ");
        push_u64(&mut self.out, value);
        self.out.push('\n');
    }

    fn name_and_labels(&mut self, labels: &[(&str, &str)]) {
        self.out.push_str(self.prefix);
        self.out.push_str(self.current);
        if labels.is_empty() {
            return;
        }
        self.out.push('{');
        write_labels(&mut self.out, labels);
        self.out.push('}');
    }

    pub fn into_string(self) -> String {
        self.out
    }
}

/// `name="value",...` with the values escaped (no braces).
pub fn write_labels(out: &mut String, labels: &[(&str, &str)]) {
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        escape_label_value(out, value);
        out.push('"');
    }
}

/// `value` in decimal, without going through `fmt` (a scrape writes a million of them).
fn push_u64(out: &mut String, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for &d in &digits[start..] {
        out.push(d as char);
    }
}

/// A label value: backslash, double quote and line feed escaped.
fn escape_label_value(out: &mut String, value: &str) {
    if !value.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Help text: backslash and line feed escaped.
fn escape_help(out: &mut String, help: &str) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUEUE: Family = Family::gauge("queue_messages", "Sum of ready and unacked messages");
    const PUBLISHED: Family = Family::counter("published_total", "a \\ b\nc");

    #[test]
    fn numbers_are_decimal() {
        for n in [0, 7, 10, 1234567890, u64::MAX] {
            let mut out = String::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::new("rabbitmq_", 0);
        e.family(&QUEUE);
        e.sample(&[("vhost", "/"), ("queue", "a\"b\\c\nd é")], 7);
        let text = e.into_string();
        assert!(
            text.ends_with("rabbitmq_queue_messages{vhost=\"/\",queue=\"a\\\"b\\\\c\\nd é\"} 7\n"),
            "{text}"
        );
    }

    #[test]
    fn help_and_type_once_per_family() {
        let mut e = Exposition::new("rabbitmq_detailed_", 0);
        e.family(&QUEUE);
        e.sample(&[("queue", "a")], 1);
        e.sample(&[("queue", "b")], 2);
        e.single(&PUBLISHED, 3);
        let text = e.into_string();
        assert_eq!(
            text,
            "# HELP rabbitmq_detailed_queue_messages Sum of ready and unacked messages\n\
             # TYPE rabbitmq_detailed_queue_messages gauge\n\
             rabbitmq_detailed_queue_messages{queue=\"a\"} 1\n\
             rabbitmq_detailed_queue_messages{queue=\"b\"} 2\n\
             # HELP rabbitmq_detailed_published_total a \\\\ b\\nc\n\
             # TYPE rabbitmq_detailed_published_total counter\n\
             rabbitmq_detailed_published_total 3\n"
        );
    }
}
