//! What may be shown of a secret-bearing value in logs, errors and status.

/// A URL, or a comma-separated list of them (`nats://a:4222,nats://b:4222`),
/// without the credentials in its authority (`user:password@`,
/// `token@`): what may be logged of a NATS server's address. The rest is
/// kept as given.
pub fn url_credentials(urls: &str) -> String {
    urls.split(',')
        .map(|u| {
            let u = u.trim();
            let (scheme, rest) = match u.split_once("://") {
                Some((s, r)) => (Some(s), r),
                None => (None, u),
            };
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(end);
            let host = match authority.rsplit_once('@') {
                Some((_, host)) => host,
                None => authority,
            };
            match scheme {
                Some(s) => format!("{s}://{host}{tail}"),
                None => format!("{host}{tail}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `scheme://host[:port]` of a URL, nothing else (the path and query of a
/// webhook URL are often its secret); `<url>` when it is not one.
pub fn url_origin(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<url>".into();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_and_the_rest_stays() {
        assert_eq!(
            url_credentials("nats://user:s3cret@bus:4222"),
            "nats://bus:4222"
        );
        assert_eq!(url_credentials("nats://tok3n@bus"), "nats://bus");
        assert_eq!(
            url_credentials("tls://a:b@one:4222, nats://two:4222/x?y=z@w"),
            "tls://one:4222,nats://two:4222/x?y=z@w"
        );
        assert_eq!(url_credentials("bus:4222"), "bus:4222");
        assert_eq!(url_credentials("u:p@bus:4222"), "bus:4222");
    }

    #[test]
    fn an_origin_keeps_scheme_and_host_only() {
        assert_eq!(
            url_origin("https://user:pw@hooks.slack.com/services/T/B/SECRET?x=1"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            url_origin("http://127.0.0.1:8080/topic"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(url_origin("nonsense"), "<url>");
    }
}
