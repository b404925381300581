"""Plays kube-apiserver against the injector: sends AdmissionReviews (admission.k8s.io/v1) over
TLS for many pod shapes, checks each response as the API server does (HTTP 200, JSON, the same
apiVersion/kind, the request's uid, allowed, patchType JSONPatch with a base64 patch), applies
the patch with `jsonpatch` as the API server would, and validates the pod that results with
`kubernetes-validate --strict`.

    python admission_check.py URL CA_FILE

The namespace `meshed` is annotated `pillion.dev/inject: enabled` in the test's API server;
`plain` is not; `ghost` does not exist. Prints one line per case; exits 1 on the first failure.
"""
import base64, copy, json, ssl, sys, urllib.error, urllib.request, uuid

import jsonpatch
import kubernetes_validate

URL, CA = sys.argv[1], sys.argv[2]
CTX = ssl.create_default_context(cafile=CA)
VERSION = kubernetes_validate.latest_version()


def review(obj, namespace, operation="CREATE", kind="Pod", group=""):
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": kind.lower() + "s"},
            "requestKind": {"group": group, "version": "v1", "kind": kind},
            "requestResource": {"group": group, "version": "v1", "resource": kind.lower() + "s"},
            "name": obj.get("metadata", {}).get("name", ""),
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "uid": "u", "groups": ["system:serviceaccounts"]},
            "object": obj,
            "oldObject": None,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
            "dryRun": False,
        },
    }


def post(body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(URL, data=data, method="POST",
                                 headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, context=CTX, timeout=30) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def fail(case, why):
    print(f"FAIL {case}: {why}")
    sys.exit(1)


def admit(case, obj, namespace, **kw):
    """Sends one review, checks the response as kube-apiserver does, returns (pod after the
    patch, response)."""
    rv = review(obj, namespace, **kw)
    status, ctype, body = post(rv)
    if status != 200:
        fail(case, f"HTTP {status}: {body[:300]!r}")
    if not ctype.startswith("application/json"):
        fail(case, f"content-type {ctype}")
    out = json.loads(body)
    if out.get("apiVersion") != "admission.k8s.io/v1" or out.get("kind") != "AdmissionReview":
        fail(case, f"apiVersion/kind {out.get('apiVersion')}/{out.get('kind')}")
    resp = out.get("response") or {}
    if resp.get("uid") != rv["request"]["uid"]:
        fail(case, "uid not echoed")
    if resp.get("allowed") is not True:
        fail(case, f"not allowed: {resp}")
    result = copy.deepcopy(obj)
    if "patch" in resp:
        if resp.get("patchType") != "JSONPatch":
            fail(case, f"patchType {resp.get('patchType')}")
        if not isinstance(resp["patch"], str):
            fail(case, "patch is not a base64 string")
        ops = json.loads(base64.b64decode(resp["patch"], validate=True))
        if not isinstance(ops, list):
            fail(case, "patch is not a JSON array")
        result = jsonpatch.JsonPatch(ops).apply(result)
    elif "patchType" in resp:
        fail(case, "patchType without a patch")
    if kw.get("kind", "Pod") == "Pod":
        full = dict(result)
        full.setdefault("apiVersion", "v1")
        full.setdefault("kind", "Pod")
        try:
            kubernetes_validate.validate(full, VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(case, f"the patched pod does not validate: {e.message} at {list(e.path)}")
    return result, resp


def names(pod, field):
    return [c["name"] for c in pod.get("spec", {}).get(field, [])]


def expect_injected(case, pod, resp, first_app_init=None):
    init = names(pod, "initContainers")
    if init[:2] != ["pillion-init", "pillion-proxy"]:
        fail(case, f"initContainers {init}")
    if first_app_init and init[2] != first_app_init:
        fail(case, f"the pod's own init containers moved: {init}")
    proxy = pod["spec"]["initContainers"][1]
    if proxy.get("restartPolicy") != "Always":
        fail(case, "the proxy is not a native sidecar")
    ann = pod["metadata"]["annotations"]
    for k, v in [("prometheus.io/scrape", "true"), ("prometheus.io/port", "4191"), ("prometheus.io/path", "/metrics")]:
        if ann.get(k) != v:
            fail(case, f"annotation {k}={ann.get(k)!r}")
    if "pillion.dev/injected" not in ann:
        fail(case, "no pillion.dev/injected annotation")
    print(f"ok   {case}: injected")


def expect_untouched(case, before, after, resp):
    if after != before or "patch" in resp:
        fail(case, "the pod was changed")
    print(f"ok   {case}: untouched")


APP = {"name": "app", "image": "registry.example.com/app:1.0", "ports": [{"containerPort": 8080}]}


def pod(annotations=None, **spec):
    meta = {"name": "p-" + uuid.uuid4().hex[:6]}
    if annotations is not None:
        meta["annotations"] = annotations
    s = {"containers": [copy.deepcopy(APP)]}
    s.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": s}


ENABLED = {"pillion.dev/inject": "enabled"}

# 1. The pod asks; no initContainers, no other annotations.
p = pod(dict(ENABLED))
injected, resp = admit("pod annotation, bare pod", p, "plain")
expect_injected("pod annotation, bare pod", injected, resp)

# 2. Injecting what is already injected changes nothing.
after, resp = admit("already injected", injected, "meshed")
expect_untouched("already injected", injected, after, resp)

# 3. The namespace asks; the pod has no annotations at all (no metadata.annotations key).
p = pod()
after, resp = admit("namespace annotation, no pod annotations", p, "meshed")
expect_injected("namespace annotation, no pod annotations", after, resp)

# 4. disabled on the pod wins over the namespace.
p = pod({"pillion.dev/inject": "disabled"})
after, resp = admit("pod opts out in a meshed namespace", p, "meshed")
expect_untouched("pod opts out in a meshed namespace", p, after, resp)

# 5. Nobody asks.
p = pod({"team": "a"})
after, resp = admit("not asked", p, "plain")
expect_untouched("not asked", p, after, resp)

# 6. Existing init containers, volumes, annotations with keys that need ~0 and ~1.
p = pod({"pillion.dev/inject": "enabled", "example.com/a~b": "x", "a/b/c": "y"},
        initContainers=[{"name": "migrate", "image": "m:1"}],
        volumes=[{"name": "data", "emptyDir": {}}],
        securityContext={"runAsNonRoot": True, "runAsUser": 1000})
after, resp = admit("existing lists and escaped keys", p, "plain")
expect_injected("existing lists and escaped keys", after, resp, first_app_init="migrate")
if after["metadata"]["annotations"]["example.com/a~b"] != "x" or after["metadata"]["annotations"]["a/b/c"] != "y":
    fail("existing lists and escaped keys", "annotations lost")
if names(after, "volumes")[0] != "data":
    fail("existing lists and escaped keys", "volumes reordered")

# 7. A Deployment's pod: generateName, no name, the template hash label.
p = pod(dict(ENABLED))
del p["metadata"]["name"]
p["metadata"]["generateName"] = "checkout-5c8d7f9b4-"
p["metadata"]["labels"] = {"pod-template-hash": "5c8d7f9b4"}
after, resp = admit("generateName pod", p, "plain")
expect_injected("generateName pod", after, resp)
env = {e["name"]: e.get("value") for e in after["spec"]["initContainers"][1]["env"]}
if env.get("PILLION_WORKLOAD") != "$(POD_NAMESPACE)/checkout":
    fail("generateName pod", f"PILLION_WORKLOAD {env.get('PILLION_WORKLOAD')}")

# 8. hostNetwork: skipped, and said on the pod and as a warning.
p = pod(dict(ENABLED), hostNetwork=True)
after, resp = admit("hostNetwork", p, "plain")
if names(after, "initContainers") or "pillion.dev/inject-skipped" not in after["metadata"]["annotations"]:
    fail("hostNetwork", "not skipped with a reason")
if not any("hostNetwork" in w for w in resp.get("warnings", [])):
    fail("hostNetwork", f"no warning: {resp.get('warnings')}")
print("ok   hostNetwork: skipped, reason recorded")

# 9. A bad override: injected with the default, and the owner warned.
p = pod({"pillion.dev/inject": "enabled", "config.pillion.dev/proxy-memory-limit": "lots",
         "config.pillion.dev/skip-outbound-ports": "5432"})
after, resp = admit("bad override", p, "plain")
expect_injected("bad override", after, resp)
if not any("proxy-memory-limit" in w and "lots" in w for w in resp.get("warnings", [])):
    fail("bad override", f"no warning: {resp.get('warnings')}")
args = after["spec"]["initContainers"][0]["args"]
if "5432" not in args:
    fail("bad override", f"skip-outbound-ports not passed: {args}")

# 10. The namespace cannot be read: the pod's own annotation still counts; none: a warning.
p = pod(dict(ENABLED))
after, resp = admit("unknown namespace, pod asks", p, "ghost")
expect_injected("unknown namespace, pod asks", after, resp)
p = pod()
after, resp = admit("unknown namespace, pod silent", p, "ghost")
expect_untouched("unknown namespace, pod silent", p, after, resp)
if not any("ghost" in w for w in resp.get("warnings", [])):
    fail("unknown namespace, pod silent", f"no warning: {resp.get('warnings')}")

# 11. Not a pod creation: allowed, no patch.
p = pod(dict(ENABLED))
after, resp = admit("pod update", p, "plain", operation="UPDATE")
expect_untouched("pod update", p, after, resp)
d = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}}
after, resp = admit("a Deployment", d, "meshed", kind="Deployment", group="apps")
expect_untouched("a Deployment", d, after, resp)

# 12. A pod with no containers (a broken object): admitted unchanged, with the reason.
p = pod(dict(ENABLED))
p["spec"]["containers"] = []
rv = review(p, "plain")
status, _, body = post(rv)
resp = json.loads(body)["response"]
if status != 200 or resp.get("allowed") is not True or "patch" in resp and "initContainers" in base64.b64decode(resp["patch"]).decode():
    fail("no containers", f"{status} {resp}")
print("ok   no containers: admitted without the sidecar")

# 13. Not an AdmissionReview: 400 with the reason (the API server then applies failurePolicy).
status, _, body = post(b"{not json")
if status != 400 or b"AdmissionReview" not in body:
    fail("garbage", f"{status} {body!r}")
print("ok   garbage: 400 with the reason")
print("all admission cases passed")
