"""Offline checks of everything under deploy/ (no cluster here):

1. every kustomization under deploy/ renders with `kubectl kustomize`, and every object it
   renders passes `kubernetes-validate` (the official Kubernetes OpenAPI schemas, strict: unknown
   fields are errors) -- the CRDs included, as apiextensions.k8s.io/v1 objects;
2. the five scenario manifests (deploy/examples) validate against the InferenceService CRD's
   own openAPIV3Schema, under both groups (Siesta's and KServe's);
3. every metric the Grafana dashboard queries is one that Siesta exports;
4. the Deployments and Services `siesta render` (the controller's code) makes for the scenario
   manifests pass the Kubernetes schemas.

    SIESTA_BIN=target/debug/siesta .venv/bin/python scripts/validate_deploy.py"""
import json
import os
import pathlib
import re
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.33"
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


# 1. kustomizations render and validate.
for kustomization in sorted(DEPLOY.rglob("kustomization.yaml")):
    dir = kustomization.parent
    run = subprocess.run(["kubectl", "kustomize", str(dir)], capture_output=True, text=True)
    check(run.returncode == 0, f"kubectl kustomize {dir.relative_to(ROOT)} {run.stderr.strip()}")
    if run.returncode != 0:
        continue
    for doc in yaml.safe_load_all(run.stdout):
        what = f"{dir.relative_to(ROOT)}: {doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            check(True, what)
        except Exception as e:  # ValidationError, or a kind the schemas do not know
            check(False, f"{what}: {str(e).splitlines()[0]}")

# 2. scenario manifests against the CRD's schema.
for crd_file, group in [(DEPLOY / "base" / "crd.yaml", "serving.siesta.dev"),
                        (DEPLOY / "overlays" / "kserve-group" / "crd-kserve-group.yaml", "serving.kserve.io")]:
    crd = yaml.safe_load(crd_file.read_text())
    check(crd["spec"]["group"] == group, f"{crd_file.relative_to(ROOT)} is for {group}")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for manifest in sorted((DEPLOY / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(manifest.read_text()):
            doc["apiVersion"] = f"{group}/v1beta1"
            errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
            check(not errors, f"{manifest.relative_to(ROOT)} against the {group} CRD {errors[:2]}")
    bad = yaml.safe_load((DEPLOY / "examples" / "autoscale.yaml").read_text())
    bad["spec"]["predictor"]["minReplicas"] = -1
    check(any(jsonschema.Draft7Validator(schema).iter_errors(bad)), f"the {group} CRD rejects minReplicas: -1")

# 4. what the controller applies for each scenario manifest (`siesta render`, the same code as
#    its reconcile) passes the Kubernetes schemas too. Needs a siesta built with `kubernetes`.
siesta = os.environ.get("SIESTA_BIN")
check(bool(siesta), "SIESTA_BIN names a siesta built with --features kubernetes")
for manifest in sorted((DEPLOY / "examples").glob("*.yaml")) if siesta else []:
    run = subprocess.run([siesta, "render", str(manifest)], capture_output=True, text=True)
    check(run.returncode == 0, f"siesta render {manifest.relative_to(ROOT)} {run.stderr.strip()}")
    docs = [d for d in yaml.safe_load_all(run.stdout) if d] if run.returncode == 0 else []
    check(len(docs) >= 2, f"siesta render {manifest.relative_to(ROOT)}: {len(docs)} objects")
    for doc in docs:
        what = f"rendered {manifest.name}: {doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            check(True, what)
        except Exception as e:
            check(False, f"{what}: {str(e).splitlines()[0]}")

# 3. dashboard metrics exist.
sources = "".join(p.read_text() for d in ("lifecycle/src", "runtime/src", "k8s/src") for p in (ROOT / d).rglob("*.rs"))
exported = set(re.findall(r'"(siesta_[a-z_]+)"', sources))
for dash in sorted((DEPLOY / "grafana").glob("*.json")):
    queried = set(re.findall(r"siesta_[a-z_]+", json.dumps(json.loads(dash.read_text()))))
    for metric in sorted(queried):
        base = re.sub(r"_(bucket|sum|count)$", "", metric)
        check(base in exported, f"{dash.relative_to(ROOT)} queries {metric}, which Siesta exports")

if failures:
    print(f"{len(failures)} check(s) failed", file=sys.stderr)
    sys.exit(1)
print("deploy/ is valid")
