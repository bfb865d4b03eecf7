//! What of a server's own error text may leave it. A model that fails to load says why in
//! terms of the host (`no such path /srv/models/fraud/v3`) and of its storage URI, which may
//! carry credentials (`https://user:token@host/...`, a pre-signed `?X-Amz-Signature=...`).
//! Operators read that in logs; a client is told the same sentence with credentials, queries
//! and directories taken out. `siesta status` shows errors without credentials but with paths.

/// `text` without URI credentials and queries (for operators' status pages).
pub fn credentials(text: &str) -> String {
    map_tokens(text, |t| redact_token(t, false))
}

/// `text` without URI credentials and queries, and with local directories cut to `…/name`
/// (for clients).
pub fn for_client(text: &str) -> String {
    map_tokens(text, |t| redact_token(t, true))
}

/// Applies `f` to each whitespace-separated token, without its surrounding quotes and
/// punctuation, keeping everything else as it was.
fn map_tokens(text: &str, f: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, piece) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let core_start = piece
            .find(|c: char| !matches!(c, '\'' | '"' | '(' | '[' | '<' | '`'))
            .unwrap_or(piece.len());
        let core_end = piece
            .rfind(|c: char| {
                !matches!(
                    c,
                    '\'' | '"' | ')' | ']' | '>' | '`' | ',' | ';' | ':' | '.'
                )
            })
            .map_or(core_start, |i| {
                i + piece[i..].chars().next().map_or(1, char::len_utf8)
            })
            .max(core_start);
        let core = &piece[core_start..core_end];
        match f(core) {
            Some(r) => {
                out.push_str(&piece[..core_start]);
                out.push_str(&r);
                out.push_str(&piece[core_end..]);
            }
            None => out.push_str(piece),
        }
    }
    out
}

fn redact_token(token: &str, paths: bool) -> Option<String> {
    if let Some((scheme, rest)) = token.split_once("://")
        && !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let authority = match authority.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => authority.to_string(),
        };
        let path = if paths && scheme == "file" {
            short_path(path)
        } else {
            path.to_string()
        };
        let redacted = format!("{scheme}://{authority}{path}");
        return (redacted != token).then_some(redacted);
    }
    if paths && token.starts_with('/') && token[1..].contains('/') {
        return Some(short_path(token));
    }
    None
}

/// `/a/b/c` as `…/c`: the file's name says what is missing, its directories say where the
/// host keeps things.
fn short_path(path: &str) -> String {
    let name = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    format!("…/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_error_loses_its_directories_for_clients_and_keeps_them_for_operators() {
        let e = "Error: model 'broken' failed to load: model load failed: storage URI \
                 'file:///srv/models/fraud/v3': no such path /srv/models/fraud/v3";
        assert_eq!(
            for_client(e),
            "Error: model 'broken' failed to load: model load failed: storage URI \
             'file://…/v3': no such path …/v3"
        );
        assert_eq!(credentials(e), e);
    }

    #[test]
    fn credentials_and_queries_never_leave() {
        let e = "GET https://alice:s3cr3t@models.example.com/m/config.json?X-Amz-Signature=abc&x=1: 403";
        let want = "GET https://***@models.example.com/m/config.json: 403";
        assert_eq!(credentials(e), want);
        assert_eq!(for_client(e), want);
        assert_eq!(
            for_client("(s3://AKIA:key@bucket/path/model.pt)"),
            "(s3://***@bucket/path/model.pt)"
        );
    }

    #[test]
    fn other_text_is_left_alone() {
        for t in [
            "no route for /v2",
            "model 'mnist' is not ready",
            "a/b/c relative, 3/4 ratio, 10:30",
            "",
            "  two  spaces ",
            "'''",
            "é/ü/ß",
        ] {
            assert_eq!(for_client(t), t, "{t}");
        }
    }
}
