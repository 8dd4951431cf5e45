import pytest
pytestmark = pytest.mark.anyio

async def test_post(client, link, vendor):
    r = await client.post(f"/api/v1/links/{link.id}/meetings", json={"topic": "T", "start_time": "2030-01-01 10:00", "duration": 30})
    assert r.status_code == 201, r.text
    mid = r.json()["data"]["meeting_id"]
    r = await client.patch(f"/api/v1/links/{link.id}/meetings/{mid}", json={"topic": "T2", "start_time": "2030-01-01 10:00", "duration": 30})
    assert r.status_code == 204, r.text
    r = await client.delete(f"/api/v1/links/{link.id}/meetings/{mid}")
    assert r.status_code == 204, r.text
    assert vendor.rooms == {}
