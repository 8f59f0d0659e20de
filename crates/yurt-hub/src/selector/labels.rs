//! Label selectors with the grammar of the API server's `labels.Parse` (Kubernetes 1.20).
//!
//! The API server lexes the selector byte by byte: whitespace is space, tab, CR and LF;
//! the operators are `=`, `==`, `!=`, `!`, `in`, `notin`, `>`, `<`, `(`, `)` and `,`;
//! anything else up to the next operator or whitespace is one identifier. A NUL byte ends
//! the input where a token would start, and ends (and is dropped from) an identifier or
//! an operator elsewhere. Keys must be qualified names, values label values, and the
//! value of `>`/`<` a 64-bit integer. Hand-written rather than taken from a crate: no
//! Rust crate reproduces this grammar and its quirks (`x in ()` holds the empty value,
//! `in` is a key outside operator position, `(a,,b)` holds the empty value).

use std::collections::BTreeMap;
use std::fmt;

use super::SelectorError;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRequirement {
    /// `key=value` / `key==value`.
    Equals(String, String),
    /// `key!=value` (also true when the key is absent).
    NotEquals(String, String),
    /// `key in (a,b)`: values sorted and without duplicates, never empty.
    In(String, Vec<String>),
    /// `key notin (a,b)` (also true when the key is absent): values as for `In`.
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
    /// `key>n`: the label is an integer greater than `n`.
    GreaterThan(String, i64),
    /// `key<n`: the label is an integer less than `n`.
    LessThan(String, i64),
}

impl LabelRequirement {
    /// The label key it reads.
    pub fn key(&self) -> &str {
        match self {
            LabelRequirement::Equals(k, _)
            | LabelRequirement::NotEquals(k, _)
            | LabelRequirement::In(k, _)
            | LabelRequirement::NotIn(k, _)
            | LabelRequirement::Exists(k)
            | LabelRequirement::DoesNotExist(k)
            | LabelRequirement::GreaterThan(k, _)
            | LabelRequirement::LessThan(k, _) => k,
        }
    }

    /// Whether `labels` satisfy it, as the API server decides.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            LabelRequirement::Equals(k, v) => labels.get(k) == Some(v),
            LabelRequirement::NotEquals(k, v) => labels.get(k) != Some(v),
            LabelRequirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            LabelRequirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            LabelRequirement::Exists(k) => labels.contains_key(k),
            LabelRequirement::DoesNotExist(k) => !labels.contains_key(k),
            LabelRequirement::GreaterThan(k, n) => label_integer(labels, k).is_some_and(|l| l > *n),
            LabelRequirement::LessThan(k, n) => label_integer(labels, k).is_some_and(|l| l < *n),
        }
    }
}

/// A label's value as a base-10 signed 64-bit integer (a label that is not one never
/// satisfies `>` or `<`). Rust's `i64` parser takes the same forms as Go's
/// `strconv.ParseInt(v, 10, 64)`: an optional sign, then decimal digits.
fn label_integer(labels: &BTreeMap<String, String>, key: &str) -> Option<i64> {
    labels.get(key).and_then(|v| v.parse().ok())
}

impl fmt::Display for LabelRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelRequirement::Equals(k, v) => write!(f, "{k}={v}"),
            LabelRequirement::NotEquals(k, v) => write!(f, "{k}!={v}"),
            LabelRequirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(",")),
            LabelRequirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(",")),
            LabelRequirement::Exists(k) => write!(f, "{k}"),
            LabelRequirement::DoesNotExist(k) => write!(f, "!{k}"),
            LabelRequirement::GreaterThan(k, n) => write!(f, "{k}>{n}"),
            LabelRequirement::LessThan(k, n) => write!(f, "{k}<{n}"),
        }
    }
}

/// A parsed label selector (all requirements must hold; empty matches everything).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector(pub Vec<LabelRequirement>);

impl LabelSelector {
    /// Parses a label selector exactly as the API server's `labels.Parse` does.
    ///
    /// # Errors
    /// [`SelectorError`] for every selector the API server rejects with 400.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let tokens = lex(selector);
        let mut parser = Parser {
            tokens: &tokens,
            position: 0,
        };
        parser.selector().map(Self).map_err(|reason| SelectorError {
            selector: selector.to_owned(),
            reason,
        })
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }
}

impl fmt::Display for LabelSelector {
    /// The selector in a form [`LabelSelector::parse`] reads back to the same requirements.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

// === lexer ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    End,
    OpenParen,
    CloseParen,
    Comma,
    Bang,
    Equals,
    DoubleEquals,
    NotEquals,
    GreaterThan,
    LessThan,
    In,
    NotIn,
    Identifier(&'a str),
}

impl Token<'_> {
    /// How the token reads in an error message.
    fn describe(self) -> String {
        match self {
            Token::End => "end of string".to_owned(),
            Token::OpenParen => "(".to_owned(),
            Token::CloseParen => ")".to_owned(),
            Token::Comma => ",".to_owned(),
            Token::Bang => "!".to_owned(),
            Token::Equals => "=".to_owned(),
            Token::DoubleEquals => "==".to_owned(),
            Token::NotEquals => "!=".to_owned(),
            Token::GreaterThan => ">".to_owned(),
            Token::LessThan => "<".to_owned(),
            Token::In => "in".to_owned(),
            Token::NotIn => "notin".to_owned(),
            Token::Identifier(s) => s.to_owned(),
        }
    }
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_operator_byte(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// A byte cursor that reads NUL at the end, as the API server's lexer does.
struct Lexer<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    /// The next byte (0 at the end; a NUL byte in the input reads the same but is used up).
    fn read(&mut self) -> u8 {
        match self.s.as_bytes().get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                b
            }
            None => 0,
        }
    }

    fn unread(&mut self) {
        self.pos -= 1;
    }

    fn next_token(&mut self) -> Token<'a> {
        let mut b = self.read();
        while is_whitespace(b) {
            b = self.read();
        }
        if b == 0 {
            return Token::End;
        }
        self.unread();
        if is_operator_byte(b) {
            self.operator()
        } else {
            self.identifier_or_keyword()
        }
    }

    /// An operator: `==` and `!=` take two bytes, every other operator one.
    fn operator(&mut self) -> Token<'a> {
        let first = self.read();
        let single = match first {
            b'=' => Token::Equals,
            b'!' => Token::Bang,
            b'(' => Token::OpenParen,
            b')' => Token::CloseParen,
            b',' => Token::Comma,
            b'>' => Token::GreaterThan,
            _ => Token::LessThan,
        };
        let double = match (first, self.read()) {
            (_, 0) => return single,
            (b'=', b'=') => Token::DoubleEquals,
            (b'!', b'=') => Token::NotEquals,
            _ => {
                self.unread();
                return single;
            }
        };
        // The API server's lexer reads one byte past a two-byte operator and keeps it
        // unless it is a NUL, which it drops.
        if self.read() != 0 {
            self.unread();
        }
        double
    }

    fn identifier_or_keyword(&mut self) -> Token<'a> {
        let start = self.pos;
        let mut end;
        loop {
            end = self.pos;
            let b = self.read();
            if b == 0 {
                break;
            }
            if is_operator_byte(b) || is_whitespace(b) {
                self.unread();
                break;
            }
        }
        // Identifiers end only at ASCII bytes, so `start..end` lies on char boundaries.
        let word = self.s.get(start..end).unwrap_or_default();
        match word {
            "in" => Token::In,
            "notin" => Token::NotIn,
            _ => Token::Identifier(word),
        }
    }
}

/// All tokens up to and including the first `End`.
fn lex(s: &str) -> Vec<Token<'_>> {
    let mut lexer = Lexer { s, pos: 0 };
    let mut tokens = Vec::new();
    loop {
        let t = lexer.next_token();
        tokens.push(t);
        if t == Token::End {
            return tokens;
        }
    }
}

// === parser ===

/// Where a token is read: in value position `in` and `notin` are plain identifiers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    Operator,
    Value,
}

struct Parser<'t, 'a> {
    tokens: &'t [Token<'a>],
    position: usize,
}

impl<'a> Parser<'_, 'a> {
    fn lookahead(&self, context: Context) -> Token<'a> {
        let t = self
            .tokens
            .get(self.position)
            .copied()
            .unwrap_or(Token::End);
        match (context, t) {
            (Context::Value, Token::In) => Token::Identifier("in"),
            (Context::Value, Token::NotIn) => Token::Identifier("notin"),
            _ => t,
        }
    }

    fn consume(&mut self, context: Context) -> Token<'a> {
        let t = self.lookahead(context);
        self.position += 1;
        t
    }

    fn selector(&mut self) -> Result<Vec<LabelRequirement>, String> {
        let mut requirements = Vec::new();
        loop {
            match self.lookahead(Context::Value) {
                Token::Identifier(_) | Token::Bang => {
                    requirements.push(self.requirement()?);
                    match self.consume(Context::Value) {
                        Token::End => return Ok(requirements),
                        Token::Comma => match self.lookahead(Context::Value) {
                            Token::Identifier(_) | Token::Bang => {}
                            t => {
                                return Err(format!(
                                    "found '{}', expected: identifier after ','",
                                    t.describe()
                                ));
                            }
                        },
                        t => {
                            return Err(format!(
                                "found '{}', expected: ',' or 'end of string'",
                                t.describe()
                            ));
                        }
                    }
                }
                Token::End => return Ok(requirements),
                t => {
                    return Err(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        t.describe()
                    ));
                }
            }
        }
    }

    fn requirement(&mut self) -> Result<LabelRequirement, String> {
        let negated = self.lookahead(Context::Value) == Token::Bang;
        if negated {
            self.consume(Context::Value);
        }
        let key = match self.consume(Context::Value) {
            Token::Identifier(k) => k,
            t => return Err(format!("found '{}', expected: identifier", t.describe())),
        };
        validate_key(key)?;
        if negated {
            // `!key` takes no operator; whatever follows must end the requirement.
            return Ok(LabelRequirement::DoesNotExist(key.to_owned()));
        }
        if matches!(self.lookahead(Context::Value), Token::End | Token::Comma) {
            return Ok(LabelRequirement::Exists(key.to_owned()));
        }
        let key = key.to_owned();
        match self.consume(Context::Operator) {
            Token::In => Ok(LabelRequirement::In(key.clone(), self.value_set(&key)?)),
            Token::NotIn => Ok(LabelRequirement::NotIn(key.clone(), self.value_set(&key)?)),
            Token::Equals | Token::DoubleEquals => {
                let v = self.exact_value(&key)?;
                Ok(LabelRequirement::Equals(key, v))
            }
            Token::NotEquals => {
                let v = self.exact_value(&key)?;
                Ok(LabelRequirement::NotEquals(key, v))
            }
            op @ (Token::GreaterThan | Token::LessThan) => {
                let v = self.exact_value(&key)?;
                let n = v
                    .parse::<i64>()
                    .map_err(|_| "for 'Gt', 'Lt' operators, the value must be an integer")?;
                Ok(if op == Token::GreaterThan {
                    LabelRequirement::GreaterThan(key, n)
                } else {
                    LabelRequirement::LessThan(key, n)
                })
            }
            t => Err(format!(
                "found '{}', expected: '=', '!=', '==', 'in', notin'",
                t.describe()
            )),
        }
    }

    /// `( values )`: a comma-separated list where a missing value is the empty value.
    fn value_set(&mut self, key: &str) -> Result<Vec<String>, String> {
        match self.consume(Context::Value) {
            Token::OpenParen => {}
            t => return Err(format!("found '{}' expected: '('", t.describe())),
        }
        let mut values = Vec::new();
        match self.lookahead(Context::Value) {
            Token::Identifier(_) | Token::Comma => {
                self.value_list(&mut values)?;
                match self.consume(Context::Value) {
                    Token::CloseParen => {}
                    t => return Err(format!("found '{}', expected: ')'", t.describe())),
                }
            }
            Token::CloseParen => {
                self.consume(Context::Value);
                values.push(String::new());
            }
            t => {
                return Err(format!(
                    "found '{}', expected: ',', ')' or identifier",
                    t.describe()
                ));
            }
        }
        values.sort();
        values.dedup();
        for v in &values {
            validate_value(key, v)?;
        }
        Ok(values)
    }

    /// The values inside the parentheses, up to (not including) `)`.
    fn value_list(&mut self, values: &mut Vec<String>) -> Result<(), String> {
        loop {
            match self.consume(Context::Value) {
                Token::Identifier(v) => {
                    values.push(v.to_owned());
                    match self.lookahead(Context::Value) {
                        Token::Comma => {}
                        Token::CloseParen => return Ok(()),
                        t => {
                            return Err(format!("found '{}', expected: ',' or ')'", t.describe()));
                        }
                    }
                }
                Token::Comma => {
                    if values.is_empty() {
                        values.push(String::new());
                    }
                    match self.lookahead(Context::Value) {
                        Token::CloseParen => {
                            values.push(String::new());
                            return Ok(());
                        }
                        Token::Comma => {
                            self.consume(Context::Value);
                            values.push(String::new());
                        }
                        _ => {}
                    }
                }
                t => {
                    return Err(format!(
                        "found '{}', expected: ',', or identifier",
                        t.describe()
                    ));
                }
            }
        }
    }

    /// The one value after `=`, `==`, `!=`, `>` or `<` (none is the empty value).
    fn exact_value(&mut self, key: &str) -> Result<String, String> {
        let value = match self.lookahead(Context::Value) {
            Token::End | Token::Comma => String::new(),
            _ => match self.consume(Context::Value) {
                Token::Identifier(v) => v.to_owned(),
                t => return Err(format!("found '{}', expected: identifier", t.describe())),
            },
        };
        validate_value(key, &value)?;
        Ok(value)
    }
}

// === validation (k8s.io/apimachinery/pkg/util/validation) ===

const NAME_MAX: usize = 63;
const VALUE_MAX: usize = 63;
const PREFIX_MAX: usize = 253;

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// An RFC 1123 subdomain: lowercase labels `[a-z0-9]([-a-z0-9]*[a-z0-9])?` joined by dots.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= PREFIX_MAX
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            match (b.first(), b.last()) {
                (Some(first), Some(last)) => {
                    (first.is_ascii_lowercase() || first.is_ascii_digit())
                        && (last.is_ascii_lowercase() || last.is_ascii_digit())
                        && b.iter()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                }
                _ => false,
            }
        })
}

/// A label key: `[prefix/]name`, prefix a DNS subdomain, name a qualified name of at most
/// 63 characters.
fn validate_key(key: &str) -> Result<(), String> {
    let invalid = |why: &str| Err(format!("invalid label key {key:?}: {why}"));
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => name,
        [prefix, name] => {
            if prefix.is_empty() {
                return invalid("prefix part must be non-empty");
            }
            if !is_dns_subdomain(prefix) {
                return invalid("prefix part must be a lowercase RFC 1123 subdomain");
            }
            name
        }
        _ => return invalid("at most one '/' is allowed"),
    };
    if name.is_empty() {
        return invalid("name part must be non-empty");
    }
    if name.len() > NAME_MAX {
        return invalid("name part must be no more than 63 characters");
    }
    if !is_qualified_name_part(name) {
        return invalid(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        );
    }
    Ok(())
}

/// A label value: empty, or a qualified name part of at most 63 characters.
fn validate_value(key: &str, value: &str) -> Result<(), String> {
    if value.len() > VALUE_MAX {
        return Err(format!(
            "invalid label value: {value:?}: at key: {key:?}: must be no more than 63 characters"
        ));
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        return Err(format!(
            "invalid label value: {value:?}: at key: {key:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}
