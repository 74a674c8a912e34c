#!/usr/bin/env python3
"""Reads deploy/k8s so the container test runs what Kubernetes would run.

    k8s_env.py node-script         the StatefulSet container's shell script
    k8s_env.py node-env NAMESPACE  its environment (literal values and the
                                   ConfigMap), one NAME=VALUE per line
    k8s_env.py gateway-env NAMESPACE  the gateway Deployment's environment

Downward-API values (POD_NAME, POD_NAMESPACE) are left to the caller;
$(POD_NAMESPACE) references are expanded to NAMESPACE.
"""
import pathlib
import sys

import yaml

K8S = pathlib.Path(__file__).resolve().parent.parent / "k8s"


def docs(name):
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def container(file, kind):
    (obj,) = [d for d in docs(file) if d["kind"] == kind]
    return obj["spec"]["template"]["spec"]["containers"][0]


def env_lines(c, namespace):
    out = []
    for ref in c.get("envFrom", []):
        (cm,) = [d for d in docs("configmap.yaml") if d["metadata"]["name"] == ref["configMapRef"]["name"]]
        out += [f"{k}={v}" for k, v in cm["data"].items()]
    for e in c.get("env", []):
        if "value" in e:
            out.append(f"{e['name']}={e['value'].replace('$(POD_NAMESPACE)', namespace)}")
    return out


def main():
    what = sys.argv[1]
    if what == "node-script":
        print(container("statefulset.yaml", "StatefulSet")["args"][0])
    elif what == "node-env":
        print("\n".join(env_lines(container("statefulset.yaml", "StatefulSet"), sys.argv[2])))
    elif what == "gateway-env":
        print("\n".join(env_lines(container("gateway.yaml", "Deployment"), sys.argv[2])))
    else:
        sys.exit(f"unknown: {what}")


main()
