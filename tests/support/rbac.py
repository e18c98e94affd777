"""RBAC for the API-server emulator: the rules a chart renders, enforced for one service account.

``Authorizer.from_manifests`` collects the ClusterRoles and Roles bound to a service account by the
ClusterRoleBindings and RoleBindings among rendered manifests, and ``allows`` answers the question
the real RBAC authorizer answers: may this subject do ``verb`` on ``group/resource[/subresource]``
(optionally ``name``) in ``namespace``? Matching follows Kubernetes: ``*`` wildcards, a
ClusterRoleBinding grants in every namespace and on cluster-scoped resources, a RoleBinding only
in its namespace (cluster-scoped resources never), ``resourceNames`` restrict by name (and then
never match a ``create`` or a ``list``/``watch`` without a name).

``request_attributes`` turns an HTTP request into those attributes the way kube-apiserver does
(``GET`` of a collection is ``list``, with ``watch=true`` it is ``watch``; ``PUT`` is ``update``).
Non-resource paths (discovery, ``/version``) are what every authenticated user may read by the
default ``system:discovery`` binding, so they are not checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Attributes:
    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str

    def __str__(self) -> str:
        what = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        where = f' in namespace "{self.namespace}"' if self.namespace else " at the cluster scope"
        named = f' "{self.name}"' if self.name else ""
        return f'{self.verb} {what}{named} (group "{self.group}"){where}'


def request_attributes(method: str, path: str, query: Mapping[str, str]) -> Attributes | None:
    """The RBAC attributes of an API request; None for non-resource paths (discovery)."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if not rest:
        return None  # the group-version's discovery document
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if resource == "namespaces" and name and not namespace:
        namespace = name  # a namespace object is checked in its own namespace, as kube-apiserver does
    method = method.upper()
    if method == "GET":
        verb = "watch" if query.get("watch") in ("true", "1") else ("get" if name else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if name else "deletecollection"}.get(method, method.lower())
    return Attributes(verb, group, resource, subresource, namespace, name)


def _matches(rule: Mapping[str, Any], a: Attributes) -> bool:
    def has(key: str, value: str) -> bool:
        values = rule.get(key) or []
        return "*" in values or value in values

    full = f"{a.resource}/{a.subresource}" if a.subresource else a.resource
    if not (has("verbs", a.verb) and has("apiGroups", a.group)):
        return False
    resources = rule.get("resources") or []
    if not ("*" in resources or full in resources or (a.subresource and f"*/{a.subresource}" in resources)):
        return False
    names = rule.get("resourceNames") or []
    if names:
        return bool(a.name) and a.name in names
    return True


@dataclass
class Authorizer:
    """The rules bound to one service account: cluster-wide ones, and per-namespace ones."""

    subject: str
    cluster_rules: list[dict[str, Any]]
    namespace_rules: dict[str, list[dict[str, Any]]]

    @classmethod
    def from_manifests(cls, docs: Iterable[Mapping[str, Any]], namespace: str, service_account: str) -> Authorizer:
        docs = list(docs)
        cluster_roles = {d["metadata"]["name"]: d.get("rules") or [] for d in docs if d["kind"] == "ClusterRole"}
        roles = {(d["metadata"]["namespace"], d["metadata"]["name"]): d.get("rules") or []
                 for d in docs if d["kind"] == "Role"}

        def bound(binding: Mapping[str, Any]) -> bool:
            return any(s.get("kind") == "ServiceAccount" and s.get("name") == service_account
                       and s.get("namespace") == namespace for s in binding.get("subjects") or [])

        cluster_rules: list[dict[str, Any]] = []
        namespace_rules: dict[str, list[dict[str, Any]]] = {}
        for d in docs:
            if d["kind"] == "ClusterRoleBinding" and bound(d):
                cluster_rules += cluster_roles[d["roleRef"]["name"]]
            elif d["kind"] == "RoleBinding" and bound(d):
                ns = d["metadata"]["namespace"]
                ref = d["roleRef"]
                rules = cluster_roles[ref["name"]] if ref["kind"] == "ClusterRole" else roles[(ns, ref["name"])]
                namespace_rules.setdefault(ns, []).extend(rules)
        return cls(f"system:serviceaccount:{namespace}:{service_account}", cluster_rules, namespace_rules)

    def allows(self, a: Attributes) -> bool:
        if any(_matches(r, a) for r in self.cluster_rules):
            return True
        namespaced_request = bool(a.namespace) and not (a.resource == "namespaces" and a.name)
        return namespaced_request and any(_matches(r, a) for r in self.namespace_rules.get(a.namespace, []))

    def forbidden_message(self, a: Attributes) -> str:
        return f'{a.resource} is forbidden: User "{self.subject}" cannot {a}'


__all__ = ["Attributes", "Authorizer", "request_attributes"]
