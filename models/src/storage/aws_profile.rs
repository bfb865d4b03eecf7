//! Static keys from the AWS shared credentials file (`~/.aws/credentials`, or
//! `AWS_SHARED_CREDENTIALS_FILE`), profile `AWS_PROFILE` or `default`, as the AWS SDKs read it.
//! object_store reads keys from the environment only.

use std::path::PathBuf;

use super::remote::StorageEnv;

#[derive(Debug, PartialEq, Eq)]
pub struct ProfileCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

/// A file that is absent, or has no such profile, is `None`; a profile without both keys is an
/// error naming the file, the profile and what is missing (never the values).
pub fn read(env: &StorageEnv) -> object_store::Result<Option<ProfileCredentials>> {
    let path = match env.get("AWS_SHARED_CREDENTIALS_FILE") {
        Some(p) => PathBuf::from(p),
        None => match env.get("HOME") {
            Some(home) => PathBuf::from(home).join(".aws/credentials"),
            None => return Ok(None),
        },
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let profile = env.get("AWS_PROFILE").unwrap_or("default");
    parse(&text, profile).map_err(|reason| object_store::Error::Generic {
        store: "S3",
        source: format!("{}: profile '{profile}': {reason}", path.display()).into(),
    })
}

fn parse(text: &str, profile: &str) -> Result<Option<ProfileCredentials>, String> {
    let mut in_profile = false;
    let mut found = false;
    let (mut key, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            found |= in_profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = Some(v.trim().to_string());
        match k.trim() {
            "aws_access_key_id" => key = v,
            "aws_secret_access_key" => secret = v,
            "aws_session_token" => token = v,
            _ => {}
        }
    }
    if !found {
        return Ok(None);
    }
    match (key, secret) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Some(ProfileCredentials {
            access_key_id,
            secret_access_key,
            session_token: token,
        })),
        (None, _) => Err("aws_access_key_id is missing".into()),
        (_, None) => Err("aws_secret_access_key is missing".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# comment\n[default]\naws_access_key_id = AK1\naws_secret_access_key=SK1\n\n\
                        [ci]\naws_access_key_id=AK2\naws_secret_access_key = SK2\naws_session_token = T2\n\
                        [broken]\naws_access_key_id=AK3\n";

    #[test]
    fn profiles_are_read_by_name_and_a_broken_one_says_what_is_missing() {
        let default = parse(FILE, "default").unwrap().unwrap();
        assert_eq!(
            (default.access_key_id.as_str(), default.session_token),
            ("AK1", None)
        );
        let ci = parse(FILE, "ci").unwrap().unwrap();
        assert_eq!(ci.secret_access_key, "SK2");
        assert_eq!(ci.session_token.as_deref(), Some("T2"));
        assert_eq!(parse(FILE, "absent").unwrap(), None);
        let err = parse(FILE, "broken").unwrap_err();
        assert!(
            err.contains("aws_secret_access_key") && !err.contains("AK3"),
            "{err}"
        );
        assert_eq!(parse("garbage\n=\n[[", "default").unwrap(), None);
    }
}
