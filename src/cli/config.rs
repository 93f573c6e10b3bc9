//! Job files: `slotbandit SUBCOMMAND --config jobs/FILE.toml`. The file's `[SUBCOMMAND]` table
//! becomes flags (`bucket_minutes = 60` is `--bucket-minutes 60`, `skip_bad_files = true` is
//! `--skip-bad-files`) placed before the command line's own, so every value goes through the same
//! validation as a flag, and flags given on the command line win. An environment override
//! (`SLOTBANDIT_STORE`, `SLOTBANDIT_LOG`) wins over the file.

use std::ffi::OsString;
use std::path::Path;

/// Subcommands whose `--config` is a file of their own format.
const OWN_CONFIG: [&str; 1] = ["simulate"];

/// Keys that an environment variable overrides.
const ENV_OVERRIDES: [(&str, &str); 2] = [("store", "SLOTBANDIT_STORE"), ("log", "SLOTBANDIT_LOG")];

/// The command line with `--config FILE` replaced by the file's flags, spliced in after the
/// subcommand.
pub fn expand(argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let subcommand = argv
        .get(1)
        .and_then(|a| a.to_str())
        .filter(|a| !a.starts_with('-'));
    if subcommand.is_some_and(|s| OWN_CONFIG.contains(&s)) {
        return Ok(argv);
    }
    let Some((path, rest)) = take_config(&argv) else {
        return Ok(argv);
    };
    let Some(subcommand) = subcommand else {
        return Err("--config goes after a subcommand, e.g. `slotbandit backfill --config jobs/backfill.toml`".into());
    };
    let flags = flags_from_file(Path::new(&path), subcommand)?;
    let mut out = rest[..2].to_vec();
    out.extend(flags.into_iter().map(OsString::from));
    out.extend_from_slice(&rest[2..]);
    Ok(out)
}

/// The `--config` path and the command line without it.
fn take_config(argv: &[OsString]) -> Option<(OsString, Vec<OsString>)> {
    let mut rest = Vec::with_capacity(argv.len());
    let mut path = None;
    let mut args = argv.iter();
    while let Some(a) = args.next() {
        if a == "--config" {
            path = Some(args.next().cloned().unwrap_or_default());
        } else if let Some(p) = a.to_str().and_then(|s| s.strip_prefix("--config=")) {
            path = Some(p.into());
        } else {
            rest.push(a.clone());
        }
    }
    path.map(|p| (p, rest))
}

fn flags_from_file(path: &Path, subcommand: &str) -> Result<Vec<String>, String> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("--config {name}: {e}"))?;
    let doc: toml::Table = text.parse().map_err(|e| format!("--config {name}: {e}"))?;
    let Some(table) = doc.get(subcommand) else {
        return Err(format!("--config {name}: no [{subcommand}] table"));
    };
    let Some(table) = table.as_table() else {
        return Err(format!("--config {name}: [{subcommand}] must be a table"));
    };
    let mut flags = Vec::new();
    for (key, value) in table {
        if ENV_OVERRIDES
            .iter()
            .any(|(k, var)| k == key && std::env::var_os(var).is_some())
        {
            continue;
        }
        let flag = format!("--{}", key.replace('_', "-"));
        let values = match value {
            toml::Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        };
        for v in values {
            match v {
                toml::Value::Boolean(true) => flags.push(flag.clone()),
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) => flags.extend([flag.clone(), s]),
                toml::Value::Integer(i) => flags.extend([flag.clone(), i.to_string()]),
                toml::Value::Float(f) => flags.extend([flag.clone(), f.to_string()]),
                other => {
                    return Err(format!(
                        "--config {name}: [{subcommand}] {key} must be a string, number or boolean (got {})",
                        other.type_str()
                    ))
                }
            }
        }
    }
    Ok(flags)
}
