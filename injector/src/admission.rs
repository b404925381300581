//! `AdmissionReview` `admission.k8s.io/v1` on the wire, as kube-apiserver sends and reads it
//! (`../shared/specs/kubernetes/`): the response echoes the request's `uid`, allows the pod,
//! and carries the patch as a base64 string with `patchType: JSONPatch`.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

pub const API_VERSION: &str = "admission.k8s.io/v1";

/// What the injector reads of a review.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub uid: String,
    #[serde(default)]
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub object: Option<Value>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<Request>,
}

/// Reads a review; the error says what is wrong with it (the webhook answers 400 with it).
pub fn parse(body: &[u8]) -> Result<Request, String> {
    let review: Review =
        serde_json::from_slice(body).map_err(|e| format!("AdmissionReview: {e}"))?;
    if review.kind != "AdmissionReview" || review.api_version != API_VERSION {
        return Err(format!(
            "expected kind AdmissionReview, apiVersion {API_VERSION}; got kind {:?}, apiVersion {:?}",
            review.kind, review.api_version
        ));
    }
    let request = review
        .request
        .ok_or_else(|| "AdmissionReview: request: missing".to_string())?;
    if request.uid.is_empty() {
        return Err("AdmissionReview: request.uid: empty".into());
    }
    Ok(request)
}

impl Request {
    /// Only the creation of a Pod itself (not of a subresource such as `binding`) is injected.
    pub fn is_pod_creation(&self) -> bool {
        self.kind.group.is_empty()
            && self.kind.kind == "Pod"
            && self.operation == "CREATE"
            && self.sub_resource.as_deref().is_none_or(str::is_empty)
    }
}

/// kube-apiserver keeps warnings short; longer ones are cut with a marker.
const WARNING_LIMIT: usize = 256;

fn shorten(w: &str) -> String {
    if w.len() <= WARNING_LIMIT {
        return w.to_string();
    }
    let mut end = WARNING_LIMIT - 3;
    while !w.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &w[..end])
}

/// The response: always allowed; the patch when there is one.
pub fn respond(uid: &str, patch: &[Value], warnings: &[String]) -> Vec<u8> {
    let mut response = json!({"uid": uid, "allowed": true});
    if !patch.is_empty() {
        // Go's []byte in JSON is a base64 string; a JSON array here is refused by the API server.
        let bytes = serde_json::to_vec(patch).unwrap_or_default();
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    if !warnings.is_empty() {
        response["warnings"] = json!(warnings.iter().map(|w| shorten(w)).collect::<Vec<_>>());
    }
    let review =
        json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response});
    serde_json::to_vec(&review).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_review_parses() {
        let text = include_str!(
            "../../../shared/specs/kubernetes/admission.k8s.io.v1.AdmissionReview.testdata.json"
        );
        let r = parse(text.as_bytes()).unwrap();
        assert_eq!(r.uid, "uidValue");
        assert_eq!(r.namespace.as_deref(), Some("namespaceValue"));
        assert!(!r.is_pod_creation());
    }

    #[test]
    fn bad_reviews_say_why() {
        assert!(parse(b"{").unwrap_err().starts_with("AdmissionReview:"));
        let e = parse(br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"a"}}"#).unwrap_err();
        assert!(e.contains("v1beta1"), "{e}");
        let e =
            parse(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#).unwrap_err();
        assert!(e.contains("request: missing"), "{e}");
    }

    #[test]
    fn the_patch_is_a_base64_string_on_the_wire() {
        let patch = vec![json!({"op": "add", "path": "/metadata/annotations", "value": {}})];
        let bytes = respond("u-1", &patch, &["w".repeat(300)]);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["apiVersion"], API_VERSION);
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], "u-1");
        assert_eq!(v["response"]["allowed"], true);
        assert_eq!(v["response"]["patchType"], "JSONPatch");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(v["response"]["patch"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&decoded).unwrap(),
            Value::Array(patch)
        );
        assert_eq!(
            v["response"]["warnings"][0].as_str().unwrap().len(),
            WARNING_LIMIT
        );

        let v: Value = serde_json::from_slice(&respond("u-2", &[], &[])).unwrap();
        assert!(v["response"].get("patch").is_none() && v["response"].get("patchType").is_none());
    }
}
