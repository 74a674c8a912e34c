//! The text form of transactions, as etcdctl writes them:
//!
//! ```text
//! value("k") = "v"        compares: value, version, create, mod
//! mod("k") < 42           operators: = != < >
//!
//! put k "new value"       success ops: put, get, del [--prefix]
//!
//! get k                   failure ops
//! ```

use cairn_client::{Compare, TxnOp};

/// Splits a line into words; double quotes group, backslash escapes.
pub fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let n = chars
                    .next()
                    .ok_or_else(|| format!("dangling backslash in {line:?}"))?;
                cur.push(n);
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err(format!("unclosed quote in {line:?}"));
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Parses `target("key") op operand`.
pub fn compare(line: &str) -> Result<Compare, String> {
    let bad = || {
        format!(
            "bad compare {line:?}: want TARGET(\"key\") OP VALUE with TARGET one of value, version, create, mod and OP one of = != < >"
        )
    };
    let open = line.find('(').ok_or_else(bad)?;
    let close = line.rfind(')').ok_or_else(bad)?;
    if close < open {
        return Err(bad());
    }
    let target = line[..open].trim();
    let key = words(&line[open + 1..close])?;
    let [key] = key.as_slice() else {
        return Err(bad());
    };
    let rest = words(&line[close + 1..])?;
    let [op, operand] = rest.as_slice() else {
        return Err(bad());
    };
    let number = || {
        operand
            .parse::<u64>()
            .map_err(|_| format!("bad compare {line:?}: {operand:?} is not a number"))
    };
    macro_rules! apply {
        ($c:expr, $v:expr) => {
            match op.as_str() {
                "=" | "==" => $c.eq($v),
                "!=" => $c.ne($v),
                "<" => $c.lt($v),
                ">" => $c.gt($v),
                _ => return Err(bad()),
            }
        };
    }
    Ok(match target {
        "value" | "val" => apply!(Compare::value(key), operand.as_bytes()),
        "version" | "ver" => apply!(Compare::version(key), number()?),
        "create" | "create_revision" | "c" => apply!(Compare::create_revision(key), number()?),
        "mod" | "mod_revision" | "m" => apply!(Compare::mod_revision(key), number()?),
        _ => return Err(bad()),
    })
}

/// Parses `put k v`, `get k`, `del k` or `del --prefix p`.
pub fn op(line: &str) -> Result<TxnOp, String> {
    let w = words(line)?;
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    Ok(match w.as_slice() {
        ["put", k, v] => TxnOp::put(k, v),
        ["get", k] => TxnOp::get(k),
        ["del" | "delete", "--prefix", p] => TxnOp::delete_prefix(p),
        ["del" | "delete", k] => TxnOp::delete(k),
        _ => {
            return Err(format!(
                "bad operation {line:?}: want `put KEY VALUE`, `get KEY`, `del KEY` or `del --prefix PREFIX`"
            ))
        }
    })
}

/// Parses the stdin form: compares, a blank line, success ops, a blank
/// line, failure ops.
/// A parsed transaction: compares, success ops, failure ops.
pub type Parsed = (Vec<Compare>, Vec<TxnOp>, Vec<TxnOp>);

pub fn parse_script(s: &str) -> Result<Parsed, String> {
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for line in s.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if line.is_empty() {
            if sections.len() < 3 {
                sections.push(Vec::new());
            }
            continue;
        }
        if let Some(v) = sections.last_mut() {
            v.push(line);
        }
    }
    sections.resize(3, Vec::new());
    let compares = sections[0]
        .iter()
        .map(|l| compare(l))
        .collect::<Result<_, _>>()?;
    let success = sections[1]
        .iter()
        .map(|l| op(l))
        .collect::<Result<_, _>>()?;
    let failure = sections[2]
        .iter()
        .map(|l| op(l))
        .collect::<Result<_, _>>()?;
    Ok((compares, success, failure))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_client::proto::kv::compare::{Op, Target};

    #[test]
    fn words_split_and_quote() {
        assert_eq!(
            words(r#"put k "a value" x\ y"#).unwrap(),
            vec!["put", "k", "a value", "x y"]
        );
        assert_eq!(words(r#"put k """#).unwrap(), vec!["put", "k", ""]);
        assert!(words(r#"put "k"#).is_err());
    }

    #[test]
    fn compares_parse() {
        let c = compare(r#"value("k") = "v 1""#).unwrap().into_proto();
        assert_eq!((c.target, c.op), (Target::Value as i32, Op::Equal as i32));
        assert_eq!(&c.value[..], b"v 1");
        let c = compare("mod(k) < 42").unwrap().into_proto();
        assert_eq!(
            (c.target, c.op, c.number),
            (Target::ModRevision as i32, Op::Less as i32, 42)
        );
        assert!(compare("mod(k) < x").is_err());
        assert!(compare("size(k) = 1").is_err());
        assert!(compare("value(k) ~ 1").is_err());
    }

    #[test]
    fn scripts_parse() {
        let (c, s, f) =
            parse_script("value(\"k\") = \"v\"\n\nput k w\ndel --prefix p\n\nget k\n").unwrap();
        assert_eq!((c.len(), s.len(), f.len()), (1, 2, 1));
        assert!(parse_script("value(k) = v\n\nfrobnicate k\n").is_err());
    }
}
