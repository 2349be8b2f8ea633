//! Meta's media endpoints, for the media of inbound messages: a media id's download
//! URL (`GET /{version}/{media_id}`, which expires within minutes), then the file
//! behind it, both with the number's bearer token; and Meta's size limit for each
//! media type.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::graph::{parse_error, ErrorClass, GraphClient, GraphError};

/// The longest one media download may take.
const DOWNLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Meta's largest file for each media type (Cloud API reference, media).
pub fn max_bytes(kind: &str) -> usize {
    const MB: usize = 1024 * 1024;
    match kind {
        "image" => 5 * MB,
        "audio" | "video" => 16 * MB,
        "sticker" => 500 * 1024,
        _ => 100 * MB,
    }
}

/// What `GET /{media_id}` tells of a media file.
#[derive(Debug, Clone)]
pub struct MediaInfo {
    pub url: String,
    pub mime_type: String,
    /// Hex SHA-256 of the file.
    pub sha256: Option<String>,
    pub file_size: Option<u64>,
}

#[derive(Deserialize)]
struct InfoBody {
    url: String,
    #[serde(default)]
    mime_type: String,
    sha256: Option<String>,
    /// Meta sends it as a string or a number.
    file_size: Option<serde_json::Value>,
}

fn permanent(message: String) -> GraphError {
    GraphError {
        class: ErrorClass::Permanent,
        http_status: None,
        code: None,
        subcode: None,
        title: Some("Media download".into()),
        message,
    }
}

impl GraphClient {
    /// The download URL and facts of media `media_id`.
    pub async fn media_info(
        &self,
        media_id: &str,
        access_token: &str,
    ) -> Result<MediaInfo, GraphError> {
        if media_id.is_empty() || !media_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(permanent(format!("{media_id:?} is not a media id")));
        }
        let url = format!("{}/{}/{}", self.base_url, self.version, media_id);
        let bytes = self.get_ok(&url, access_token, 64 * 1024).await?;
        let info: InfoBody = serde_json::from_slice(&bytes).map_err(|e| {
            GraphError::network(
                ErrorClass::Transient,
                format!("Graph API media answer: {e}"),
            )
        })?;
        let file_size = match info.file_size {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        Ok(MediaInfo {
            url: info.url,
            mime_type: info.mime_type,
            sha256: info.sha256,
            file_size,
        })
    }

    /// The file of `info`, at most `max` bytes, checked against Meta's hash.
    pub async fn download_media(
        &self,
        info: &MediaInfo,
        access_token: &str,
        max: usize,
    ) -> Result<Vec<u8>, GraphError> {
        if info.file_size.is_some_and(|size| size > max as u64) {
            return Err(permanent(format!(
                "the file has {} bytes, more than Meta's limit of {max} for its type",
                info.file_size.unwrap_or_default()
            )));
        }
        // A file of up to 100 MB gets time enough at a modest rate: the client's
        // timeout is for Meta's short answers.
        let mut response = self
            .client
            .get(&info.url)
            .timeout(DOWNLOAD_TIMEOUT)
            .bearer_auth(access_token)
            .send()
            .await
            .map_err(|e| {
                GraphError::network(ErrorClass::Transient, format!("media download: {e}"))
            })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.body().limit(64 * 1024).await.unwrap_or_default();
            return Err(parse_error(status.as_u16(), &body));
        }
        let bytes = response.body().limit(max).await.map_err(|e| match e {
            awc::error::PayloadError::Overflow => permanent(format!(
                "the file is larger than Meta's limit of {max} bytes for its type"
            )),
            e => GraphError::network(ErrorClass::Transient, format!("media download: {e}")),
        })?;
        if let Some(expected) = info.sha256.as_deref().filter(|h| h.len() == 64) {
            let actual = hex::encode(Sha256::digest(&bytes));
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(GraphError::network(
                    ErrorClass::Transient,
                    "the downloaded file does not match Meta's SHA-256".into(),
                ));
            }
        }
        Ok(bytes.to_vec())
    }
}
