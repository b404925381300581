//! The chart's CRDs for `AuthorizationPolicy` and `Canary` and the Rust types the control plane
//! reads them into name the same fields at every level: a field added to one and not the other
//! fails here.

use std::collections::BTreeSet;

use pillion_control_plane::config::canary::{
    AbMatch, AnalysisSpec, CanarySpec, CookieRule, HeaderRule,
};
use pillion_control_plane::config::{AllowRule, AuthorizationPolicySpec, PolicyTargetRef};
use serde::Deserialize;
use serde_json::Value;

/// The field names a `#[derive(Deserialize)]` struct asks for, as serde hands them to the
/// deserializer (renames applied).
fn fields_of<'de, T: Deserialize<'de>>() -> BTreeSet<String> {
    struct Probe(BTreeSet<String>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> serde::Deserializer<'de> for &mut Probe {
        type Error = Stop;
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Stop> {
            self.0.extend(fields.iter().map(|f| f.to_string()));
            Err(Stop)
        }
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut probe = Probe(BTreeSet::new());
    let _ = T::deserialize(&mut probe);
    probe.0
}

fn properties(schema: &Value) -> BTreeSet<String> {
    schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn the_crd_and_the_rust_type_agree() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/pillion/crds/authorizationpolicies.pillion.dev.yaml"
    );
    let crd: Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(crd["spec"]["group"], "pillion.dev");
    assert_eq!(crd["spec"]["names"]["kind"], "AuthorizationPolicy");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(
        properties(spec),
        fields_of::<AuthorizationPolicySpec>(),
        "spec"
    );
    assert_eq!(
        properties(&spec["properties"]["targetRef"]),
        fields_of::<PolicyTargetRef>(),
        "spec.targetRef"
    );
    assert_eq!(
        properties(&spec["properties"]["allow"]["items"]),
        fields_of::<AllowRule>(),
        "spec.allow[]"
    );
    // Required in the CRD exactly where the Rust type has no default.
    let required = |s: &Value| -> BTreeSet<String> {
        s["required"]
            .as_array()
            .map(|r| r.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        required(spec),
        ["allow", "targetRef"].map(String::from).into()
    );
    assert_eq!(
        required(&spec["properties"]["targetRef"]),
        ["kind", "name"].map(String::from).into()
    );
}

fn crd(file: &str) -> Value {
    let path = format!(
        "{}/../charts/pillion/crds/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_canary_crd_and_the_rust_type_agree() {
    let crd = crd("canaries.pillion.dev.yaml");
    assert_eq!(crd["spec"]["names"]["kind"], "Canary");
    let version = &crd["spec"]["versions"][0];
    assert!(
        version["subresources"]["status"].is_object(),
        "the controller writes status"
    );
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(properties(spec), fields_of::<CanarySpec>(), "spec");
    let m = &spec["properties"]["match"];
    assert_eq!(properties(m), fields_of::<AbMatch>(), "spec.match");
    assert_eq!(
        properties(&m["properties"]["headers"]["items"]),
        fields_of::<HeaderRule>(),
        "spec.match.headers[]"
    );
    assert_eq!(
        properties(&m["properties"]["cookies"]["items"]),
        fields_of::<CookieRule>(),
        "spec.match.cookies[]"
    );
    assert_eq!(
        properties(&spec["properties"]["analysis"]),
        fields_of::<AnalysisSpec>(),
        "spec.analysis"
    );
    let required: BTreeSet<String> = spec["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        required,
        ["candidate", "service", "stable"].map(String::from).into()
    );
}

/// The Gateway API's own HTTPRoute CRD (v1.6.1, standard channel, from `shared/specs`): the
/// route's types, filters included, read every field it defines, at every level (a field they
/// lacked would be refused as unknown; one they invented would never be set by a real object).
#[test]
fn the_httproute_types_read_every_field_of_the_gateway_api_crd() {
    use pillion_control_plane::config::filters::{
        Cors, Fraction, HeaderModifier, HttpHeader, HttpRouteFilter, MirrorBackendRef,
        PathModifier, RequestMirror, RequestRedirect, UrlRewrite,
    };
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/specs/gateway-api/gateway.networking.k8s.io_httproutes.standard.v1.6.1.crd.yaml"
    );
    let Ok(text) = std::fs::read_to_string(path) else {
        // shared/ sits beside the checkout in development and CI; a bare clone has no specs.
        eprintln!("skipped: {path} not found");
        return;
    };
    let crd: Value = serde_saphyr::from_str(&text).unwrap();
    let v1 = crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "v1")
        .unwrap();
    let spec = &v1["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let rule = &spec["properties"]["rules"]["items"];
    {
        use pillion_control_plane::config::{
            BackendRef, HttpPathMatch, HttpRouteMatch, HttpRouteRule, HttpRouteSpec,
            HttpRouteTimeouts, HttpValueMatch, ParentRef,
        };
        let p = |v: &Value, name: &str| v["properties"][name].clone();
        assert_eq!(properties(spec), fields_of::<HttpRouteSpec>(), "spec");
        assert_eq!(
            properties(&p(spec, "parentRefs")["items"]),
            fields_of::<ParentRef>(),
            "spec.parentRefs[]"
        );
        assert_eq!(
            properties(rule),
            fields_of::<HttpRouteRule>(),
            "spec.rules[]"
        );
        let m = &p(rule, "matches")["items"];
        assert_eq!(properties(m), fields_of::<HttpRouteMatch>(), "matches[]");
        assert_eq!(
            properties(&p(m, "path")),
            fields_of::<HttpPathMatch>(),
            "matches[].path"
        );
        for list in ["headers", "queryParams"] {
            assert_eq!(
                properties(&p(m, list)["items"]),
                fields_of::<HttpValueMatch>(),
                "matches[].{list}[]"
            );
        }
        assert_eq!(
            properties(&p(rule, "backendRefs")["items"]),
            fields_of::<BackendRef>(),
            "backendRefs[]"
        );
        assert_eq!(
            properties(&p(rule, "timeouts")),
            fields_of::<HttpRouteTimeouts>(),
            "timeouts"
        );
    }
    let rule_filter = &rule["properties"]["filters"]["items"];
    let backend_filter =
        &rule["properties"]["backendRefs"]["items"]["properties"]["filters"]["items"];
    for (at, filter) in [("rule", rule_filter), ("backendRef", backend_filter)] {
        let p = |name: &str| &filter["properties"][name];
        // Also `externalAuth`, of the experimental channel, so that it is refused with a reason.
        let mut standard = properties(filter);
        standard.insert("externalAuth".into());
        assert_eq!(standard, fields_of::<HttpRouteFilter>(), "{at} filter");
        for modifier in ["requestHeaderModifier", "responseHeaderModifier"] {
            assert_eq!(
                properties(p(modifier)),
                fields_of::<HeaderModifier>(),
                "{at} {modifier}"
            );
            assert_eq!(
                properties(&p(modifier)["properties"]["set"]["items"]),
                fields_of::<HttpHeader>(),
                "{at} {modifier}.set[]"
            );
        }
        let redirect = p("requestRedirect");
        assert_eq!(
            properties(redirect),
            fields_of::<RequestRedirect>(),
            "{at} requestRedirect"
        );
        assert_eq!(
            properties(&redirect["properties"]["path"]),
            fields_of::<PathModifier>(),
            "{at} requestRedirect.path"
        );
        let rewrite = p("urlRewrite");
        assert_eq!(
            properties(rewrite),
            fields_of::<UrlRewrite>(),
            "{at} urlRewrite"
        );
        assert_eq!(
            properties(&rewrite["properties"]["path"]),
            fields_of::<PathModifier>(),
            "{at} urlRewrite.path"
        );
        assert_eq!(properties(p("cors")), fields_of::<Cors>(), "{at} cors");
        let mirror = p("requestMirror");
        assert_eq!(
            properties(mirror),
            fields_of::<RequestMirror>(),
            "{at} requestMirror"
        );
        assert_eq!(
            properties(&mirror["properties"]["backendRef"]),
            fields_of::<MirrorBackendRef>(),
            "{at} requestMirror.backendRef"
        );
        assert_eq!(
            properties(&mirror["properties"]["fraction"]),
            fields_of::<Fraction>(),
            "{at} requestMirror.fraction"
        );
    }
}
