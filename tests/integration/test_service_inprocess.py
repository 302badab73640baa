"""The same service with `serving.batcher: inprocess` (services/batcher.py instead of BentoML's
batcher behind the self-proxy): classify, batching, bad input and hot reload under load."""

import pytest

from tests.integration.test_service import (  # noqa: F401  (collected here with this fixture)
    run_server,
    test_classify_bad_input,
    test_classify_batch_keeps_order,
    test_classify_single,
    test_concurrent_requests_are_batched,
    test_hot_reload_under_load,
    test_ls_predict_many_tasks_in_order,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from run_server(tmp_path_factory, LABELLOOP__SERVING__BATCHER="inprocess",
                          LABELLOOP__SERVING__MAX_REQUEST_MB="0.5")


def test_body_over_max_request_mb_gets_413_and_the_service_keeps_serving(server):
    import httpx

    url = f"{server['url']}/classify"
    r = httpx.post(url, json={"text": "word " * 200_000}, timeout=60)  # 1 MB > 0.5 MB
    assert r.status_code == 413 and "max_request_mb" in r.json()["error"]
    assert httpx.post(url, json={"text": "still here"}, timeout=30).status_code == 200


def test_several_workers_recycle_keep_alive_connections(tmp_path_factory):
    """With 2 workers, every connection is closed after its jittered share of requests
    (services/balance.py), and clients that reconnect lose no request."""
    import httpx

    gen = run_server(tmp_path_factory, LABELLOOP__SERVING__BATCHER="inprocess",
                     LABELLOOP__SERVING__WORKERS="2",
                     LABELLOOP__SERVING__MAX_REQUESTS_PER_CONNECTION="4",
                     LABELLOOP__SERVING__MAX_CONNECTION_AGE_S="0")  # count only: deterministic
    srv = next(gen)
    try:
        closes, statuses = 0, []
        with httpx.Client(timeout=60) as client:
            for i in range(30):
                r = client.post(f"{srv['url']}/classify", json={"text": f"request {i}"})
                statuses.append(r.status_code)
                closes += r.headers.get("connection", "").lower() == "close"
        assert statuses == [200] * 30
        assert 30 // 6 <= closes <= 30 // 2  # each connection lives 2 to 6 requests
        # both workers serve: fresh connections reach each of them (/metadata names its pid)
        pids = set()
        for _ in range(200):
            pids.add(httpx.get(f"{srv['url']}/metadata", timeout=30,
                               headers={"Connection": "close"}).json()["worker_pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2, pids
    finally:
        gen.close()
