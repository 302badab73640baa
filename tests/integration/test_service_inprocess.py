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
    yield from run_server(tmp_path_factory, LABELLOOP__SERVING__BATCHER="inprocess")
