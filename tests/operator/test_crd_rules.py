"""The CRD's CEL rules (x-kubernetes-validations), run by the API-server emulator with cel-python as
kube-apiserver runs them: what the operator could only mark Failed is refused at the API instead."""

from __future__ import annotations

import pytest

from tests.operator.conftest import EVS, event_stream
from tests.support.kube import ApiError, ApiServer

NS = "shop"


async def stream(api: ApiServer, name: str, spec: dict[str, object]) -> None:
    await api.create_namespace(NS)
    await api.put_object(EVS, NS, event_stream(name, NS, spec))


async def test_schema_is_immutable_once_set(api: ApiServer) -> None:
    await stream(api, "orders", {"database": {"schema": "shop_orders"}})
    with pytest.raises(ApiError) as refused:
        await api.patch_object(EVS, NS, "orders", {"spec": {"database": {"schema": "shop_orders_v2"}}})
    assert refused.value.code == 422 and "spec.database.schema cannot change once set" in refused.value.message
    with pytest.raises(ApiError):
        await api.patch_object(EVS, NS, "orders", {"spec": {"database": {"schema": None}}})
    # Other edits go through, and an unset schema may be set once.
    await api.patch_object(EVS, NS, "orders", {"spec": {"kafka": {"partitions": 6}}})
    await stream(api, "later", {})
    await api.patch_object(EVS, NS, "later", {"spec": {"database": {"schema": "shop_later"}}})


async def test_partitions_never_shrink(api: ApiServer) -> None:
    await stream(api, "billing", {"kafka": {"partitions": 6}})
    with pytest.raises(ApiError) as refused:
        await api.patch_object(EVS, NS, "billing", {"spec": {"kafka": {"partitions": 3}}})
    assert "never shrink" in refused.value.message
    await api.patch_object(EVS, NS, "billing", {"spec": {"kafka": {"partitions": 12}}})


async def test_name_fits_a_label_value(api: ApiServer) -> None:
    await stream(api, "a" * 63, {})
    with pytest.raises(ApiError) as refused:
        await stream(api, "a" * 64, {})
    assert refused.value.code == 422 and "at most 63 characters" in refused.value.message
