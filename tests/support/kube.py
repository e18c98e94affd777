"""A Kubernetes API server for tests: kmock 0.8's KubernetesEmulator, extended until Kopf is happy.

Measured with kopf 1.45.2 and kmock 0.8 (both pinned in pyproject.toml): the plain emulator keeps
objects and serves discovery, but sets no ``resourceVersion``/``uid``/``generation`` (Kopf's
finalizer JSON-patch ``test``s ``/metadata/resourceVersion`` and fails), answers 200 on create,
keeps ``metadata.namespace`` only if the body has it, has no status subresource, answers 500 where
an API server answers 409/422, and validates nothing. This subclass serves every object request
itself (create, get, list, watch, patch, put, delete) with:

- ``uid``, ``creationTimestamp``, a cluster-wide ``resourceVersion`` bumped on every change (a
  no-op patch changes nothing, as on a real server), ``generation`` bumped when anything outside
  ``metadata`` and ``status`` changes, ``generateName``;
- 201 on create, 409 ``AlreadyExists`` / ``Conflict`` (stale ``resourceVersion``), 404 ``NotFound``,
  422 ``Invalid`` (schema violations, failed JSON-patch ``test``), 400 ``BadRequest``
  (namespace mismatch), 415 for unknown patch types;
- merge-patch (RFC 7386), JSON-patch (RFC 6902: add, remove, replace, test, move, copy),
  strategic-merge-patch treated as a merge-patch, PUT with optimistic concurrency;
- the status subresource split for CRDs that declare it: the main endpoint ignores ``.status``,
  ``/status`` changes only ``.status``;
- CRD ``openAPIV3Schema``: pruning of unknown fields, defaulting, validation (jsonschema);
- finalizers and ``deletionTimestamp``; owner-reference garbage collection (background);
- watch streams from a ``resourceVersion`` with ``timeoutSeconds``; lists with a
  ``resourceVersion`` and equality ``labelSelector``s; ``stringData`` of Secrets folded into
  ``data``.

What it still does not do is listed in docs/operator.md.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import itertools
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import attrs
import celpy  # type: ignore[import-untyped]
import jsonschema  # type: ignore[import-untyped]
from kmock import KubernetesEmulator, Request, ResourceInfo, Server, action, resource

from tests.support.rbac import Attributes, Authorizer, request_attributes

Key = tuple[str, str, str]  # group, version, plural
ObjKey = tuple[str, str, str, str, str]  # group, version, plural, namespace ("" if cluster), name

CRD_RESOURCE = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")
NAMESPACES = ("", "v1", "namespaces")
_NAMESPACES_PATH = re.compile(r"/api/v1/namespaces(?:/([^/]+))?/?")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


@dataclass
class _Event:
    rv: int
    key: Key
    namespace: str
    type: str
    obj: dict[str, Any]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc: Any, parts: list[str]) -> Any:
    for p in parts:
        if isinstance(doc, list):
            doc = doc[int(p)]
        elif isinstance(doc, dict):
            doc = doc[p]
        else:
            raise KeyError(p)
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902; a failed ``test`` or a missing path is 422 as on a real server."""
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        try:
            kind = op["op"]
            parts = _pointer(op["path"])
            if kind == "test":
                if _resolve(doc, parts) != op.get("value"):
                    raise ApiError(422, "Invalid", f"the server rejected our request: test failed at {op['path']}")
                continue
            if kind in ("move", "copy"):
                src = _pointer(op["from"])
                value = copy.deepcopy(_resolve(doc, src))
                if kind == "move":
                    parent = _resolve(doc, src[:-1])
                    if isinstance(parent, list):
                        parent.pop(int(src[-1]))
                    else:
                        del parent[src[-1]]
                kind, op = "add", {"value": value}
            parent = _resolve(doc, parts[:-1])
            last = parts[-1] if parts else None
            if last is None:
                if kind in ("add", "replace"):
                    doc = copy.deepcopy(op["value"])
                    continue
                raise ApiError(422, "Invalid", "cannot remove the whole document")
            if kind == "add":
                if isinstance(parent, list):
                    idx = len(parent) if last == "-" else int(last)
                    if idx > len(parent):
                        raise IndexError(idx)
                    parent.insert(idx, copy.deepcopy(op["value"]))
                else:
                    parent[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                if isinstance(parent, list):
                    parent.pop(int(last))
                else:
                    del parent[last]
            elif kind == "replace":
                if isinstance(parent, list):
                    parent[int(last)] = copy.deepcopy(op["value"])
                else:
                    if last not in parent:
                        raise KeyError(last)
                    parent[last] = copy.deepcopy(op["value"])
            else:
                raise ApiError(422, "Invalid", f"unsupported JSON patch operation {kind!r}")
        except ApiError:
            raise
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, "Invalid", f"the server rejected our request: {op!r} failed: {exc!r}") from None
    return doc


def _essence(obj: dict[str, Any]) -> dict[str, Any]:
    """What ``generation`` counts: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def apply_defaults(obj: Any, schema: dict[str, Any]) -> None:
    """Structural-schema defaulting, as the API server does (nested defaults of defaults too)."""
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        for name, sub in props.items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
        for name, value in obj.items():
            if name in props:
                apply_defaults(value, props[name])
            elif isinstance(schema.get("additionalProperties"), dict):
                apply_defaults(value, schema["additionalProperties"])
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            apply_defaults(item, schema["items"])


def prune(obj: Any, schema: dict[str, Any], root: bool = False) -> None:
    """Drop fields the structural schema does not know (unless it preserves unknown fields)."""
    if isinstance(obj, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for name in list(obj):
            if root and name in ("apiVersion", "kind", "metadata"):
                continue
            if name in props:
                prune(obj[name], props[name])
            elif isinstance(extra, dict):
                prune(obj[name], extra)
            elif extra is True:
                continue
            else:
                del obj[name]
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            prune(item, schema["items"])


def _strip_extensions(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_extensions(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if isinstance(schema, list):
        return [_strip_extensions(v) for v in schema]
    return schema


def validation_errors(obj: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft4Validator(_strip_extensions(schema))
    messages = []
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in err.absolute_path) or "<root>"
        messages.append(f"{path}: Invalid value: {err.message}")
    return messages


_CEL = celpy.Environment()
_CEL_PROGRAMS: dict[str, Any] = {}
_MISSING = object()


def cel_errors(obj: Any, old: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """``x-kubernetes-validations`` (CEL) as the API server runs them: each rule where its value is
    present; a rule that uses ``oldSelf`` (a transition rule) only on an update that had a value."""
    errors: list[str] = []
    if obj is _MISSING:
        return errors
    for rule in schema.get("x-kubernetes-validations") or []:
        expression = rule["rule"]
        transition = "oldSelf" in expression
        if transition and old is _MISSING:
            continue
        program = _CEL_PROGRAMS.get(expression)
        if program is None:
            program = _CEL_PROGRAMS[expression] = _CEL.program(_CEL.compile(expression))
        activation = {"self": celpy.json_to_cel(obj)}
        if transition:
            activation["oldSelf"] = celpy.json_to_cel(old)
        result = program.evaluate(activation)
        if result is not True and not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            where = (rule.get("fieldPath") or path or "<root>").lstrip(".")
            errors.append(f"{where}: Invalid value: {rule.get('message') or 'failed rule: ' + expression}")
    if isinstance(obj, dict):
        for name, sub in (schema.get("properties") or {}).items():
            old_value = old.get(name, _MISSING) if isinstance(old, dict) else _MISSING
            errors += cel_errors(obj.get(name, _MISSING), old_value, sub, f"{path}.{name}")
    return errors


@attrs.define(kw_only=True)
class ApiServer(KubernetesEmulator):
    """The emulator plus what Kopf and the kubernetes client need of a real API server."""

    _store: dict[ObjKey, dict[str, Any]] = attrs.field(factory=dict, init=False)
    _log: list[_Event] = attrs.field(factory=list, init=False)
    _rv: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_rv: int = attrs.field(default=0, init=False)
    _changed: asyncio.Condition | None = attrs.field(default=None, init=False)
    _schemas: dict[Key, dict[str, Any]] = attrs.field(factory=dict, init=False)
    _status_subresource: set[Key] = attrs.field(factory=set, init=False)
    _kinds: dict[Key, tuple[str, str, bool]] = attrs.field(factory=dict, init=False)  # kind, apiVersion, namespaced
    #: False: CEL rules are not run, as for a CRD applied before they existed (old objects, old CRDs).
    cel: bool = attrs.field(default=True, init=False)
    #: Bearer token -> the RBAC rules its requests are held to (tokens not listed are not checked).
    authorizers: dict[str, Authorizer] = attrs.field(factory=dict, init=False)
    #: Every request an authorizer refused (403), and every one it checked, for the tests to read.
    denied: list[str] = attrs.field(factory=list, init=False)
    authorized: list[Attributes] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()
        for res in self.resources:
            info = self.resources[res]
            api_version = f"{res.group}/{res.version}" if res.group else str(res.version)
            self._kinds[(str(res.group), str(res.version), str(res.plural))] = (
                info.kind or str(res.plural), api_version, bool(info.namespaced)
            )

    # --- setup from tests ------------------------------------------------------------------
    def register_crd(self, crd: dict[str, Any]) -> None:
        """Serve a CRD's resources (discovery, schema, status subresource) and store the CRD object."""
        spec = crd["spec"]
        names = spec["names"]
        for v in spec["versions"]:
            key = (spec["group"], v["name"], names["plural"])
            subresources = set((v.get("subresources") or {}).keys())
            self.resources[f"{spec['group']}/{v['name']}/{names['plural']}"] = ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular"),
                namespaced=spec["scope"] == "Namespaced",
                verbs={"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"},
                shortnames=set(names.get("shortNames", [])),
                categories=set(names.get("categories", [])),
                subresources=subresources,
            )
            self._kinds[key] = (names["kind"], f"{spec['group']}/{v['name']}", spec["scope"] == "Namespaced")
            self._schemas[key] = v["schema"]["openAPIV3Schema"]
            if "status" in subresources:
                self._status_subresource.add(key)
        body = copy.deepcopy(crd)
        self._commit_create(CRD_RESOURCE, "", body)

    # --- test-side access (same event loop as the server) ----------------------------------
    def obj(self, plural_key: Key, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self._store.get((*plural_key, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def objs(self, plural_key: Key, namespace: str | None = None) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(o) for (g, v, p, ns, _), o in self._store.items()
            if (g, v, p) == plural_key and (namespace is None or ns == namespace)
        ]

    def events_for(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """Kubernetes Events whose involvedObject is ``namespace/name`` (core v1 and events.k8s.io)."""
        out = []
        for (_, _, p, ns, _), o in self._store.items():
            if p == "events" and ns == namespace:
                involved = o.get("involvedObject") or o.get("regarding") or {}
                if involved.get("name") == name:
                    out.append(copy.deepcopy(o))
        return out

    async def create_namespace(self, name: str) -> None:
        if (*NAMESPACES, "", name) not in self._store:
            self._create(NAMESPACES, "", {"metadata": {"name": name}})
            await self._notify()

    async def delete_object(self, plural_key: Key, namespace: str, name: str) -> None:
        """Delete as a client would (finalizers honoured), from the test's side."""
        self._delete(plural_key, namespace, name)
        await self._notify()

    async def put_object(self, plural_key: Key, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create from the test's side, with the same validation and defaulting as over HTTP."""
        created = self._create(plural_key, namespace, copy.deepcopy(body))
        await self._notify()
        return created

    async def patch_object(self, plural_key: Key, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        result = self._update(plural_key, namespace, name, "application/merge-patch+json", patch, None, False)
        await self._notify()
        return result

    # --- RBAC ------------------------------------------------------------------------------
    async def _forbidden(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.Response | None:
        """403 if the request's token has an authorizer that refuses it (else None: go on).

        Besides the verb on the resource, what OwnerReferencesPermissionEnforcement asks (OpenShift
        enables it): an object whose ownerReferences set ``blockOwnerDeletion`` may only be written
        by someone who may ``update`` the owner's ``finalizers`` subresource.
        """
        token = raw_request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        authorizer = self.authorizers.get(token)
        if authorizer is None:
            return None
        attributes = request_attributes(raw_request.method, raw_request.path, raw_request.query)
        if attributes is None:
            return None
        checks = [attributes]
        if attributes.verb in ("create", "update", "patch"):
            try:
                body = json.loads(await raw_request.read() or b"null")
            except ValueError:
                body = None
            meta = body.get("metadata") if isinstance(body, dict) else None
            for ref in (meta or {}).get("ownerReferences") or [] if isinstance(meta, dict) else []:
                if not (isinstance(ref, dict) and ref.get("blockOwnerDeletion")):
                    continue
                group = str(ref.get("apiVersion", "")).rpartition("/")[0]
                plural = next((k[2] for k, (kind, api_version, _) in self._kinds.items()
                               if kind == ref.get("kind") and api_version == ref.get("apiVersion")), "")
                checks.append(Attributes("update", group, plural, "finalizers", attributes.namespace,
                                         str(ref.get("name", ""))))
        for a in checks:
            self.authorized.append(a)
            if not authorizer.allows(a):
                message = authorizer.forbidden_message(a)
                self.denied.append(message)
                return self._status(403, "Forbidden", message)
        return None

    # --- the HTTP side ---------------------------------------------------------------------
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        refused = await self._forbidden(raw_request)
        if refused is not None:
            return refused
        # kmock 0.8's path parser fails on /api/v1/namespaces[/name] (it reads "namespaces" as the
        # start of a namespaced path); Kopf lists and watches namespaces, so serve them here.
        match = _NAMESPACES_PATH.fullmatch(raw_request.path)
        if match is None:
            return await super().__call__(raw_request)
        body = await raw_request.read()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        query = dict(raw_request.query)
        name = match.group(1)
        method = raw_request.method.upper()
        act = (
            action.WATCH if method == "GET" and query.get("watch") == "true"
            else action.LIST if method == "GET" and name is None
            else action.FETCH if method == "GET"
            else action.CREATE if method == "POST"
            else action.UPDATE if method == "PATCH"
            else action.DELETE if method == "DELETE"
            else None
        )
        request = Request(
            method=method, url=raw_request.url, params=query, headers=dict(raw_request.headers),
            body=body, data=data, action=act, resource=resource("", "v1", "namespaces"),
            namespace=None, name=name, subresource=None, raw_request=raw_request,
        )
        return await self._handle(request)

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        cond = self._condition()
        async with cond:
            cond.notify_all()

    def _key_of(self, request: Request) -> Key | None:
        res = request.resource
        if res is None or not res.plural or res.version is None or res.group is None:
            return None
        key = (str(res.group), str(res.version), str(res.plural))
        return key if key in self._kinds else None

    async def _handle(self, request: Request) -> aiohttp.web.StreamResponse:
        key = self._key_of(request)
        if key is None:
            return await super()._handle(request)
        try:
            if request.action == action.WATCH:
                return await self._watch(request, key)
            response = self._serve(request, key)
            await self._notify()
            return response
        except ApiError as exc:
            return self._status(exc.code, exc.reason, exc.message)

    def _status(self, code: int, reason: str, message: str) -> aiohttp.web.Response:
        return aiohttp.web.json_response(
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
             "message": message, "reason": reason, "code": code},
            status=code,
        )

    def _serve(self, request: Request, key: Key) -> aiohttp.web.Response:
        ns = request.namespace or ""
        method = str(request.method.value).upper()
        name = request.name
        sub = request.subresource
        if sub not in (None, "status"):
            raise ApiError(404, "NotFound", f"subresource {sub!r} is not served by the emulator")
        if sub == "status" and key not in self._status_subresource:
            raise ApiError(404, "NotFound", "the resource has no status subresource")
        if method == "GET" and name is None:
            return aiohttp.web.json_response(self._list(key, request.namespace, request.params.get("labelSelector")))
        if method == "GET" and name is not None:
            return aiohttp.web.json_response(self._fetch(key, ns, name))
        if method == "POST" and name is None:
            if not isinstance(request.data, dict):
                raise ApiError(400, "BadRequest", "the body must be a JSON object")
            return aiohttp.web.json_response(self._create(key, ns, copy.deepcopy(request.data)), status=201)
        if method == "PATCH" and name is not None:
            ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
            return aiohttp.web.json_response(self._update(key, ns, name, ctype, request.data, None, sub == "status"))
        if method == "PUT" and name is not None:
            return aiohttp.web.json_response(self._update(key, ns, name, "put", request.data, None, sub == "status"))
        if method == "DELETE" and name is not None:
            return aiohttp.web.json_response(self._delete(key, ns, name))
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    # --- storage semantics -----------------------------------------------------------------
    def _kind(self, key: Key) -> tuple[str, str, bool]:
        return self._kinds[key]

    def _not_found(self, key: Key, name: str) -> ApiError:
        return ApiError(404, "NotFound", f'{key[2]} "{name}" not found')

    def _list(self, key: Key, namespace: str | None, selector: str | None) -> dict[str, Any]:
        wanted: dict[str, str] = {}
        for part in filter(None, (selector or "").split(",")):
            k, _, v = part.partition("=")
            wanted[k.strip()] = v.strip().lstrip("=")
        items = [
            o for o in self.objs(key, namespace)
            if all((o.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]
        kind, api_version, _ = self._kind(key)
        return {"apiVersion": api_version, "kind": f"{kind}List",
                "metadata": {"resourceVersion": str(self._last_rv)}, "items": items}

    def _fetch(self, key: Key, ns: str, name: str) -> dict[str, Any]:
        obj = self.obj(key, ns, name)
        if obj is None:
            raise self._not_found(key, name)
        return obj

    def _next_rv(self) -> str:
        self._last_rv = next(self._rv)
        return str(self._last_rv)

    def _record(self, key: Key, ns: str, type_: str, obj: dict[str, Any]) -> None:
        self._log.append(_Event(int(obj["metadata"]["resourceVersion"]), key, ns, type_, copy.deepcopy(obj)))

    def _admit(self, key: Key, obj: dict[str, Any], name: str, old: dict[str, Any] | None = None) -> None:
        """Pruning, defaulting and validation (schema, CEL rules) against a CRD; Secret stringData."""
        schema = self._schemas.get(key)
        kind = self._kind(key)[0]
        if schema is not None:
            prune(obj, schema, root=True)
            apply_defaults(obj, schema)
            errors = validation_errors({k: v for k, v in obj.items() if k != "metadata"}, schema)
            if self.cel:
                errors += cel_errors(obj, _MISSING if old is None else old, schema)
            if errors:
                raise ApiError(
                    422, "Invalid", f'{kind}.{key[0]} "{name}" is invalid: ' + "; ".join(errors)
                )
        if key == ("", "v1", "secrets") and "stringData" in obj:
            data = obj.setdefault("data", {}) or {}
            for k, v in (obj.pop("stringData") or {}).items():
                data[k] = base64.b64encode(str(v).encode()).decode()
            obj["data"] = data

    def _commit_create(self, key: Key, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        name = meta["name"]
        kind, api_version, _ = self._kind(key)
        obj["apiVersion"], obj["kind"] = api_version, kind
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1, resourceVersion=self._next_rv())
        if ns:
            meta["namespace"] = ns
        self._store[(*key, ns, name)] = obj
        self._record(key, ns, "ADDED", obj)
        return copy.deepcopy(obj)

    def _create(self, key: Key, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        _, _, namespaced = self._kind(key)
        meta = obj.setdefault("metadata", {})
        if namespaced:
            if meta.get("namespace") and ns and meta["namespace"] != ns:
                raise ApiError(
                    400, "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            ns = ns or meta.get("namespace") or ""
            if not ns:
                raise ApiError(404, "NotFound", "a namespaced resource needs a namespace")
            if (*NAMESPACES, "", ns) not in self._store:
                raise ApiError(404, "NotFound", f'namespaces "{ns}" not found')
        else:
            ns = ""
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            else:
                raise ApiError(422, "Invalid", "metadata.name: Required value: name or generateName is required")
        name = meta["name"]
        if (*key, ns, name) in self._store:
            raise ApiError(409, "AlreadyExists", f'{key[2]} "{name}" already exists')
        for field in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "generation"):
            meta.pop(field, None)
        if key in self._status_subresource:
            obj.pop("status", None)
        self._admit(key, obj, name)
        return self._commit_create(key, ns, obj)

    def _update(
        self, key: Key, ns: str, name: str, ctype: str, payload: Any, _unused: None, status_only: bool
    ) -> dict[str, Any]:
        old = self._store.get((*key, ns, name))
        if old is None:
            raise self._not_found(key, name)
        if ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if not isinstance(payload, dict):
                raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
            new = merge_patch(old, payload)
            sent_rv = (payload.get("metadata") or {}).get("resourceVersion")
        elif ctype == "application/json-patch+json":
            new = json_patch(old, payload)
            sent_rv = None  # a JSON patch checks it with an explicit "test" op
        elif ctype == "put":
            if not isinstance(payload, dict):
                raise ApiError(400, "BadRequest", "the body must be a JSON object")
            new = copy.deepcopy(payload)
            sent_rv = (payload.get("metadata") or {}).get("resourceVersion")
        else:
            raise ApiError(415, "UnsupportedMediaType", f"the patch type {ctype!r} is not supported")
        if sent_rv is not None and str(sent_rv) != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409, "Conflict",
                f'Operation cannot be fulfilled on {key[2]} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
            )
        if not isinstance(new, dict):
            raise ApiError(422, "Invalid", "the patched object is not an object")
        # What the endpoint may change: /status only the status, the main endpoint all but status.
        if key in self._status_subresource:
            if status_only:
                new = {**copy.deepcopy(old), "status": new.get("status")}
                if new["status"] is None:
                    new.pop("status")
            elif "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        new_meta = new.setdefault("metadata", {})
        old_meta = old["metadata"]
        for field in ("uid", "creationTimestamp", "name", "namespace", "generation", "deletionTimestamp"):
            if field in old_meta:
                new_meta[field] = old_meta[field]
            else:
                new_meta.pop(field, None)
        new_meta["resourceVersion"] = old_meta["resourceVersion"]
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        self._admit(key, new, name, old)
        if new == old:
            return copy.deepcopy(old)  # a no-op: no new resourceVersion, no event
        if _essence(new) != _essence(old):
            new_meta["generation"] = int(old_meta.get("generation", 1)) + 1
        new_meta["resourceVersion"] = self._next_rv()
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers"):
            self._remove(key, ns, name, new)
            return copy.deepcopy(new)
        self._store[(*key, ns, name)] = new
        self._record(key, ns, "MODIFIED", new)
        return copy.deepcopy(new)

    def _delete(self, key: Key, ns: str, name: str) -> dict[str, Any]:
        obj = self._store.get((*key, ns, name))
        if obj is None:
            raise self._not_found(key, name)
        meta = obj["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                obj = copy.deepcopy(obj)
                obj["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0)
                obj["metadata"]["resourceVersion"] = self._next_rv()
                self._store[(*key, ns, name)] = obj
                self._record(key, ns, "MODIFIED", obj)
            return copy.deepcopy(obj)
        self._remove(key, ns, name, obj)
        return copy.deepcopy(obj)

    def _remove(self, key: Key, ns: str, name: str, obj: dict[str, Any]) -> None:
        self._store.pop((*key, ns, name), None)
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._record(key, ns, "DELETED", gone)
        # Background garbage collection of dependents (ownerReferences naming this uid).
        uid = obj["metadata"].get("uid")
        for okey, dependent in list(self._store.items()):
            refs = dependent.get("metadata", {}).get("ownerReferences") or []
            if any(r.get("uid") == uid for r in refs) and okey in self._store:
                self._delete(okey[:3], okey[3], okey[4])

    async def _watch(self, request: Request, key: Key) -> aiohttp.web.StreamResponse:
        raw = request._raw_request
        assert raw is not None
        since_param = request.params.get("resourceVersion")
        timeout = float(request.params.get("timeoutSeconds") or 3600)
        namespace = request.namespace
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        async def send(type_: str, obj: dict[str, Any]) -> None:
            await response.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")

        if since_param in (None, "", "0"):
            since = self._last_rv
            for o in self.objs(key, namespace):
                await send("ADDED", o)
        else:
            since = int(since_param)
        cond = self._condition()
        try:
            while True:
                # No await between collecting the events and moving the cursor: nothing is skipped.
                events = [e for e in self._log if e.rv > since and e.key == key
                          and (namespace is None or e.namespace == namespace)]
                since = max(since, self._last_rv)
                for e in events:
                    await send(e.type, e.obj)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                if self._last_rv > since:
                    continue
                async with cond:
                    if self._last_rv > since:
                        continue
                    try:
                        await asyncio.wait_for(cond.wait(), timeout=min(remaining, 5.0))
                    except TimeoutError:
                        pass
        except (ConnectionResetError, asyncio.CancelledError):
            return response
        await response.write_eof()
        return response


def kubeconfig_for(server: Server) -> dict[str, Any]:
    url = str(server.url).rstrip("/")
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {"token": "emulator-token"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
        "current-context": "emulator",
    }


__all__ = ["ApiError", "ApiServer", "kubeconfig_for", "resource"]
