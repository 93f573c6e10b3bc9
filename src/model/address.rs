//! The one parser of the address parts every URL and flag shares: `HOST:PORT` lists and
//! `NAME=VALUE&…` option strings. Log URLs, store URLs and the cluster's host file all call it, so
//! an address is valid in one place exactly when it is valid in the others.

/// `HOST:PORT` where HOST is not empty and has no white space, and PORT is 1 to 65535.
pub fn parse_host_port(address: &str) -> Result<(&str, u16), String> {
    address
        .rsplit_once(':')
        .and_then(|(host, port)| {
            let port = port.parse::<u16>().ok().filter(|&p| p > 0)?;
            (!host.is_empty() && !host.contains(char::is_whitespace)).then_some((host, port))
        })
        .ok_or_else(|| {
            format!("{address:?} must be HOST:PORT (a host without spaces, a port from 1 to 65535)")
        })
}

/// A comma-separated list of `HOST:PORT`, each checked by [`parse_host_port`].
pub fn parse_host_ports(list: &str) -> Result<Vec<String>, String> {
    list.split(',')
        .map(|a| parse_host_port(a).map(|_| a.to_string()))
        .collect()
}

/// `NAME=VALUE&NAME=VALUE` pairs, in order; a name may appear once.
pub fn parse_query(query: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let mut params: Vec<(String, String)> = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("option {pair:?} is not NAME=VALUE"))?;
        if params.iter().any(|(seen, _)| seen == k) {
            return Err(format!("option {k:?} is given twice"));
        }
        params.push((k.to_string(), v.to_string()));
    }
    Ok(params)
}

/// Checks that every option is one of `known` and parses the value of `name` if present.
pub fn option<T: std::str::FromStr>(
    params: &[(String, String)],
    known: &[&str],
    name: &str,
    rule: &str,
    valid: impl Fn(&T) -> bool,
) -> Result<Option<T>, String> {
    if let Some((k, _)) = params.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return Err(format!(
            "unknown option {k:?} (options: {})",
            known.join(", ")
        ));
    }
    match params.iter().find(|(k, _)| k == name) {
        None => Ok(None),
        Some((_, v)) => match v.parse::<T>() {
            Ok(t) if valid(&t) => Ok(Some(t)),
            _ => Err(format!("option {name} {rule} (got {v:?})")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_take_names_and_addresses() {
        assert_eq!(parse_host_port("127.0.0.1:9042"), Ok(("127.0.0.1", 9042)));
        assert_eq!(
            parse_host_port("kafka-0.kafka:9092"),
            Ok(("kafka-0.kafka", 9092))
        );
        assert_eq!(parse_host_port("[::1]:9092"), Ok(("[::1]", 9092)));
        assert_eq!(
            parse_host_ports("a:1,b:65535"),
            Ok(vec!["a:1".to_string(), "b:65535".to_string()])
        );
    }

    #[test]
    fn host_ports_refuse_port_zero_spaces_and_missing_parts() {
        for bad in [
            "h:0", "h:65536", "h", ":9042", "h:", "h:x", " h:1", "a b:1", "h :1", "h:-1", "",
        ] {
            let err = parse_host_port(bad).unwrap_err();
            assert!(err.contains("HOST:PORT"), "{bad:?}: {err}");
        }
        assert!(parse_host_ports("a:1,,b:2").unwrap_err().contains("\"\""));
    }

    #[test]
    fn queries_keep_order_and_refuse_repeats_and_bare_names() {
        assert_eq!(parse_query(None), Ok(vec![]));
        assert_eq!(
            parse_query(Some("b=2&a=1")),
            Ok(vec![("b".into(), "2".into()), ("a".into(), "1".into())])
        );
        assert!(parse_query(Some("a=1&a=2"))
            .unwrap_err()
            .contains("given twice"));
        assert!(parse_query(Some("a")).unwrap_err().contains("NAME=VALUE"));
        let params = parse_query(Some("n=3")).unwrap();
        assert_eq!(
            option::<u32>(&params, &["n"], "n", "r", |_| true),
            Ok(Some(3))
        );
        assert!(option::<u32>(&params, &["m"], "m", "r", |_| true)
            .unwrap_err()
            .contains("unknown option \"n\""));
        assert!(
            option::<u32>(&params, &["n"], "n", "is even", |n| n % 2 == 0)
                .unwrap_err()
                .contains("option n is even (got \"3\")")
        );
    }
}
