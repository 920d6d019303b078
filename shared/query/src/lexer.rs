//! The lexer of `--where`: text → positioned tokens.

use super::*;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Token {
    Word(String),
    Quoted(String),
    Op(Op),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
}

#[derive(Debug, Clone)]
pub(super) struct Spanned {
    pub(super) token: Token,
    /// 1-based character column.
    pub(super) column: usize,
}

pub(super) fn is_word_char(c: char) -> bool {
    !(c.is_whitespace() || "\"'()[],<>=!".contains(c))
}

pub(super) fn lex(source: &str, text: &str) -> Result<Vec<Spanned>, QueryError> {
    let chars: Vec<char> = text.chars().collect();
    let error = |column: usize, message: String| QueryError {
        source: source.to_string(),
        column,
        message,
    };
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let single = match c {
            '(' => Some(Token::LParen),
            ')' => Some(Token::RParen),
            '[' => Some(Token::LBracket),
            ']' => Some(Token::RBracket),
            ',' => Some(Token::Comma),
            _ => None,
        };
        if let Some(token) = single {
            tokens.push(Spanned { token, column });
            i += 1;
            continue;
        }
        if c == '"' || c == '\'' {
            let mut value = String::new();
            let mut j = i + 1;
            loop {
                match chars.get(j) {
                    None => {
                        return Err(error(column, format!("unterminated string (missing {c})")))
                    }
                    Some('\\') if chars.get(j + 1).is_some() => {
                        value.push(chars[j + 1]);
                        j += 2;
                    }
                    Some(&d) if d == c => break,
                    Some(&d) => {
                        value.push(d);
                        j += 1;
                    }
                }
            }
            tokens.push(Spanned {
                token: Token::Quoted(value),
                column,
            });
            i = j + 1;
            continue;
        }
        if "<>=!".contains(c) {
            let mut j = i;
            while j < chars.len() && "<>=!".contains(chars[j]) {
                j += 1;
            }
            let raw: String = chars[i..j].iter().collect();
            let op = match raw.as_str() {
                "=" | "==" => Op::Eq,
                "!=" => Op::Ne,
                "<" => Op::Lt,
                "<=" => Op::Le,
                ">" => Op::Gt,
                ">=" => Op::Ge,
                other => {
                    let hint = match other {
                        "=<" => " (did you mean \"<=\"?)",
                        "=>" => " (did you mean \">=\"?)",
                        "<>" | "=!" => " (did you mean \"!=\"?)",
                        "===" => " (did you mean \"=\"?)",
                        _ => " (expected one of: = != < <= > >=)",
                    };
                    return Err(error(column, format!("unknown operator \"{other}\"{hint}")));
                }
            };
            tokens.push(Spanned {
                token: Token::Op(op),
                column,
            });
            i = j;
            continue;
        }
        let mut j = i;
        while j < chars.len() && is_word_char(chars[j]) {
            j += 1;
        }
        tokens.push(Spanned {
            token: Token::Word(chars[i..j].iter().collect()),
            column,
        });
        i = j;
    }
    Ok(tokens)
}
